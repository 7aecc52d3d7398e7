package supervise

import (
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel features used here: CLONE_PIDFD (5.2), pidfd_send_signal (5.1),
// waitid(P_PIDFD) (5.4).

// ExitStatus is how a process ended, decoded from waitid's siginfo.
type ExitStatus struct {
	Code   int         // exit code when Signal is 0
	Signal unix.Signal // the signal that killed it, or 0
	Core   bool        // a core was dumped
}

// Success reports whether the process exited with status 0.
func (e ExitStatus) Success() bool { return e.Signal == 0 && e.Code == 0 }

// ShellCode is the status a shell would report: the exit code, or 128+N for
// death by signal N (the convention of tini, runsc and every shell).
func (e ExitStatus) ShellCode() int {
	if e.Signal != 0 {
		return 128 + int(e.Signal)
	}
	return e.Code
}

func (e ExitStatus) String() string {
	switch {
	case e.Signal != 0 && e.Core:
		return fmt.Sprintf("killed by %s (core dumped)", unix.SignalName(e.Signal))
	case e.Signal != 0:
		return fmt.Sprintf("killed by %s", unix.SignalName(e.Signal))
	default:
		return fmt.Sprintf("exit status %d", e.Code)
	}
}

// siginfo is the prefix of the kernel's siginfo_t for SIGCHLD, which
// unix.Siginfo keeps opaque.
type siginfo struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	Uid    uint32
	Status int32
	_      [128 - 28]byte
}

// Values of siginfo.Code for SIGCHLD (include/uapi/asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

func (si *siginfo) status() ExitStatus {
	switch si.Code {
	case cldKilled:
		return ExitStatus{Signal: unix.Signal(si.Status)}
	case cldDumped:
		return ExitStatus{Signal: unix.Signal(si.Status), Core: true}
	default:
		return ExitStatus{Code: int(si.Status)}
	}
}

func waitid(idtype, id, options int) (siginfo, error) {
	var si siginfo
	for {
		err := unix.Waitid(idtype, id, (*unix.Siginfo)(unsafe.Pointer(&si)), options, nil)
		if err != unix.EINTR {
			return si, err
		}
	}
}

// Process is a child started through the Reaper. Its pidfd stays open until
// Close, so signals sent through it can never reach a recycled pid.
type Process struct {
	Pid   int
	pidfd int
	done  chan ExitStatus
}

// Done delivers the exit status exactly once, when the process has been reaped.
func (p *Process) Done() <-chan ExitStatus { return p.done }

// Signal sends sig through the pidfd (pidfd_send_signal). A process that has
// already exited is not an error.
func (p *Process) Signal(sig unix.Signal) error {
	err := unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
	if err == unix.ESRCH {
		return nil
	}
	if err != nil {
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), p.Pid, err)
	}
	return nil
}

// Close releases the pidfd. Call it once the status has been received.
func (p *Process) Close() {
	if p.pidfd >= 0 {
		unix.Close(p.pidfd)
		p.pidfd = -1
	}
}

// Reaper owns every wait of this process. Children started through Start
// are reaped through their pidfd and their status is delivered to their
// Process; every other child (an orphan reparented to PID 1 or to a
// subreaper) is reaped and counted. Nothing else in nest may call wait:
// a second waiter steals statuses (measured: 113 of 300 wrong with
// wait4(-1) beside exec.Cmd.Wait).
type Reaper struct {
	reaping sync.Mutex // one Reap at a time: two would race for a status
	mu      sync.Mutex
	procs   map[int]*Process
	orphans uint64
	// OnOrphan, if set, is called (without the lock held) for every reaped
	// process that was not started through Start.
	OnOrphan func(pid int, st ExitStatus)
}

// NewReaper returns a reaper with no children.
func NewReaper() *Reaper {
	return &Reaper{procs: make(map[int]*Process)}
}

// Start starts argv[0] with attr and registers it before any SIGCHLD for it
// can be handled: the lock is held across fork and registration.
// attr.Sys gets a pidfd requested; its other fields are the caller's.
func (r *Reaper) Start(argv []string, attr *syscall.ProcAttr) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("start: empty argv")
	}
	sys := syscall.SysProcAttr{}
	if attr.Sys != nil {
		sys = *attr.Sys
	}
	pidfd := -1
	sys.PidFD = &pidfd
	a := *attr
	a.Sys = &sys

	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := syscall.ForkExec(argv[0], argv, &a)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	if pidfd < 0 {
		// Only on kernels before 5.2; nest requires pidfds.
		return nil, fmt.Errorf("start %s: kernel returned no pidfd", argv[0])
	}
	p := &Process{Pid: pid, pidfd: pidfd, done: make(chan ExitStatus, 1)}
	r.procs[pid] = p
	return p, nil
}

// Running returns how many started (not orphan) processes are not yet reaped.
func (r *Reaper) Running() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.procs)
}

// Orphans returns how many unregistered processes have been reaped.
func (r *Reaper) Orphans() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.orphans
}

// Reap collects every child that has exited. Call it on each SIGCHLD; it
// never blocks.
func (r *Reaper) Reap() {
	r.reaping.Lock()
	defer r.reaping.Unlock()
	for {
		// Peek without reaping, so that the status of a registered child is
		// read through its own pidfd and never confused with another.
		si, err := waitid(unix.P_ALL, 0, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
		if err != nil || si.Pid == 0 {
			return // ECHILD: no children; Pid 0: none has exited
		}
		pid := int(si.Pid)
		r.mu.Lock()
		p := r.procs[pid]
		if p != nil {
			delete(r.procs, pid)
		}
		r.mu.Unlock()
		if p != nil {
			si, err = waitid(unix.P_PIDFD, p.pidfd, unix.WEXITED)
			if err != nil {
				// Cannot happen for a zombie we hold a pidfd to; report it
				// as a kill rather than leaving the owner waiting forever.
				si = siginfo{Code: cldKilled, Status: int32(unix.SIGKILL)}
			}
			p.done <- si.status()
			continue
		}
		si, err = waitid(unix.P_PID, pid, unix.WEXITED|unix.WNOHANG)
		if err != nil {
			return
		}
		r.mu.Lock()
		r.orphans++
		r.mu.Unlock()
		if r.OnOrphan != nil {
			r.OnOrphan(pid, si.status())
		}
	}
}

// HasChildren reports whether this process has any child, running or not
// yet reaped. Orphans are reparented to PID 1 or the nearest subreaper, so
// for those "no children" means "no descendants".
func (r *Reaper) HasChildren() bool {
	_, err := waitid(unix.P_ALL, 0, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT)
	return err != unix.ECHILD
}

// WaitNoChildren reaps until no child is left or limit passes, and reports
// whether none is left.
func (r *Reaper) WaitNoChildren(limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		r.Reap()
		if !r.HasChildren() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
