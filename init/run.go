package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"nest/escalate"
	"nest/mounts"
	nestnet "nest/net"
	"nest/sandbox"
	"nest/supervise"
)

// runExitError is nest run's own status when CMD could not be started, as
// podman and docker do; CMD's status is passed through otherwise.
const runExitError = 125

// runForwarded are the signals nest run passes on to its sandbox, whose
// init passes them on to CMD.
var runForwarded = []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGWINCH, unix.SIGCONT, unix.SIGTSTP}

// runSpec is what `nest run` sends its sandbox's init over the link.
type runSpec struct {
	Argv     []string      `json:"argv"`
	Dir      string        `json:"dir"`
	Hostname string        `json:"hostname"`
	Binds    []mounts.Bind `json:"binds"`
	OwnNet   bool          `json:"own_net"`
}

// bindFlags collects --bind SRC[:DST[:rw]].
type bindFlags []mounts.Bind

func (b *bindFlags) String() string { return fmt.Sprint(*b) }

func (b *bindFlags) Set(v string) error {
	parts := strings.Split(v, ":")
	if len(parts) > 3 || parts[0] == "" {
		return fmt.Errorf("want SRC[:DST[:rw]], got %q", v)
	}
	bind := mounts.Bind{Source: parts[0], Target: parts[0]}
	if len(parts) > 1 && parts[1] != "" {
		bind.Target = parts[1]
	}
	if len(parts) == 3 {
		if parts[2] != "rw" && parts[2] != "ro" {
			return fmt.Errorf("%q: the third field is rw or ro", v)
		}
		bind.Writable = parts[2] == "rw"
	}
	if !filepath.IsAbs(bind.Source) || !filepath.IsAbs(bind.Target) {
		return fmt.Errorf("%q: paths must be absolute", v)
	}
	*b = append(*b, bind)
	return nil
}

// runSandbox is `nest run`: one command in a fresh sandbox, the default of
// a daemon container — own user namespace with an id range from the pool,
// mount, pid, ipc, uts, cgroup and (unless --network host) network
// namespaces, the root file system read-only without the parent's other
// mounts, private /tmp and /run, a minimal /dev, masked /proc, read-only
// /sys, a reduced capability set and no_new_privs. No running init is
// needed; the exit status is CMD's.
func runSandbox(args []string) int {
	fl := flag.NewFlagSet("nest run", flag.ContinueOnError)
	rootfs := fl.String("rootfs", "/", "directory shown as / (read-only)")
	network := fl.String("network", "none", "none (only lo) or host (the caller's network namespace)")
	hostname := fl.String("hostname", "nest-run", "host name inside")
	var binds bindFlags
	fl.Var(&binds, "bind", "SRC[:DST[:rw]] shows SRC at DST (read-only unless rw); repeatable")
	fl.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: nest run [--rootfs DIR] [--bind SRC[:DST[:rw]]]... [--network none|host] [--hostname NAME] -- CMD [ARGS...]")
		fl.PrintDefaults()
	}
	if err := fl.Parse(args); err != nil {
		return 2
	}
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "nest run: "+format+"\n", a...)
		return runExitError
	}
	// fds this process inherited without close-on-exec would cross into
	// the sandbox (the CVE-2024-21626 class): only what is named below may.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return fail("close_range: %v", err)
	}
	if fl.NArg() == 0 {
		fl.Usage()
		return 2
	}
	if *network != "none" && *network != "host" {
		fmt.Fprintf(os.Stderr, "nest run: --network %q: want none or host\n", *network)
		return 2
	}
	if st, err := os.Stat(*rootfs); err != nil || !st.IsDir() {
		return fail("--rootfs %s: not a directory", *rootfs)
	}
	for _, b := range binds {
		if err := mounts.CheckBind(b); err != nil {
			return fail("--bind: %v", err)
		}
		if _, err := os.Stat(b.Source); err != nil {
			return fail("--bind %s: %v", b.Source, err)
		}
	}
	if os.Geteuid() != 0 {
		return fail("needs root: it maps an id range of the pool in %s", sandbox.DefaultPoolPath)
	}
	dir, _ := os.Getwd()
	spec := runSpec{Argv: fl.Args(), Dir: dir, Hostname: *hostname, Binds: binds, OwnNet: *network == "none"}

	// os/signal enables each signal with a round trip to a thread of its
	// own (init/main.go): do the ten in the background, while the lease,
	// the rootfs, the link and the sandbox are made. A signal that comes
	// earlier ends nest run, and the sandbox with it (Pdeathsig).
	sigs := make(chan os.Signal, 32)
	chld := make(chan os.Signal, 1)
	notified := make(chan struct{})
	go func() {
		signal.Notify(sigs, runForwarded...)
		signal.Notify(chld, unix.SIGCHLD)
		close(notified)
	}()

	ids, err := sandbox.Pool{}.AcquireTemp()
	if err != nil {
		return fail("%v", err)
	}
	defer ids.Close()

	base, err := mounts.CloneBase(*rootfs)
	if err != nil {
		return fail("rootfs %s: %v", *rootfs, err)
	}
	link, childLink, err := escalate.Pair()
	if err != nil {
		unix.Close(base)
		return fail("%v", err)
	}
	defer link.Close()
	// The spec waits in the link for the sandbox's init, which reads it
	// first thing.
	body, _ := json.Marshal(spec)
	if err := link.Send(&escalate.Message{Type: "spec", Body: body}); err != nil {
		childLink.Close()
		unix.Close(base)
		return fail("sending the spec: %v", err)
	}

	reaper := supervise.NewReaper()

	flags := uintptr(unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP)
	if spec.OwnNet {
		flags |= unix.CLONE_NEWNET
	}
	// Files: stdio, the link (3) and the rootfs tree (4); nothing else of
	// this process crosses into the sandbox.
	p, err := reaper.Start([]string{"/proc/self/exe", "run-init"}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   os.Environ(),
		Files: []uintptr{0, 1, 2, childLink.File().Fd(), uintptr(base)},
		Sys: &syscall.SysProcAttr{
			Cloneflags:  flags,
			UidMappings: ids.UidMappings(),
			GidMappings: ids.GidMappings(),
			// Without it the child is the overflow uid in its namespace,
			// and execve drops every capability (design.md).
			Credential: &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
			Setpgid:    true,
			// The id lease ends with this process: so does the sandbox,
			// however this process ends (its init is the namespace's
			// PID 1; the kernel kills the rest). This thread never exits
			// before the process: the main goroutine is not locked.
			Pdeathsig: unix.SIGKILL,
		},
	})
	childLink.Close()
	unix.Close(base)
	if err != nil {
		return fail("%v", err)
	}
	defer p.Close()
	// The sandbox's init may have ended before SIGCHLD was enabled: reap
	// once by hand after.
	<-notified
	go func() {
		reaper.Reap()
		for range chld {
			reaper.Reap()
		}
	}()
	reported := make(chan int, 1)
	go func() {
		if code, ok := receiveExit(link); ok {
			reported <- code
		}
	}()
	for {
		select {
		case sig := <-sigs:
			p.Signal(sig.(unix.Signal))
		case code := <-reported:
			// The sandbox's init has reaped everything below it and is
			// on its way out; the kernel's teardown of its namespaces
			// (the mount namespace's unmounts wait for an RCU grace
			// period) need not be waited for. SIGKILL makes sure it ends
			// even if the report was not its own.
			p.Signal(unix.SIGKILL)
			return code
		case st := <-p.Done():
			return st.ShellCode()
		}
	}
}

// receiveExit reads the one message the sandbox's init sends, CMD's exit
// status once nothing else runs in the sandbox; ok is false on anything
// else (the init died first, or sent something that is not a status).
func receiveExit(link *escalate.Conn) (code int, ok bool) {
	m, fds, err := link.Recv()
	for _, f := range fds {
		f.Close()
	}
	if err != nil || m.Type != "exit" {
		return 0, false
	}
	var exit escalate.Exit
	if escalate.DecodeBody(m, &exit) != nil || exit.Code < 0 || exit.Code > 255 {
		return 0, false
	}
	return exit.Code, true
}

// runInit is the sandbox's PID 1 (internal mode run-init): it builds the
// root, drops what CMD must not have, and runs CMD as `nest up -- CMD`
// does — forwarding signals, reaping orphans, exiting with CMD's status.
func runInit(args []string, sigs chan os.Signal) int {
	fail := func(format string, a ...any) int {
		fmt.Fprintf(os.Stderr, "nest run: "+format+"\n", a...)
		return runExitError
	}
	// Only stdio, the link (3) and the rootfs (4) were handed over; CMD
	// gets stdio alone.
	// Not dumpable: CMD runs as the same root of the same user namespace,
	// and must not ptrace this process or open its fds (the link).
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fail("prctl: %v", err)
	}
	var spec runSpec
	link, err := receiveSpec(&spec)
	if err != nil {
		return fail("%v", err)
	}
	defer link.Close()
	if len(spec.Argv) == 0 {
		return fail("spec: no command")
	}

	if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
		return fail("hostname: %v", err)
	}
	// lo comes up on another thread while this one builds the root.
	loUp := make(chan error, 1)
	if spec.OwnNet {
		go func() { loUp <- nestnet.LoopbackUp() }()
	} else {
		loUp <- nil
	}
	root := mounts.Root{Base: 4, Binds: spec.Binds, PrivateTmp: true, MinimalDev: true,
		ProtectProc: true, ProtectSys: true, OwnNet: spec.OwnNet}
	if err := root.Build(); err != nil {
		return fail("%v", err)
	}
	if err := <-loUp; err != nil {
		return fail("%v", err)
	}
	unix.Close(4)
	if err := os.Chdir(spec.Dir); err != nil {
		os.Chdir("/")
	}
	// Capabilities and no_new_privs are per thread: up lowers the thread
	// that forks CMD, and only that one.
	confine := func() error {
		if err := sandbox.LimitCaps(sandbox.DaemonCaps); err != nil {
			return err
		}
		return sandbox.NoNewPrivs()
	}
	code := upConfined(append([]string{"--grace", "2s", "--"}, spec.Argv...), sigs, confine)
	// up has reaped every process of the sandbox: nest run may go.
	body, _ := json.Marshal(escalate.Exit{Code: code})
	link.Send(&escalate.Message{Type: "exit", Body: body})
	return code
}
