package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"nest/config"
	"nest/sandbox"
	"nest/supervise"
)

// upper is `nest up`: the supervisor inside an existing container or host.
// It never calls reboot(2) and never kill(-1): it stops only what it started
// and what that left behind (its descendants, which come back to it as PID 1
// or subreaper).
type upper struct {
	stderr  io.Writer
	cfgPath string
	grace   time.Duration
	reaper  *supervise.Reaper
	sup     *supervise.Supervisor
	ctl     *supervise.Control
	admin   *containerAdmin
	power   chan string
	// confine, if set, lowers the privileges of the thread that forks
	// CMD of the entrypoint form, just before the fork (nest run).
	confine func() error
}

func up(args []string, sigs chan os.Signal) int {
	return upConfined(args, sigs, nil)
}

// upConfined is up whose CMD is started by a thread that confine has
// lowered first (capabilities and no_new_privs are per thread).
func upConfined(args []string, sigs chan os.Signal, confine func() error) int {
	u := &upper{stderr: os.Stderr, power: make(chan string, 4), reaper: supervise.NewReaper(), confine: confine}
	fl := flag.NewFlagSet("nest up", flag.ContinueOnError)
	fl.SetOutput(u.stderr)
	fl.StringVar(&u.cfgPath, "c", "", "config `file` (default "+config.DefaultPath+"; with -- CMD, only when given)")
	socket := fl.String("socket", socketPath(""), "control socket `path`")
	fl.DurationVar(&u.grace, "grace", 5*time.Second, "how long leftover processes get between SIGTERM and SIGKILL")
	fl.Usage = func() {
		fmt.Fprintln(u.stderr, "usage: nest up [-c FILE] [--socket PATH] [--grace DURATION] [-- CMD [ARGS...]]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return 2
	}
	cmd := fl.Args()

	if sigs == nil {
		sigs = make(chan os.Signal, 128)
		notifyInit(sigs, earlySignals, pid1Signals())
	}
	// Reaping never waits for the main loop: stopping units (shutdown,
	// reload, reboot) blocks the loop until they are reaped. chld is never
	// stopped: the process exits when up returns, and signal.Stop spins on
	// runtime.Gosched until the signal loop idles (1 ms of CPU at the end
	// of every nest run). Enabled in the background too (notifyInit):
	// nothing is started before lateSignals.Wait.
	chld := make(chan os.Signal, 1)
	lateSignals.Add(1)
	go func() {
		defer lateSignals.Done()
		signal.Notify(chld, unix.SIGCHLD)
	}()
	go func() {
		for range chld {
			u.reaper.Reap()
		}
	}()
	if os.Getpid() != 1 {
		// Orphans of what nest starts must come back to nest to be reaped
		// and stopped, not to the host's init.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			u.logf("subreaper: %v", err)
			return 1
		}
	}

	lateSignals.Wait()

	var cfg *config.Config
	if u.cfgPath != "" || len(cmd) == 0 {
		if u.cfgPath == "" {
			u.cfgPath = config.DefaultPath
		}
		var err error
		if cfg, err = loadConfig(u.cfgPath, false); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				u.logf("no config at %s (name one with -c, or run a command: nest up -- CMD)", u.cfgPath)
			} else {
				u.logf("%v", err)
			}
			return 1
		}
	}

	if cfg != nil {
		l, err := supervise.ListenControl(*socket)
		if err != nil {
			u.logf("%v", err)
			return 1
		}
		u.sup = supervise.New(supervise.Options{
			Reaper:  u.reaper,
			Logf:    u.logf,
			LogDir:  logDir,
			RunDir:  filepath.Dir(*socket),
			Cgroups: u.cgroups(),
			Net:     rootNetOptions(cfg, nil),
		})
		u.admin = &containerAdmin{cfgPath: u.cfgPath, sup: u.sup, ids: &sandbox.Pool{}, logf: u.logf,
			load: func() (*config.Config, error) { return loadConfig(u.cfgPath, false) }}
		u.serve(l)
		u.sup.Apply(upSpecs(cfg))
	}

	var main *supervise.Process
	var mainDone <-chan supervise.ExitStatus
	if len(cmd) > 0 {
		p, err := u.startMain(cmd)
		if err != nil {
			u.logf("%v", err)
			u.stopAll()
			return 127
		}
		main, mainDone = p, p.Done()
	}

	for {
		select {
		case sig := <-sigs:
			if sig == unix.SIGCHLD {
				continue // reaped above
			}
			if main != nil {
				// The entrypoint form: signals are CMD's, not nest's. Job
				// control stops meant for nest itself stay here.
				if sig != unix.SIGTTIN && sig != unix.SIGTTOU {
					main.Signal(sig.(unix.Signal))
				}
				continue
			}
			switch sig {
			case unix.SIGTERM, unix.SIGINT, unix.SIGQUIT, unix.SIGPWR:
				u.stopAll()
				return 0
			case unix.SIGHUP:
				if err := u.reload(); err != nil {
					u.logf("reload: %v", err)
				}
			}
		case st := <-mainDone:
			main.Close()
			u.stopAll()
			return st.ShellCode()
		case action := <-u.power:
			if action == "reboot" && cfg != nil {
				u.logf("restarting every unit")
				u.sup.Shutdown()
				u.reaper.KillDescendants(u.grace)
				u.sup.StartAll()
				continue
			}
			if main != nil {
				main.Signal(unix.SIGTERM)
				continue
			}
			u.stopAll()
			return 0
		}
	}
}

// startMain starts CMD of the entrypoint form with nest's own environment
// and stdio. On a terminal it gets its own process group in the foreground,
// so Ctrl-C, Ctrl-Z and job control reach it directly.
func (u *upper) startMain(cmd []string) (*supervise.Process, error) {
	path, err := exec.LookPath(cmd[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd[0], err)
	}
	wd, _ := os.Getwd()
	sys := &syscall.SysProcAttr{Setpgid: true}
	if term.IsTerminal(0) {
		sys.Foreground, sys.Ctty = true, 0
	}
	argv := append([]string{path}, cmd[1:]...)
	attr := &syscall.ProcAttr{Dir: wd, Env: os.Environ(), Files: []uintptr{0, 1, 2}, Sys: sys}
	if u.confine == nil {
		return u.reaper.Start(argv, attr)
	}
	// Forked from a thread of its own, which confine lowers and which
	// ends with the goroutine below (a goroutine that exits locked takes
	// its thread along): no other goroutine ever runs with fewer
	// privileges, and the init's main goroutine is never locked to a
	// thread (every wake-up of a locked goroutine is a thread handoff).
	type started struct {
		p   *supervise.Process
		err error
	}
	done := make(chan started, 1)
	go func() {
		runtime.LockOSThread()
		if err := u.confine(); err != nil {
			done <- started{nil, err}
			return
		}
		p, err := u.reaper.Start(argv, attr)
		done <- started{p, err}
	}()
	r := <-done
	return r.p, r.err
}

// stopAll stops the units in reverse dependency order, then whatever is
// left below nest.
func (u *upper) stopAll() {
	if u.sup != nil {
		u.sup.Shutdown()
	}
	if u.reaper.KillDescendants(u.grace) {
		u.logf("killed processes that ignored SIGTERM for %s", u.grace)
	}
	if u.ctl != nil {
		u.ctl.Close()
	}
}

// reload re-reads the config and applies the difference; a bad file
// changes nothing.
func (u *upper) reload() error {
	defer u.admin.lock()()
	cfg, err := loadConfig(u.cfgPath, false)
	if err != nil {
		return fmt.Errorf("%w (nothing changed)", err)
	}
	u.sup.Apply(upSpecs(cfg))
	return nil
}

// upSpecs are the units of cfg under nest up: the console belongs to
// whoever started nest up, so there is no console shell.
func upSpecs(cfg *config.Config) []supervise.Spec {
	c := *cfg
	c.Console = config.ConsoleNone
	return unitSpecs(&c)
}

func (u *upper) serve(l net.Listener) {
	ctl := &supervise.Control{
		Sup:     u.sup,
		Version: version,
		Power: func(action string) error {
			select {
			case u.power <- action:
				return nil
			default:
				return errors.New("a shutdown is already under way")
			}
		},
		Reload: u.reload,
		Admin:  u.admin,
	}
	u.ctl = ctl
	go func() {
		defer func() {
			if r := recover(); r != nil {
				u.logf("control socket: internal error: %v", r)
			}
		}()
		if err := ctl.Serve(l); err != nil {
			u.logf("%v", err)
		}
	}()
}

// cgroups returns the cgroup under which units get their own, when nest up
// runs as PID 1 at the root of a cgroup v2 namespace that holds nothing
// else; otherwise "" (pidfds only: cgroups shared with processes nest did
// not start, such as a host's, are not nest up's to rearrange).
func (u *upper) cgroups() string {
	if os.Getpid() != 1 {
		return ""
	}
	if cg, err := ownCgroup(); err != nil || cg != "/" {
		return ""
	}
	// Processes outside our pid namespace show as 0; any other pid means
	// we share the cgroup.
	procs, err := os.ReadFile(filepath.Join(cgroupRoot, "cgroup.procs"))
	if err != nil || strings.TrimSpace(string(procs)) != "1" {
		return ""
	}
	dir, err := setupRootCgroup(cgroupRoot)
	if err != nil {
		return ""
	}
	return dir
}

func (u *upper) logf(format string, args ...any) {
	fmt.Fprintf(u.stderr, "nest: "+format+"\n", args...)
}
