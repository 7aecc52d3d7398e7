package escalate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A session is one escalated command in the parent: a new process of the
// broker (never of the client's context), in a new session, as the
// policy's user, in a cgroup of its own. With a pty its terminal is a
// fresh pty of the parent and the bytes travel in data messages; without,
// it runs on the client's stdin, stdout and stderr (received, never
// proxied). Nothing of the parent crosses to the child but bytes and the
// exit status.

// dataChunk is how much terminal output goes in one data message (its
// base64 fits a packet).
const dataChunk = 16 << 10

// sessionSignals are the signals a client may send to its session.
var sessionSignals = map[string]unix.Signal{
	"INT": unix.SIGINT, "TERM": unix.SIGTERM, "HUP": unix.SIGHUP, "QUIT": unix.SIGQUIT,
	"TSTP": unix.SIGTSTP, "CONT": unix.SIGCONT, "WINCH": unix.SIGWINCH,
	"USR1": unix.SIGUSR1, "USR2": unix.SIGUSR2,
}

// SignalName is the name a Signal message uses for sig ("" if it may not
// be sent).
func SignalName(sig unix.Signal) string {
	for name, s := range sessionSignals {
		if s == sig {
			return name
		}
	}
	return ""
}

func jsonBody(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	return json.RawMessage(b), err
}

// session is one running command.
type session struct {
	conn   *Conn
	cmd    *exec.Cmd
	master *os.File // pty sessions
	cg     string   // its cgroup directory, or ""

	mu     sync.Mutex
	exited bool // the process is a zombie or gone: no more signals by pid
}

// runSession runs pl for the client on conn until the command exits and
// returns its status, and a cleanup to call once the client has it (the
// session's cgroup is removed only when its last process is gone, which
// may take a moment after cgroup.kill). stdio (the client's stdin, stdout
// and stderr, or nil for a pty) is closed before it returns.
func (b *Broker) runSession(conn *Conn, pl *plan, stdio []*os.File, child string) (_ Exit, cleanup func(), _ error) {
	cleanup = func() {}
	defer func() {
		for _, f := range stdio {
			f.Close()
		}
	}()
	s := &session{conn: conn}
	cmd := &exec.Cmd{Path: pl.path, Args: pl.argv, Env: pl.env, Dir: pl.dir}
	// Pdeathsig: where there is no cgroup to end it with, a session does
	// not outlive its broker (the broker never ends a thread early, so
	// the thread that started it lives as long as the broker).
	sys := &syscall.SysProcAttr{Setsid: true, Pdeathsig: unix.SIGKILL}
	if os.Geteuid() == 0 {
		sys.Credential = &syscall.Credential{Uid: pl.as.uid, Gid: pl.as.gid, Groups: pl.as.groups}
	} else if uint32(os.Geteuid()) != pl.as.uid {
		return Exit{}, cleanup, fmt.Errorf("the broker does not run as root and cannot become %s", pl.as.name)
	}
	var slave *os.File
	if pl.pty {
		var err error
		s.master, slave, err = OpenPTY()
		if err != nil {
			return Exit{}, cleanup, err
		}
		defer s.master.Close()
		if pl.rows > 0 && pl.cols > 0 {
			SetSize(s.master, pl.rows, pl.cols)
		}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		sys.Setctty, sys.Ctty = true, 0
	} else {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio[0], stdio[1], stdio[2]
	}
	if b.Cgroup != "" {
		b.mu.Lock()
		b.sessions++
		n := b.sessions
		b.mu.Unlock()
		dir := filepath.Join(b.Cgroup, fmt.Sprintf("session-%d-%s", n, child))
		if err := os.Mkdir(dir, 0o755); err == nil {
			if fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
				s.cg = dir
				sys.UseCgroupFD, sys.CgroupFD = true, fd
				defer unix.Close(fd)
			}
		}
		if s.cg == "" {
			b.Logf("escalate: %s: no session cgroup (%s); leftovers are killed by process group", child, dir)
			unix.Rmdir(dir)
		}
	}
	cmd.SysProcAttr = sys
	err := cmd.Start()
	if slave != nil {
		slave.Close()
	}
	for _, f := range stdio {
		f.Close()
	}
	stdio = nil
	if err != nil {
		s.removeCgroup()
		return Exit{}, cleanup, fmt.Errorf("start %s: %v", pl.path, errors.Unwrap(err))
	}
	s.cmd = cmd
	if err := conn.Send(&Message{Type: MsgStarted}); err != nil {
		s.kill()
	}

	exited := make(chan struct{})
	output := make(chan struct{})
	if s.master != nil {
		go func() {
			defer close(output)
			s.copyOutput(exited)
		}()
	} else {
		close(output)
	}
	go s.serveClient(exited)

	// Waited for here, not in a goroutine of its own: the exit goes to
	// the client without a hop between threads.
	s.waitExit()
	close(exited)
	if s.master != nil {
		// What the command wrote before it exited is still to be read;
		// anything it left behind gets a moment more.
		s.master.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	}
	<-output
	s.kill() // what is left of the session
	return exitOf(cmd.ProcessState), s.removeCgroup, nil
}

// waitExit waits until the command has exited without reaping it, marks
// it so (a zombie keeps its pid: nothing signalled until then can hit a
// reused one), then reaps it.
func (s *session) waitExit() {
	pid := s.cmd.Process.Pid
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	s.mu.Lock()
	s.exited = true
	s.mu.Unlock()
	s.cmd.Wait()
}

// signal sends sig to the session: to the terminal's foreground process
// group with a pty, else to the command's process group.
func (s *session) signal(sig unix.Signal) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exited {
		return
	}
	pgrp := s.cmd.Process.Pid
	if s.master != nil {
		if fg, err := foreground(s.master); err == nil && fg > 0 {
			pgrp = fg
		}
	}
	unix.Kill(-pgrp, sig)
}

// kill ends everything of the session: its cgroup, or else its process
// group.
func (s *session) kill() {
	if s.cg != "" {
		if os.WriteFile(filepath.Join(s.cg, "cgroup.kill"), []byte("1"), 0) == nil {
			return
		}
	}
	s.mu.Lock()
	if !s.exited {
		unix.Kill(-s.cmd.Process.Pid, unix.SIGKILL)
	}
	s.mu.Unlock()
}

func (s *session) removeCgroup() {
	if s.cg == "" {
		return
	}
	os.WriteFile(filepath.Join(s.cg, "cgroup.kill"), []byte("1"), 0)
	for range 200 {
		if err := unix.Rmdir(s.cg); err == nil || err == unix.ENOENT {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// copyOutput sends the pty's output to the client until the terminal is
// closed on every side, or the command has exited and the deadline set
// then has passed.
func (s *session) copyOutput(exited <-chan struct{}) {
	buf := make([]byte, dataChunk)
	for {
		n, err := s.master.Read(buf)
		if n > 0 {
			body, _ := jsonBody(Data{Data: buf[:n]})
			s.conn.SetWriteDeadline(time.Now().Add(time.Minute))
			if s.conn.Send(&Message{Type: MsgData, Body: body}) != nil {
				s.kill() // the client is gone
				return
			}
		}
		if err != nil {
			return // EIO: no slave open; or the deadline after the exit
		}
		select {
		case <-exited:
			s.master.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		default:
		}
	}
}

// serveClient takes the client's messages until the connection ends: on
// a hangup the session is hung up too (SIGHUP, then SIGKILL).
func (s *session) serveClient(exited <-chan struct{}) {
	for {
		m, fds, err := s.conn.Recv()
		for _, f := range fds {
			f.Close()
		}
		if err != nil {
			select {
			case <-exited:
				return // the session is over; the connection closes
			default:
			}
			s.hangup(exited)
			return
		}
		switch m.Type {
		case MsgData:
			var d Data
			if s.master == nil || DecodeBody(m, &d) != nil {
				s.hangup(exited)
				return
			}
			s.master.SetWriteDeadline(time.Now().Add(time.Minute))
			if _, err := s.master.Write(d.Data); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		case MsgResize:
			var z Size
			if s.master == nil || DecodeBody(m, &z) != nil || z.Rows < 0 || z.Cols < 0 || z.Rows > maxWindow || z.Cols > maxWindow {
				s.hangup(exited)
				return
			}
			SetSize(s.master, z.Rows, z.Cols)
		case MsgSignal:
			var g Signal
			if DecodeBody(m, &g) != nil {
				s.hangup(exited)
				return
			}
			if sig, ok := sessionSignals[g.Name]; ok {
				s.signal(sig)
			}
		case MsgEOF:
			if s.master != nil {
				s.master.Write([]byte{4}) // ^D: end of input at the start of a line
			}
		default:
			s.hangup(exited)
			return
		}
	}
}

// hangup ends a session whose client is gone or broke the protocol.
func (s *session) hangup(exited <-chan struct{}) {
	if s.master != nil {
		s.master.Close() // the kernel hangs the terminal up: SIGHUP
	}
	s.signal(unix.SIGHUP)
	s.signal(unix.SIGCONT)
	select {
	case <-exited:
	case <-time.After(hangupGrace):
		s.kill()
	}
}

// exitOf is a process's end as the client reports it.
func exitOf(st *os.ProcessState) Exit {
	if st == nil {
		return Exit{Code: 1}
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		sig := unix.Signal(ws.Signal())
		name := unix.SignalName(sig)
		if len(name) > 3 {
			name = name[3:]
		}
		return Exit{Code: 128 + int(sig), Signal: name}
	}
	return Exit{Code: st.ExitCode()}
}
