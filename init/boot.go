package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/mounts"
	nestnet "nest/net"
	"nest/sandbox"
	"nest/supervise"
)

// Paths of the root container's init.
const (
	controlSocket = "/run/nest/nest.sock"
	runDir        = "/run/nest"
	logDir        = "/var/log/nest"
	cgroupRoot    = "/sys/fs/cgroup"
)

// ownModules are the kernel modules nest itself relies on (containers,
// overlays, images, networks), loaded at boot beside the config's list.
var ownModules = []string{"veth", "bridge", "overlay", "squashfs", "loop"}

// booter is PID 1 of the machine.
type booter struct {
	start   time.Time
	sigs    chan os.Signal
	cmdline cmdline
	cfgPath string

	mu       sync.Mutex // serialises console writes
	reaper   *supervise.Reaper
	sup      *supervise.Supervisor
	ctl      *supervise.Control
	admin    *containerAdmin
	cfg      *config.Config
	power    chan string
	stopping bool
}

// boot runs PID 1 of the machine. It never returns: PID 1 exiting is a
// kernel panic.
func boot(sigs chan os.Signal) {
	b := &booter{start: time.Now(), sigs: sigs, power: make(chan string, 4)}
	b.reaper = supervise.NewReaper()
	for {
		func() {
			defer func() {
				if r := recover(); r != nil {
					b.logf("internal error: %v\n%s", r, debug.Stack())
				}
			}()
			if b.sup == nil {
				b.bootUp()
			}
			b.loop()
		}()
		// The supervisor could not continue: keep PID 1 alive and give the
		// operator a shell to look at what happened.
		b.emergency("the supervisor stopped")
	}
}

// bootUp performs the boot duties in order, then starts the supervisor.
func (b *booter) bootUp() {
	os.Setenv("PATH", supervise.DefaultPath)
	debug.SetTraceback("all")
	// PID 1 holds little live data; a tighter heap goal keeps its
	// footprint near that (measured in make bench).
	debug.SetGCPercent(50)

	// Before any mount: from the initramfs's rootfs, children could never
	// pivot_root.
	var rootErr error
	if mounts.InRamRoot() {
		rootErr = mounts.LeaveRamRoot()
	}
	mountErr := mounts.MountAll(mounts.Early)
	b.openConsole()
	b.logf("nest %s starting", version)
	if rootErr != nil {
		b.logf("%v", rootErr)
	}
	if mountErr != nil {
		b.logf("early mounts: %v", mountErr)
	}
	if err := mounts.Links(mounts.DevLinks); err != nil {
		b.debugf("%v", err)
	}

	b.cmdline = readCmdline()
	for _, w := range b.cmdline.warnings {
		b.logf("kernel command line: %s", w)
	}
	b.cfgPath = b.cmdline.config
	if b.cmdline.root != "" && mounts.InRamRoot() {
		// Returns only if the root could not be switched to.
		b.logf("%v; booting from the initramfs", b.switchRoot())
	}

	if err := raiseNofile(); err != nil {
		b.logf("%v", err)
	}
	// Ctrl-Alt-Del becomes SIGINT to PID 1 instead of an immediate reboot.
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF); err != nil {
		b.debugf("ctrl-alt-del: %v", err)
	}
	// TIOCSTI lets a process type into a terminal it shares (CVE-2023-28339
	// class); nest never needs it. The knob exists from Linux 6.2.
	if err := writeSysctl("dev/tty/legacy_tiocsti", "0"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		b.logf("%v", err)
	}
	servicesCgroup, err := setupRootCgroup(cgroupRoot)
	if err != nil {
		b.logf("cgroups: %v (services run without their own cgroups)", err)
	}
	var containersCgroup string
	if servicesCgroup != "" {
		if containersCgroup, err = containerCgroups(cgroupRoot); err != nil {
			b.logf("cgroups: %v", err)
		}
	}

	cfg := b.loadConfig()
	b.loadModules(append(append([]string(nil), ownModules...), cfg.Modules...))
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			b.logf("hostname %q: %v", cfg.Hostname, err)
		}
	}
	if err := nestnet.LoopbackUp(); err != nil {
		b.logf("%v", err)
	}
	b.mountConfigured(cfg.Mounts)

	b.reaper.OnOrphan = func(pid int, st supervise.ExitStatus) {
		b.debugf("reaped orphan %d (%s)", pid, st)
	}
	ids := sandbox.Pool{Path: sandbox.DefaultPoolPath}
	b.sup = supervise.New(supervise.Options{
		Reaper:           b.reaper,
		Logf:             b.logf,
		LogDir:           logDir,
		RunDir:           runDir,
		Cgroups:          servicesCgroup,
		ContainerCgroups: containersCgroup,
		IDs:              ids,
		Net:              rootNetOptions(cfg, b.loadModules),
	})
	b.admin = &containerAdmin{cfgPath: b.cfgPath, sup: b.sup, ids: &ids, logf: b.logf,
		load: func() (*config.Config, error) { return loadConfig(b.cfgPath, true) }}
	b.serveControl()
	b.cfg = cfg
	b.sup.Apply(unitSpecs(cfg))
	go b.reportReady()
}

// loop handles signals and power requests forever.
func (b *booter) loop() {
	for {
		select {
		case sig := <-b.sigs:
			switch sig {
			case unix.SIGCHLD:
				b.reaper.Reap()
			case unix.SIGTERM, unix.SIGPWR, unix.SIGUSR2:
				b.shutdown("poweroff")
			case unix.SIGINT:
				b.shutdown("reboot")
			case unix.SIGUSR1:
				b.shutdown("halt")
			case unix.SIGHUP:
				go func() {
					defer b.recoverLog("reload")
					if err := b.reload(); err != nil {
						b.logf("reload: %v", err)
					}
				}()
			default:
				b.debugf("ignored signal %v", sig)
			}
		case action := <-b.power:
			b.shutdown(action)
		}
	}
}

// loadConfig reads the config named on the kernel command line. A missing
// file means the built-in config; a broken one is reported on the console
// and replaced by the built-in config, whose console shell is then the
// emergency shell.
func (b *booter) loadConfig() *config.Config {
	if b.cmdline.shell {
		b.logf("nest.shell: emergency shell instead of %s", b.cfgPath)
		return &config.Config{Source: "nest.shell", Console: config.ConsoleShell}
	}
	cfg, err := loadConfig(b.cfgPath, true)
	switch {
	case err == nil && cfg.Source == config.BuiltIn:
		b.logf("no %s: using the built-in config", b.cfgPath)
		return cfg
	case err == nil:
		b.logf("config %s", b.cfgPath)
		return cfg
	default:
		for _, line := range strings.Split(err.Error(), "\n") {
			b.logf("config error: %s", line)
		}
		b.logf("config error: starting the built-in config with an emergency shell")
	}
	cfg = config.Default()
	cfg.Console = config.ConsoleShell
	// The emergency system depends on nothing that may fail on this
	// machine: no user containers (they need a root that can be idmapped).
	cfg.Containers = slices.DeleteFunc(cfg.Containers, func(c config.Container) bool { return c.Kind == config.KindUser })
	return cfg
}

// reload re-reads the config and applies the difference. A file that does
// not parse changes nothing.
func (b *booter) reload() error {
	defer b.admin.lock()()
	cfg, err := loadConfig(b.cfgPath, true)
	if err != nil {
		return fmt.Errorf("%w (nothing changed)", err)
	}
	b.mu.Lock()
	old := b.cfg
	b.cfg = cfg
	b.mu.Unlock()
	b.logf("reloading %s", b.cfgPath)
	if cfg.Hostname != "" && cfg.Hostname != old.Hostname {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			b.logf("hostname %q: %v", cfg.Hostname, err)
		}
	}
	b.loadModules(cfg.Modules)
	b.sup.Apply(unitSpecs(cfg))
	return nil
}

// loadConfig reads the config file at path and the child containers of
// the containers.d beside it (config.DirFor). With builtin, a missing
// file is the built-in config (Source config.BuiltIn), with the
// containers of containers.d all the same: what `nest create` made
// outlives a reboot.
func loadConfig(path string, builtin bool) (*config.Config, error) {
	cfg, err := config.Load(path)
	if errors.Is(err, fs.ErrNotExist) && builtin {
		cfg, err = config.Default(), nil
	}
	if err != nil {
		return nil, err
	}
	if err := config.LoadDir(cfg, config.DirFor(path)); err != nil {
		return nil, err
	}
	return cfg, nil
}

// unitSpecs turns a config into the supervisor's units: the console shell
// (when asked for), the services and the child containers.
func unitSpecs(cfg *config.Config) []supervise.Spec {
	var specs []supervise.Spec
	if cfg.Console == config.ConsoleShell {
		specs = append(specs, supervise.Spec{
			Service: config.Service{
				Name:        config.ConsoleUnit,
				Exec:        []string{"/bin/sh", "-l"},
				Restart:     config.RestartAlways,
				StopTimeout: 3 * time.Second,
			},
			TTY: "/dev/console",
		})
	}
	if cfg.Console == config.ConsoleLogin {
		specs = append(specs, loginUnit(cfg.Source))
	}
	for _, s := range cfg.Services {
		specs = append(specs, supervise.Spec{Service: s})
	}
	return append(specs, containerSpecs(cfg.Containers)...)
}

// containerSpecs are the units of an init's child containers.
func containerSpecs(cs []config.Container) []supervise.Spec {
	var specs []supervise.Spec
	for i := range cs {
		specs = append(specs, containerUnit(&cs[i]))
	}
	return specs
}

// containerUnit is the unit of a child container.
func containerUnit(c *config.Container) supervise.Spec {
	return supervise.Spec{
		Service: config.Service{
			Name: c.Name, Restart: c.Restart, After: c.After,
			StopTimeout: c.StopTimeout, StartLimit: c.StartLimit,
		},
		Container: c,
	}
}

// reportReady prints how long nest took from exec to every unit up.
func (b *booter) reportReady() {
	defer b.recoverLog("ready report")
	if waitSettled(b.sup, time.Minute) {
		b.logf("all units up %d ms after start", time.Since(b.start).Milliseconds())
	}
	// Boot's garbage (module tables, config trees) is not needed again:
	// give it back to the kernel now rather than when the scavenger gets
	// to it. PID 1 lives as long as the machine.
	debug.FreeOSMemory()
}

// waitSettled waits up to limit until no unit is starting, waiting for a
// dependency or restarting, and reports whether that happened.
func waitSettled(sup *supervise.Supervisor, limit time.Duration) bool {
	deadline := time.After(limit)
	for {
		changed := sup.Changes()
		settled := true
		for _, u := range sup.Units() {
			switch u.Status().State {
			case supervise.StateStarting, supervise.StateWaiting, supervise.StateRestarting:
				settled = false
			}
		}
		if settled {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return false
		}
	}
}

func (b *booter) serveControl() {
	l, err := supervise.ListenControl(controlSocket)
	if err != nil {
		b.logf("%v", err)
		return
	}
	ctl := &supervise.Control{
		Sup:     b.sup,
		Version: version,
		Power: func(action string) error {
			select {
			case b.power <- action:
				return nil
			default:
				return errors.New("a shutdown is already under way")
			}
		},
		Reload: b.reload,
		Admin:  b.admin,
	}
	b.ctl = ctl
	go func() {
		defer b.recoverLog("control socket")
		if err := ctl.Serve(l); err != nil {
			b.logf("%v", err)
		}
	}()
}

// emergency runs a shell on the console forever. Used when the supervisor
// itself cannot go on; PID 1 must still never exit.
func (b *booter) emergency(why string) {
	for {
		b.logf("EMERGENCY (%s): starting a shell on /dev/console", why)
		con, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			b.logf("emergency: %v", err)
			time.Sleep(5 * time.Second)
			continue
		}
		fd := con.Fd()
		p, err := b.reaper.Start([]string{"/bin/sh"}, &syscall.ProcAttr{
			Env:   []string{"PATH=" + supervise.DefaultPath, "HOME=/root", "TERM=linux"},
			Files: []uintptr{fd, fd, fd},
			Sys:   &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0},
		})
		con.Close()
		if err != nil {
			b.logf("emergency: %v", err)
			time.Sleep(5 * time.Second)
			continue
		}
		for waiting := true; waiting; {
			select {
			case sig := <-b.sigs:
				if sig == unix.SIGCHLD {
					b.reaper.Reap()
				}
			case <-p.Done():
				waiting = false
			}
		}
		p.Close()
		time.Sleep(time.Second)
	}
}

// openConsole makes /dev/console PID 1's stdin, stdout and stderr. The
// kernel opens it before init only when the initramfs has the node.
func (b *booter) openConsole() {
	con, err := os.OpenFile("/dev/console", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return
	}
	for fd := 0; fd <= 2; fd++ {
		unix.Dup3(int(con.Fd()), fd, 0)
	}
	con.Close()
}

func (b *booter) logf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	b.mu.Lock()
	defer b.mu.Unlock()
	fmt.Fprintf(os.Stderr, "nest: %s\n", msg)
}

func (b *booter) debugf(format string, args ...any) {
	if b.cmdline.debug {
		b.logf(format, args...)
	}
}

func (b *booter) recoverLog(what string) {
	if r := recover(); r != nil {
		b.logf("%s: internal error: %v\n%s", what, r, debug.Stack())
	}
}

// raiseNofile lifts PID 1's open-file limit: a thousand children with a few
// fds each pass the default 1,024.
func raiseNofile() error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE: %w", err)
	}
	want := max(lim.Max, 1<<16)
	lim.Cur, lim.Max = want, want
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("RLIMIT_NOFILE to %d: %w", want, err)
	}
	return nil
}

func writeSysctl(name, value string) error {
	path := "/proc/sys/" + name
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	defer f.Close()
	if _, err := f.WriteString(value); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}
