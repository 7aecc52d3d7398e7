package supervise

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"nest/escalate"
)

// `nest shell NAME`: a shell (or a command) on a fresh terminal inside a
// container, started by the container's own init. See docs/decisions.md
// ("nest shell") and docs/control-api.md.
//
//  1. The CLI asks its init: POST /v1/units/PATH/shell.
//  2. That init makes a socketpair, the session socket, and sends one end
//     down the container's link with a "shell" request (an init below
//     passes it on down the next link, for alice/dev). The init at the end
//     opens a pty on its own devpts (the slave from the master with
//     TIOCGPTPEER, never by path), starts the command on it through its
//     supervisor's start path (spawn: the confinement of its services), in
//     a session of its own with the pty as controlling terminal, sends the
//     master over the session socket ("shell-pty"), and answers the link
//     request.
//  3. The asked init answers the CLI with the other end of the session
//     socket, by SCM_RIGHTS on its HTTP answer (Content-Type
//     application/vnd.nest.session).
//  4. The CLI checks that what arrives on the session socket is a pty
//     master, and copies between its terminal and the master; window
//     size changes go to the master (TIOCSWINSZ). The exit status comes as
//     "shell-exit", once the container's init has reaped the command.
//
// No init ever takes an fd from a child: fds go down links only, and what
// the child sends back on the session socket goes to the CLI alone, which
// checks it.

// Link and session messages (escalate.Types).
const (
	msgShell     = "shell"      // parent → child: a request, with the session socket; the answer has no fd
	msgShellPTY  = "shell-pty"  // the container's init → CLI: the pty master
	msgShellExit = "shell-exit" // the container's init → CLI: ShellExit
)

// sessionType is the Content-Type of a shell answer, whose session socket
// comes by SCM_RIGHTS with the header.
const sessionType = "application/vnd.nest.session"

// Bounds of a shell request.
const (
	shellTimeout   = 30 * time.Second // for the container's init to start it
	maxShellArgs   = 1024
	maxShellBytes  = 32 << 10 // all arguments together
	sessionTimeout = 5 * time.Second
)

// ShellRequest asks for a shell, or a command, on a new terminal in a
// container. It is the body of a "shell" link request and, but for Path,
// the query of the control socket's request (cmd, term, rows, cols).
type ShellRequest struct {
	// Path is the container below the init that gets the request: "" is
	// the container of the init itself, "dev" its container dev.
	Path string `json:"path"`
	// Argv is the command; none means the container's login shell.
	Argv []string `json:"argv,omitempty"`
	// Term is TERM for the command ("" : the init picks).
	Term string `json:"term,omitempty"`
	// Rows and Cols are the terminal's first size (0: unknown).
	Rows uint16 `json:"rows,omitempty"`
	Cols uint16 `json:"cols,omitempty"`
}

// ValidTerm reports whether t may be a shell's TERM: a terminal name, at
// most 64 letters, digits and . _ + -, starting with a letter or digit.
func ValidTerm(t string) bool {
	if t == "" || len(t) > 64 {
		return false
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || !strings.ContainsRune("._+-", rune(c))) {
			return false
		}
	}
	return true
}

// check bounds a request's command and TERM.
func (r ShellRequest) check() error {
	if len(r.Argv) > maxShellArgs {
		return fmt.Errorf("%d arguments, at most %d", len(r.Argv), maxShellArgs)
	}
	n := 0
	for _, a := range r.Argv {
		n += len(a) + 1
		if strings.IndexByte(a, 0) >= 0 {
			return errors.New("an argument with a NUL byte")
		}
	}
	if n > maxShellBytes {
		return fmt.Errorf("arguments of %d bytes, at most %d", n, maxShellBytes)
	}
	if len(r.Argv) > 0 && r.Argv[0] == "" {
		return errors.New("an empty command")
	}
	if r.Term != "" && !ValidTerm(r.Term) {
		return fmt.Errorf("term %s: want letters, digits and . _ + -, at most 64", quoteName(r.Term))
	}
	return nil
}

// query encodes r (but Path) for the control socket.
func (r ShellRequest) query() url.Values {
	q := url.Values{}
	q["cmd"] = r.Argv
	if r.Term != "" {
		q.Set("term", r.Term)
	}
	if r.Rows > 0 && r.Cols > 0 {
		q.Set("rows", strconv.Itoa(int(r.Rows)))
		q.Set("cols", strconv.Itoa(int(r.Cols)))
	}
	return q
}

// parseShell decodes the query of a shell request.
func parseShell(q url.Values) (ShellRequest, error) {
	var r ShellRequest
	for k, v := range q {
		switch k {
		case "cmd":
		case "term", "rows", "cols":
			if len(v) > 1 {
				return r, fmt.Errorf("parameter %q given %d times", k, len(v))
			}
		default:
			return r, fmt.Errorf("unknown parameter %q (want cmd, term, rows, cols)", k)
		}
	}
	r.Argv, r.Term = q["cmd"], q.Get("term")
	size := func(key string) (uint16, error) {
		s := q.Get(key)
		if s == "" {
			return 0, nil
		}
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return 0, fmt.Errorf("%s = %q: want a number from 0 to 65535", key, s)
		}
		return uint16(n), nil
	}
	var err1, err2 error
	r.Rows, err1 = size("rows")
	r.Cols, err2 = size("cols")
	if err := errors.Join(err1, err2); err != nil {
		return r, err
	}
	return r, r.check()
}

// ShellExit is how the command of a shell session ended.
type ShellExit struct {
	Code   int    `json:"code"`   // as a shell reports it: 128+N for signal N
	Status string `json:"status"` // "exit status 1", "killed by SIGINT"
}

// ShellHost is what an init provides for shells in its own container.
type ShellHost interface {
	// Terminal opens a new pseudo-terminal on the container's devpts: its
	// master, and its slave, got from the master (OpenTerminal).
	Terminal() (master, slave *os.File, err error)
	// Command returns the unit spec of what req asks to run, set up as the
	// container's services are (environment, directory, Confine), with
	// Exec[0] an absolute path.
	Command(req ShellRequest) (Spec, error)
}

// Shell opens a shell session in the container at path (its first name a
// container of s; "alice/dev" goes on down alice's link), whose init sends
// the pty master and then the exit status over session, its end of the
// session socket. The caller keeps session open until Shell returns.
func (s *Supervisor) Shell(ctx context.Context, path string, req ShellRequest, session *os.File) error {
	if err := req.check(); err != nil {
		return &pathError{errBadPath, err.Error()}
	}
	names, err := splitPath(path)
	if err != nil {
		return err
	}
	u, ok := s.Unit(names[0])
	if !ok {
		return &pathError{errNoUnit, fmt.Sprintf("no unit named %q", names[0])}
	}
	if u.spec.Container == nil {
		return &pathError{errNoUnit, fmt.Sprintf("%s is a service, not a container: nest shell opens a shell in a container", names[0])}
	}
	run := u.currentLink()
	if run == nil || u.Status().State != StateRunning {
		return &pathError{errNotRunning, fmt.Sprintf("container %s is not running", names[0])}
	}
	req.Path = strings.Join(names[1:], "/")
	if _, err := run.request(ctx, msgShell, req, shellTimeout, session); err != nil {
		return &pathError{nil, fmt.Sprintf("%s: %v", names[0], err)}
	}
	return nil
}

// sessions numbers the shell sessions of all supervisors of this process.
var sessions atomic.Uint64

// openShell runs a shell in this init's own container: a new terminal,
// the command on it, the master to the session socket, then the exit
// status once the command has been reaped. It owns session.
func (s *Supervisor) openShell(host ShellHost, req ShellRequest, session *os.File) error {
	conn, err := escalate.NewConn(session)
	if err != nil {
		return err
	}
	conn.LimitFDs(0) // the CLI sends nothing
	fail := func(err error) error {
		conn.Close()
		return err
	}
	spec, err := host.Command(req)
	if err != nil {
		return fail(err)
	}
	spec.Name = "shell." + strconv.FormatUint(sessions.Add(1), 10)
	master, slave, err := host.Terminal()
	if err != nil {
		return fail(err)
	}
	defer master.Close()
	if req.Rows > 0 && req.Cols > 0 {
		ws := &unix.Winsize{Row: req.Rows, Col: req.Cols}
		if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws); err != nil {
			slave.Close()
			return fail(fmt.Errorf("terminal size: %w", err))
		}
	}
	u := &Unit{sup: s, spec: spec, log: NewLog(""), tty: slave}
	proc, _, cg, err := u.spawn()
	if err != nil {
		slave.Close()
		return fail(err)
	}
	s.logf("%s: %s started (pid %d)", spec.Name, strings.Join(spec.Exec, " "), proc.Pid)
	// Once the master is sent, this init holds none: when the CLI goes,
	// the terminal hangs up and the command gets SIGHUP.
	conn.SetWriteDeadline(time.Now().Add(sessionTimeout))
	if err := conn.Send(&escalate.Message{Type: msgShellPTY}, master); err != nil {
		s.logf("%s: %v", spec.Name, err)
	}
	go func() {
		defer s.recoverGoroutine(spec.Name)
		st := <-proc.Done()
		// This init's copy of the slave goes only now: the master reads
		// what the command wrote last before it sees the hangup (EIO),
		// which would otherwise race the terminal's buffer work.
		slave.Close()
		proc.Close()
		if cg != nil {
			cg.Remove() // what the session left behind ends with it
		}
		s.logf("%s: ended (%s)", spec.Name, st)
		body, _ := json.Marshal(ShellExit{Code: st.ShellCode(), Status: st.String()})
		conn.SetWriteDeadline(time.Now().Add(sessionTimeout))
		conn.Send(&escalate.Message{Type: msgShellExit, Body: body})
		conn.Close()
	}()
	return nil
}

func (s *Supervisor) logf(format string, args ...any) {
	if s.opts.Logf != nil {
		s.opts.Logf(format, args...)
	}
}

// OpenTerminal opens a new pseudo-terminal of the devpts instance whose
// root directory is pts (an O_PATH fd): its ptmx, unlocked, and the slave
// got from the master with TIOCGPTPEER (Linux 4.13), so that no path of
// /dev/pts is ever resolved (a container could swap one). Both are
// close-on-exec and blocking.
func OpenTerminal(pts int) (master, slave *os.File, err error) {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(pts, &fs); err != nil {
		return nil, nil, fmt.Errorf("devpts: %w", err)
	}
	if fs.Type != unix.DEVPTS_SUPER_MAGIC {
		return nil, nil, errors.New("no devpts here (the directory is not a devpts mount)")
	}
	m, err := unix.Openat(pts, "ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	sl, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		unix.Close(m)
		return nil, nil, fmt.Errorf("TIOCGPTPEER: %w", errno)
	}
	return os.NewFile(uintptr(m), "ptmx"), os.NewFile(sl, "pty"), nil
}

// shell serves POST /v1/units/PATH/shell.
func (c *Control) shell(w *reply, r *request, path string) {
	if r.method != "POST" {
		w.error(405, fmt.Errorf("%s %s: want POST", r.method, r.path))
		return
	}
	req, err := parseShell(r.query)
	if err != nil {
		w.error(400, err)
		return
	}
	uc, ok := w.conn.(*net.UnixConn)
	if !ok {
		w.error(500, errors.New("a shell needs a unix socket"))
		return
	}
	mine, theirs, err := escalate.Pair()
	if err != nil {
		w.error(500, err)
		return
	}
	defer mine.Close()
	err = c.Sup.Shell(r.ctx, path, req, theirs.File())
	theirs.Close()
	var pe *pathError
	switch {
	case err == nil:
	case errors.Is(err, errNoUnit):
		w.error(404, err)
		return
	case errors.Is(err, errBadPath):
		w.error(400, err)
		return
	case errors.As(err, &pe):
		w.error(409, err)
		return
	default:
		w.error(500, err)
		return
	}
	w.sent = true
	head := []byte(header(200, sessionType, 0))
	rc, err := mine.File().SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		uc.WriteMsgUnix(head, unix.UnixRights(int(fd)), nil)
	})
}

// ShellSession is the CLI's side of a shell: the terminal's master and the
// session socket on which the exit status comes.
type ShellSession struct {
	// Master is the pty master, non-blocking (deadlines work): read the
	// command's output, write its input, set the window size on it.
	Master *os.File
	conn   *escalate.Conn
}

// Shell asks the init for a shell in the container at path and returns
// the session once the command runs. Everything that comes over the
// session socket is the container's and is checked: one pty master, then
// one exit status.
func (c *Client) Shell(ctx context.Context, path string, req ShellRequest) (*ShellSession, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.Socket)
	if err != nil {
		return nil, fmt.Errorf("no nest answers on %s (is it running? --socket or NEST_SOCKET name another): %w", c.Socket, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	target := unitURL(path) + "/shell"
	if q := req.query(); len(q) > 0 {
		target += "?" + q.Encode()
	}
	if _, err := fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: nest\r\nConnection: close\r\n\r\n", target); err != nil {
		return nil, err
	}
	head, fds, err := readHeadFDs(conn.(*net.UnixConn))
	defer func() {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("reading the answer: %w", err)
	}
	br := bufio.NewReader(io.MultiReader(bytes.NewReader(head), conn))
	code, hdr, err := readAnswer(br)
	if err != nil {
		return nil, err
	}
	if code != 200 {
		var e apiError
		b, _ := io.ReadAll(io.LimitReader(br, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("shell: status %d", code)
	}
	if ct := hdr.Get("Content-Type"); ct != sessionType || len(fds) != 1 {
		return nil, fmt.Errorf("shell: an answer of %q with %d fds, want %s with one", ct, len(fds), sessionType)
	}
	sock := os.NewFile(uintptr(fds[0]), "shell session")
	fds[0] = -1
	sc, err := escalate.NewConn(sock)
	if err != nil {
		return nil, err
	}
	sc.LimitFDs(1)
	sc.SetReadDeadline(time.Now().Add(shellTimeout))
	m, files, err := sc.Recv()
	sc.SetReadDeadline(time.Time{})
	if err == nil && (m.Type != msgShellPTY || len(files) != 1) {
		err = fmt.Errorf("the container's init sent %s with %d fds, want %s with the terminal", quoteName(m.Type), len(files), msgShellPTY)
	}
	var master *os.File
	if err == nil {
		master, err = ptyMaster(files[0])
	}
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		sc.Close()
		return nil, fmt.Errorf("shell: %w", err)
	}
	return &ShellSession{Master: master, conn: sc}, nil
}

// readHeadFDs reads until the end of an HTTP header (or of the stream),
// collecting the fds that come with the bytes.
func readHeadFDs(uc *net.UnixConn) (head []byte, fds []int, err error) {
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for !bytes.Contains(head, []byte("\r\n\r\n")) {
		if len(head) > maxHeaderBytes {
			return head, fds, errors.New("header too long")
		}
		n, oobn, flags, _, err := uc.ReadMsgUnix(buf, oob)
		head = append(head, buf[:n]...)
		if oobn > 0 {
			msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if got, err := unix.ParseUnixRights(&m); err == nil {
					fds = append(fds, got...)
				}
			}
			if perr != nil {
				return head, fds, perr
			}
		}
		if flags&unix.MSG_CTRUNC != 0 {
			return head, fds, errors.New("more fds than expected came with the answer")
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return head, fds, nil
			}
			return head, fds, err
		}
	}
	return head, fds, nil
}

// ptyMaster checks that f, sent by a container, is the master of a
// pseudo-terminal (a character device 5:2, ptmx, that answers TIOCGPTN)
// and returns a non-blocking duplicate of it. The attributes are read
// with AT_STATX_DONT_SYNC, so that a file of a FUSE file system the
// container serves cannot make the check wait for it.
func ptyMaster(f *os.File) (*os.File, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup := -1
	var cerr error
	err = rc.Control(func(fd uintptr) {
		var st unix.Statx_t
		if cerr = unix.Statx(int(fd), "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); cerr != nil {
			return
		}
		if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev_major != 5 || st.Rdev_minor != 2 {
			cerr = fmt.Errorf("the container sent a file that is no pseudo-terminal master (mode %#o, device %d:%d)", st.Mode, st.Rdev_major, st.Rdev_minor)
			return
		}
		if _, cerr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN); cerr != nil {
			cerr = fmt.Errorf("the container sent a file that is no pseudo-terminal master: %w", cerr)
			return
		}
		if dup, cerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); cerr == nil {
			cerr = unix.SetNonblock(dup, true)
		}
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		if dup >= 0 {
			unix.Close(dup)
		}
		return nil, err
	}
	return os.NewFile(uintptr(dup), "pty master"), nil
}

// Wait returns how the command ended, as the container's init reports
// it. An error means the session ended without a status (the container
// stopped, or broke the protocol).
func (s *ShellSession) Wait() (ShellExit, error) {
	m, files, err := s.conn.Recv()
	for _, f := range files {
		f.Close()
	}
	if errors.Is(err, io.EOF) {
		return ShellExit{}, errors.New("the container's init ended the session without an exit status")
	}
	if err != nil {
		return ShellExit{}, err
	}
	if m.Type != msgShellExit {
		return ShellExit{}, fmt.Errorf("the container's init sent %s, want %s", quoteName(m.Type), msgShellExit)
	}
	var e ShellExit
	if err := escalate.DecodeBody(m, &e); err != nil {
		return ShellExit{}, err
	}
	if e.Code < 0 || e.Code > 255 {
		return ShellExit{}, fmt.Errorf("the container's init reported exit code %d", e.Code)
	}
	e.Status = cleanText(e.Status)
	return e, nil
}

// Close ends the session: the master and the session socket.
func (s *ShellSession) Close() {
	s.Master.Close()
	s.conn.Close()
}

// shell answers a shell request from the parent: in this init's own
// container, or passed on down to the container its path names. It owns
// session.
func (p *ParentLink) shell(ctx context.Context, sup *Supervisor, m *escalate.Message, session *os.File) (*escalate.Message, error) {
	var req ShellRequest
	err := escalate.DecodeBody(m, &req)
	if err == nil {
		err = req.check()
	}
	switch {
	case err != nil:
	case req.Path != "":
		err = sup.Shell(ctx, req.Path, req, session)
		session.Close()
		session = nil
	case p.Shells == nil:
		err = errors.New("this init opens no shells")
	default:
		err = sup.openShell(p.Shells, req, session)
		session = nil // openShell owns it
	}
	if err != nil {
		if session != nil {
			session.Close()
		}
		return nil, err
	}
	return &escalate.Message{Type: msgShell, Body: json.RawMessage("{}")}, nil
}
