package supervise

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/sandbox"
)

// State is where a unit is in its life.
type State string

// The states a unit moves through.
const (
	StateWaiting    State = "waiting"    // for a dependency named in `after`
	StateStarting   State = "starting"   // started; a notify unit has not sent READY=1 yet
	StateRunning    State = "running"    // started (and ready, for a notify unit)
	StateRestarting State = "restarting" // exited; waiting out the backoff before the next start
	StateStopping   State = "stopping"   // asked to stop; waiting for it to exit
	StateStopped    State = "stopped"    // stopped on request, or not started
	StateExited     State = "exited"     // exited with status 0 and is not restarted
	StateFailed     State = "failed"     // gave up: see the reason
)

// Restart tuning: the first restart waits BackoffMin, each consecutive
// failure doubles it up to BackoffMax, and a run that lasted HealthyRun
// resets the count. DefaultStartLimit consecutive failures mark the unit
// failed.
const (
	BackoffMin        = 100 * time.Millisecond
	BackoffMax        = 30 * time.Second
	HealthyRun        = 10 * time.Second
	DefaultStartLimit = 10
)

// Backoff returns the delay before restart number n (1-based) of a run of
// consecutive failures.
func Backoff(n int) time.Duration {
	d := BackoffMin
	for i := 1; i < n && d < BackoffMax; i++ {
		d *= 2
	}
	return min(d, BackoffMax)
}

// Spec is what the supervisor runs for one unit: a service from the config
// and, for the console shell, the terminal it owns.
type Spec struct {
	config.Service
	// TTY, when set, is the terminal the unit runs on as its controlling
	// tty (stdin, stdout and stderr); its output is not captured.
	TTY string
	// Container, when set, makes the unit a child container: Service then
	// carries only its name, restart, after, stop_timeout and start_limit.
	Container *config.Container
	// InheritOutput gives the unit this process's stdout and stderr
	// instead of a log of its own (a daemon container's one service,
	// whose output is the container's log in the parent).
	InheritOutput bool
	// Confine runs the unit through `nest confine` (the Confine argv
	// prefix), which drops capabilities and sets no_new_privs on the
	// thread that execs it.
	Confine []string
}

type op int

const (
	opStart op = iota
	opStop
	opRestart
	opRemove
)

type command struct {
	op   op
	done chan struct{} // closed when the unit is down (stop, remove)
}

// Unit is one supervised service. One goroutine (run) owns its process and
// state machine; other goroutines send it commands and read its status.
type Unit struct {
	sup  *Supervisor
	spec Spec
	log  *Log
	cmds chan command
	done chan struct{} // closed when run returns (the unit was removed)

	mu       sync.Mutex
	state    State
	reason   string
	pid      int
	since    time.Time
	restarts int
	lastExit *ExitStatus
	status   string        // STATUS= from sd_notify
	cgroup   string        // the current run's cgroup directory, if it has one
	link     *containerRun // the current run's link, for a container
	tty      *os.File      // a shell session's terminal (openShell); nil for units
	address  string        // the current run's address on the bridge, for a veth container
}

func newUnit(s *Supervisor, spec Spec) *Unit {
	logPath := ""
	if s.opts.LogDir != "" && spec.TTY == "" {
		logPath = filepath.Join(s.opts.LogDir, spec.Name+".log")
	}
	return &Unit{
		sup:   s,
		spec:  spec,
		log:   NewLog(logPath),
		cmds:  make(chan command),
		done:  make(chan struct{}),
		state: StateStopped,
		since: time.Now(),
	}
}

// Name is the unit's name from the config.
func (u *Unit) Name() string { return u.spec.Name }

// Log is the unit's output.
func (u *Unit) Log() *Log { return u.log }

func (u *Unit) set(st State, reason string) {
	u.mu.Lock()
	changed := u.state != st || u.reason != reason
	u.state, u.reason = st, reason
	if changed {
		u.since = time.Now()
	}
	u.mu.Unlock()
	if changed {
		u.sup.changed()
	}
}

func (u *Unit) current() (State, string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.state, u.reason
}

// send delivers a command unless the unit has already been removed.
func (u *Unit) send(o op) <-chan struct{} {
	c := command{op: o, done: make(chan struct{})}
	select {
	case u.cmds <- c:
	case <-u.done:
		close(c.done)
	}
	return c.done
}

// run is the unit's state machine. It returns after opRemove.
func (u *Unit) run(want bool) {
	defer close(u.done)
	defer u.sup.recoverUnit(u)

	var (
		proc       *Process
		procStart  time.Time
		exitC      <-chan ExitStatus
		notes      *notifySocket
		child      *containerRun
		noteC      <-chan notifyMessage
		cg         *cgroup
		backoffC   <-chan time.Time
		killC      <-chan time.Time
		depsC      <-chan struct{}
		failures   int
		restartReq bool            // start again once the current process is down
		waiters    []chan struct{} // closed once the unit is down
		startAcks  []chan struct{} // closed once a requested start was attempted
		removing   bool
	)
	down := func() {
		for _, w := range waiters {
			close(w)
		}
		waiters = nil
	}
	stop := func() {
		want = false
		backoffC, depsC = nil, nil
		if proc == nil {
			u.set(StateStopped, "")
			down()
			return
		}
		if killC == nil {
			u.set(StateStopping, "")
			// A container stops its own subtree in order when asked over
			// its link; a process gets a signal.
			if child == nil || child.requestStop() != nil {
				proc.Signal(u.stopSignal())
				proc.Signal(unix.SIGCONT)
			}
			killC = time.After(u.spec.StopTimeout)
		}
	}

	for {
		if removing && proc == nil {
			down()
			for _, a := range startAcks {
				close(a)
			}
			return
		}
		if want && proc == nil && backoffC == nil && depsC == nil {
			changed := u.sup.Changes()
			ok, waitFor, failedDep := u.sup.dependencies(u.spec.After)
			switch {
			case failedDep != "":
				want = false
				u.set(StateFailed, fmt.Sprintf("dependency %s failed", failedDep))
			case !ok:
				depsC = changed
				u.set(StateWaiting, "waiting for "+waitFor)
			default:
				var err error
				if u.spec.Container != nil {
					proc, child, cg, err = u.spawnContainer()
				} else {
					proc, notes, cg, err = u.spawn()
				}
				if err != nil {
					u.logf("%s: failed to start: %v", u.spec.Name, err)
					proc = nil
					failures++
					if failures >= u.startLimit() {
						want = false
						u.set(StateFailed, err.Error())
					} else {
						u.set(StateRestarting, err.Error())
						backoffC = time.After(Backoff(failures))
					}
					continue
				}
				procStart = time.Now()
				exitC = proc.Done()
				noteC = nil
				if notes != nil {
					noteC = notes.messages
				}
				if child != nil {
					noteC = child.messages
				}
				u.mu.Lock()
				u.pid, u.status = proc.Pid, ""
				u.link, u.cgroup = child, ""
				if cg != nil {
					u.cgroup = cg.path
				}
				u.mu.Unlock()
				if u.spec.Notify || child != nil {
					u.logf("%s: started (pid %d), waiting for READY=1", u.spec.Name, proc.Pid)
					u.set(StateStarting, "")
				} else {
					u.logf("%s: started (pid %d)", u.spec.Name, proc.Pid)
					u.set(StateRunning, "")
				}
			}
		}

		// Acknowledge start and restart only now, so that whoever asked
		// sees the outcome of the attempt, not the state before it.
		if !restartReq {
			for _, a := range startAcks {
				close(a)
			}
			startAcks = nil
		}

		select {
		case c := <-u.cmds:
			switch c.op {
			case opStart:
				if proc == nil {
					want, failures, backoffC, depsC = true, 0, nil, nil
				}
				startAcks = append(startAcks, c.done)
			case opStop:
				waiters = append(waiters, c.done)
				stop()
			case opRestart:
				if proc != nil {
					restartReq = true
					stop()
				} else {
					want, failures, backoffC, depsC = true, 0, nil, nil
				}
				startAcks = append(startAcks, c.done)
			case opRemove:
				removing = true
				waiters = append(waiters, c.done)
				stop()
			}

		case st := <-exitC:
			lived := time.Since(procStart)
			u.detachNetwork()
			u.mu.Lock()
			u.link, u.cgroup = nil, ""
			u.mu.Unlock()
			proc.Close()
			proc, exitC, killC = nil, nil, nil
			if notes != nil {
				notes.Close()
				notes, noteC = nil, nil
			}
			if child != nil {
				child.Close()
				child, noteC = nil, nil
				// The init of a pid namespace that calls reboot(2) dies of
				// SIGINT (poweroff, halt) or SIGHUP (restart).
				switch st.Signal {
				case unix.SIGINT:
					u.mu.Lock()
					u.pid, u.lastExit = 0, &st
					u.mu.Unlock()
					if cg != nil {
						cg.Remove()
						cg = nil
					}
					u.logf("%s: powered off from inside", u.spec.Name)
					want = false
					u.set(StateStopped, "powered off from inside")
					down()
					continue
				case unix.SIGHUP:
					if state, _ := u.current(); state != StateStopping && !u.sup.shuttingDown() {
						u.mu.Lock()
						u.pid, u.lastExit = 0, &st
						u.mu.Unlock()
						if cg != nil {
							cg.Remove()
							cg = nil
						}
						u.logf("%s: rebooted from inside", u.spec.Name)
						continue // want stays: start again, no backoff
					}
				}
			}
			if cg != nil {
				cg.Remove() // kills what the main process left behind
				cg = nil
			}
			u.mu.Lock()
			u.pid, u.lastExit = 0, &st
			u.mu.Unlock()

			if state, _ := u.current(); state == StateStopping || u.sup.shuttingDown() {
				u.logf("%s: stopped (%s)", u.spec.Name, st)
				u.set(StateStopped, "")
				down()
				if restartReq && !removing && !u.sup.shuttingDown() {
					want, failures = true, 0
				}
				restartReq = false
				continue
			}
			restart := u.spec.Restart == config.RestartAlways ||
				(u.spec.Restart == config.RestartOnFailure && !st.Success())
			if !restart {
				want = false
				if st.Success() {
					u.logf("%s: exited (%s)", u.spec.Name, st)
					u.set(StateExited, st.String())
				} else {
					u.logf("%s: failed (%s)", u.spec.Name, st)
					u.set(StateFailed, st.String())
				}
				continue
			}
			if lived >= HealthyRun {
				failures = 0
			}
			failures++
			if failures >= u.startLimit() {
				want = false
				u.logf("%s: failed (%s), %d times in a row: giving up", u.spec.Name, st, failures)
				u.set(StateFailed, fmt.Sprintf("%s, %d times in a row", st, failures))
				continue
			}
			delay := Backoff(failures)
			u.logf("%s: %s, restarting in %s", u.spec.Name, st, delay)
			u.mu.Lock()
			u.restarts++
			u.mu.Unlock()
			u.set(StateRestarting, st.String())
			backoffC = time.After(delay)

		case m, ok := <-noteC:
			if !ok {
				noteC = nil
				continue
			}
			if m.status != "" {
				u.mu.Lock()
				u.status = m.status
				u.mu.Unlock()
				u.sup.changed()
			}
			if m.ready {
				if state, _ := u.current(); state == StateStarting {
					u.logf("%s: ready", u.spec.Name)
					u.set(StateRunning, "")
				}
			}

		case <-backoffC:
			backoffC = nil

		case <-depsC:
			depsC = nil

		case <-killC:
			killC = nil
			u.logf("%s: did not stop within %s, killing", u.spec.Name, u.spec.StopTimeout)
			proc.Signal(unix.SIGKILL)
			if cg != nil {
				cg.Kill()
			}
		}
	}
}

// stopSignal asks the unit to end: SIGTERM, or SIGHUP for a unit on a
// terminal (an interactive shell ignores SIGTERM; a hangup ends it).
func (u *Unit) stopSignal() unix.Signal {
	if u.spec.TTY != "" {
		return unix.SIGHUP
	}
	return unix.SIGTERM
}

func (u *Unit) startLimit() int {
	if u.spec.StartLimit > 0 {
		return u.spec.StartLimit
	}
	return DefaultStartLimit
}

func (u *Unit) logf(format string, args ...any) {
	if u.sup.opts.Logf != nil {
		u.sup.opts.Logf(format, args...)
	}
}

// spawn starts one run of the unit's process.
func (u *Unit) spawn() (*Process, *notifySocket, *cgroup, error) {
	s := u.spec
	var env []string
	// The unit's env replaces these defaults, never doubles them.
	def := func(k, v string) {
		if _, set := s.Env[k]; !set {
			env = append(env, k+"="+v)
		}
	}
	def("PATH", DefaultPath)
	def("HOME", "/root")
	if s.TTY != "" {
		if term := os.Getenv("TERM"); term != "" {
			def("TERM", term)
		} else {
			def("TERM", "linux")
		}
	}
	for k, v := range s.Env {
		env = append(env, k+"="+v)
	}

	var notes *notifySocket
	if s.Notify {
		var err error
		notes, err = listenNotify(filepath.Join(u.sup.opts.RunDir, "notify", s.Name))
		if err != nil {
			return nil, nil, nil, err
		}
		env = append(env, "NOTIFY_SOCKET="+notes.path)
	}
	fail := func(err error) (*Process, *notifySocket, *cgroup, error) {
		if notes != nil {
			notes.Close()
		}
		return nil, nil, nil, err
	}

	sys := &syscall.SysProcAttr{Setsid: true}
	if u.sup.opts.WorkloadUserns {
		// Mounts copied into a less privileged user namespace are locked:
		// the service cannot remove a mask of this init.
		ids, err := sandbox.IdentityRange(s.Name)
		if err != nil {
			return fail(err)
		}
		sys.Cloneflags |= unix.CLONE_NEWUSER | unix.CLONE_NEWNS
		sys.UidMappings, sys.GidMappings = ids.UidMappings(), ids.GidMappings()
		sys.GidMappingsEnableSetgroups = true
		sys.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	var files []uintptr
	var closeAfter []*os.File
	defer func() {
		for _, f := range closeAfter {
			f.Close()
		}
	}()
	var logR *os.File
	if u.tty != nil {
		files = []uintptr{u.tty.Fd(), u.tty.Fd(), u.tty.Fd()}
		sys.Setctty, sys.Ctty = true, 0
	} else if s.TTY != "" {
		tty, err := os.OpenFile(s.TTY, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", s.TTY, err))
		}
		closeAfter = append(closeAfter, tty)
		files = []uintptr{tty.Fd(), tty.Fd(), tty.Fd()}
		sys.Setctty, sys.Ctty = true, 0
	} else if s.InheritOutput {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", os.DevNull, err))
		}
		closeAfter = append(closeAfter, null)
		files = []uintptr{null.Fd(), 1, 2}
	} else {
		null, err := os.Open(os.DevNull)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", os.DevNull, err))
		}
		r, w, err := os.Pipe()
		if err != nil {
			null.Close()
			return fail(fmt.Errorf("log pipe: %w", err))
		}
		closeAfter = append(closeAfter, null, w)
		logR = r
		files = []uintptr{null.Fd(), w.Fd(), w.Fd()}
	}

	var cg *cgroup
	if u.sup.opts.Cgroups != "" {
		var err error
		cg, err = newCgroup(filepath.Join(u.sup.opts.Cgroups, s.Name))
		if err != nil {
			if logR != nil {
				logR.Close()
			}
			return fail(err)
		}
		sys.UseCgroupFD, sys.CgroupFD = true, cg.fd
	}

	dir := s.Dir
	if dir == "" {
		dir = "/"
	}
	argv := s.Exec
	if len(s.Confine) > 0 {
		argv = append(append(append([]string(nil), s.Confine...), "--"), s.Exec...)
	}
	proc, err := u.sup.opts.Reaper.Start(argv, &syscall.ProcAttr{Dir: dir, Env: env, Files: files, Sys: sys})
	if cg != nil {
		cg.closeFD()
	}
	if err != nil {
		if logR != nil {
			logR.Close()
		}
		if cg != nil {
			cg.Remove()
		}
		return fail(err)
	}
	if logR != nil {
		go u.copyLog(logR)
	}
	return proc, notes, cg, nil
}

// copyLog moves one run's output into the unit's log until every writer
// (the service and anything it forked) has closed the pipe.
func (u *Unit) copyLog(r *os.File) {
	defer r.Close()
	defer u.sup.recoverGoroutine("log of " + u.spec.Name)
	buf := make([]byte, 4096)
	reported := false
	for {
		n, err := r.Read(buf)
		if n > 0 {
			u.log.Write(buf[:n])
			// Say once why the file is missing; the ring still has it all.
			if ferr := u.log.FileError(); ferr != nil && !reported {
				u.logf("%s: %v (nest logs still has the output)", u.spec.Name, ferr)
				reported = true
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				u.logf("%s: reading output: %v", u.spec.Name, err)
			}
			return
		}
	}
}

// Status is one unit as the control socket reports it.
type Status struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"`
	State    State     `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Pid      int       `json:"pid,omitempty"`
	Since    time.Time `json:"since"`
	Restarts int       `json:"restarts"`
	LastExit string    `json:"last_exit,omitempty"`
	ExitCode *int      `json:"exit_code,omitempty"`
	Status   string    `json:"status,omitempty"`
	Exec     []string  `json:"exec"`
	Restart  string    `json:"restart"`
	After    []string  `json:"after,omitempty"`
	// Memory is the run's cgroup memory.current in bytes (0: no cgroup).
	Memory uint64 `json:"memory,omitempty"`
	// IDs are the ids of this init's view that a running container's
	// root and users are, "FIRST-LAST" (a container of its own range), or
	// "" (a service, or a container that shares this init's ids).
	IDs string `json:"ids,omitempty"`
	// Address is a veth container's address on its parent's bridge, with
	// the prefix length ("10.88.0.2/24").
	Address string `json:"address,omitempty"`
	// Children are a container's units, as its init reports them over the
	// link (tree listings only); Incomplete says why they are missing or
	// cut short.
	Children   []Status `json:"children,omitempty"`
	Incomplete string   `json:"incomplete,omitempty"`
}

// Status returns a snapshot of the unit.
func (u *Unit) Status() Status {
	u.mu.Lock()
	kind := "service"
	if u.spec.Container != nil {
		kind = string(u.spec.Container.Kind)
	}
	st := Status{
		Name:     u.spec.Name,
		Kind:     kind,
		State:    u.state,
		Reason:   u.reason,
		Pid:      u.pid,
		Since:    u.since,
		Restarts: u.restarts,
		Status:   u.status,
		Exec:     u.spec.Exec,
		Restart:  string(u.spec.Restart),
		After:    u.spec.After,
		Address:  u.address,
	}
	if u.lastExit != nil {
		st.LastExit = u.lastExit.String()
		code := u.lastExit.ShellCode()
		st.ExitCode = &code
	}
	cg := u.cgroup
	u.mu.Unlock()
	if cg != "" {
		st.Memory = memoryCurrent(cg)
	}
	if u.spec.Container != nil && st.Pid > 0 {
		st.IDs = mappedIDs(st.Pid)
	}
	return st
}

// mappedIDs reads the ids that pid's user namespace maps, from its
// uid_map: "FIRST-LAST", or "" where it maps none or this init's own.
func mappedIDs(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	if err != nil {
		return ""
	}
	own, _ := os.ReadFile("/proc/self/uid_map")
	if string(b) == string(own) {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) != 3 {
		return ""
	}
	first, err1 := strconv.ParseUint(f[1], 10, 32)
	n, err2 := strconv.ParseUint(f[2], 10, 32)
	if err1 != nil || err2 != nil || n == 0 {
		return ""
	}
	return fmt.Sprintf("%d-%d", first, first+n-1)
}
