package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
	"nest/mounts"
	nestnet "nest/net"
	"nest/rootfs"
	"nest/sandbox"
	"nest/supervise"
)

// childInit is the init of a child container (internal mode child-init):
// started by its parent init in fresh namespaces with the spec on the link
// (fd 3) and the rootfs as a detached mount tree (fd 4). It builds its
// root, then supervises the container's units as the root's PID 1 does,
// reports ready up the link, answers its parent's requests there (its
// subtree, actions on unit paths), and stops its subtree when the parent
// asks or dies.
func childInit(args []string, sigs chan os.Signal) int {
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "nest: "+format+"\n", a...) }
	fail := func(format string, a ...any) int {
		logf(format, a...)
		return runExitError
	}
	// SIGCHLD too is enabled in the background (notifyInit): nothing is
	// started before lateSignals.Wait.
	chld := make(chan os.Signal, 1)
	lateSignals.Add(1)
	go func() {
		defer lateSignals.Done()
		signal.Notify(chld, unix.SIGCHLD)
	}()
	var spec supervise.ChildSpec
	link, err := receiveSpec(&spec)
	if err != nil {
		return fail("%v", err)
	}
	c := spec.Container
	layers, err := receiveLayers(link, spec.Layers)
	if err != nil {
		return fail("%v", err)
	}
	cnet, err := receiveChildNet(c, link)
	if err != nil {
		return fail("%v", err)
	}

	hostname := c.Hostname
	if hostname == "" {
		hostname = c.Name
	}
	if err := unix.Sethostname([]byte(hostname)); err != nil {
		return fail("hostname: %v", err)
	}
	if c.Network != "host" {
		if err := nestnet.LoopbackUp(); err != nil {
			return fail("%v", err)
		}
	}
	root := mounts.Root{
		Base: 4, Binds: binds(c.Binds), Nesting: c.Sandbox.Nesting, Console: true,
		PrivateTmp: c.Sandbox.PrivateTmp, MinimalDev: c.Sandbox.PrivateDevices,
		ProtectProc: c.Sandbox.ProtectProc, ProtectSys: c.Sandbox.ProtectSys,
		OwnNet: c.Network != "host",
	}
	var own *mounts.Layers
	if layers != nil {
		root.Base = -1
		root.Overlay = &mounts.Overlay{State: layers[0], Lowers: layers[1:], Binds: stateBinds(c)}
		own = &mounts.Layers{State: layers[0], Lowers: layers[1:]}
	} else {
		root.Hide = parentState
	}
	if err := root.Build(); err != nil {
		return fail("%v", err)
	}
	if layers == nil {
		unix.Close(4)
	}
	if spec.EscalationFD > 0 {
		if err := mounts.AttachParentDir(spec.EscalationFD); err != nil {
			logf("%v (nest escalate will not reach the parent)", err)
		}
	}
	if err := containerConsole(os.Stdout); err != nil {
		return fail("%v", err)
	}
	if c.Kind == config.KindUser {
		if err := userEtc(userName(c), hostname); err != nil {
			return fail("%v", err)
		}
	}
	if err := cnet.writeEtc(logf); err != nil {
		return fail("%v", err)
	}
	ownConfig(&c, logf)
	lateSignals.Wait()
	shells := newShellHost(c) // before any process of the container runs

	servicesCgroup, containersCgroup := "", ""
	if spec.Cgroup {
		// The container's own cgroup, delegated by the parent, is the root
		// of its cgroup namespace.
		cg := mounts.Mount{Source: "cgroup2", Target: cgroupRoot, Type: "cgroup2",
			Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Magic: unix.CGROUP2_SUPER_MAGIC}
		if _, err := cg.Do(); err != nil {
			return fail("%v", err)
		}
		if servicesCgroup, err = setupRootCgroup(cgroupRoot); err != nil {
			logf("cgroups: %v (units run without their own cgroups)", err)
			servicesCgroup = ""
		} else if len(c.Containers) > 0 || c.Sandbox.Nesting {
			if containersCgroup, err = containerCgroups(cgroupRoot); err != nil {
				logf("cgroups: %v (child containers run without limits)", err)
				containersCgroup = ""
			}
		}
	}

	reaper := supervise.NewReaper()
	go func() {
		for range chld {
			reaper.Reap()
		}
	}()
	// Made before the supervisor, which asks the parent for its
	// children's subnets through it; it reads once Serve runs, below.
	parent := supervise.NewParentLink(link)
	parent.Shells = shells
	opts := supervise.Options{
		Reaper: reaper, Logf: logf, RunDir: runDir, Cgroups: servicesCgroup,
		ContainerCgroups: containersCgroup,
		// Below the root's children ids map one to one, and "host" is
		// this container's own root.
		Nested: true, Layers: own,
		WorkloadUserns: c.Sandbox.Nesting && c.Sandbox.PrivateUsers,
		Net:            cnet.netOptions(parent),
	}
	if c.Kind == config.KindUser {
		opts.LogDir = logDir // the container's own, from its state
	}
	sup := supervise.New(opts)
	if l, err := supervise.ListenControl(controlSocket); err != nil {
		logf("%v", err)
	} else {
		ctl := &supervise.Control{Sup: sup, Version: version, Admin: childAdmin(c, sup, logf)}
		go ctl.Serve(l)
	}
	sup.Apply(childUnits(c))

	// The daemon's end is the container's end; the parent applies restart.
	var daemonDone <-chan supervise.Status
	if c.Kind == config.KindDaemon {
		daemonDone = watchEnd(sup, c.Name)
	}
	if cnet != nil {
		parent.OnHosts = cnet.updateHosts(logf)
	}
	go func() {
		if waitSettled(sup, time.Minute) {
			if err := parent.Ready(); err != nil {
				logf("link: %v", err)
			}
		}
	}()
	// The parent asks (its subtree, actions on unit paths, shutdown); this
	// init answers from its own supervisor.
	requests := make(chan string, 1)
	go func() {
		err := parent.Serve(sup, func(string) {
			select {
			case requests <- "shutdown":
			default:
			}
		}, logf)
		if !errors.Is(err, io.EOF) {
			logf("link: %v", err)
		}
		select {
		case requests <- "parent gone":
		default:
		}
	}()

	stop := func(why string, code int) int {
		logf("%s: stopping", why)
		sup.Shutdown()
		reaper.KillDescendants(2 * time.Second)
		return code
	}
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case unix.SIGTERM, unix.SIGINT, unix.SIGPWR:
				return stop(sig.String(), 0)
			}
		case why := <-requests:
			return stop(why, 0)
		case st := <-daemonDone:
			if st.State == supervise.StateStopped {
				// Stopped on request: the container powers off, which its
				// parent reads as a stop, not a failure to restart.
				stop(fmt.Sprintf("%s stopped", c.Name), 0)
				return powerOffNamespace(logf)
			}
			code := 0
			if st.ExitCode != nil {
				code = *st.ExitCode
			}
			return stop(fmt.Sprintf("%s %s", c.Name, st.State), code)
		}
	}
}

// receiveSpec takes over the link (fd 3) an init of a sandbox or child
// container was started with, reads the spec its parent sends first into
// v, and makes every fd this process holds close-on-exec: the link and the
// rootfs (fd 4) came in without it, and nothing this init holds may reach
// what it execs.
func receiveSpec(v any) (*escalate.Conn, error) {
	if err := unix.CloseRange(5, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		return nil, fmt.Errorf("close_range: %w", err)
	}
	link, err := escalate.NewConn(os.NewFile(3, "link"))
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	link.SetDeadline(time.Now().Add(10 * time.Second))
	m, fds, err := link.Recv()
	for _, f := range fds {
		f.Close() // a spec carries none
	}
	if err == nil && m.Type != "spec" {
		err = fmt.Errorf("want a spec, got %q", m.Type)
	}
	if err == nil {
		err = escalate.DecodeBody(m, v)
	}
	if err == nil {
		err = unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	}
	if err != nil {
		link.Close()
		return nil, fmt.Errorf("reading the spec: %w", err)
	}
	link.SetDeadline(time.Time{})
	return link, nil
}

// powerOffNamespace ends this pid namespace with reboot(2): the kernel
// kills its init with SIGINT, which the parent reads as "powered off from
// inside". It returns only if reboot(2) is refused.
func powerOffNamespace(logf func(string, ...any)) int {
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	logf("poweroff: %v", err)
	return 0
}

// childUnits are the units a child container's init runs: a daemon's one
// service, confined, with its output as the container's log; and the
// services the parent's config declares inside it.
func childUnits(c config.Container) []supervise.Spec {
	var specs []supervise.Spec
	if c.Kind == config.KindDaemon {
		specs = append(specs, supervise.Spec{
			Service: config.Service{
				Name: c.Name, Exec: c.Exec, Env: c.Env, Dir: c.Dir,
				Restart: config.RestartNo, StopTimeout: c.StopTimeout, StartLimit: 1,
			},
			InheritOutput: true,
			Confine:       workloadConfine(c),
		})
	}
	for _, s := range c.Services {
		specs = append(specs, supervise.Spec{Service: s})
	}
	return append(specs, containerSpecs(c.Containers)...)
}

// heldLayers keeps the files of this init's layers open for its whole
// life: its user containers get clones of them.
var heldLayers []*os.File

// receiveLayers reads the n "layer" messages that follow a user
// container's spec, one fd each: its state tree, then its lowers.
func receiveLayers(link *escalate.Conn, n int) ([]int, error) {
	if n == 0 {
		return nil, nil
	}
	if n < 2 || n > mounts.MaxLayers+1 {
		return nil, fmt.Errorf("spec: %d layers, want 2 to %d", n, mounts.MaxLayers+1)
	}
	link.SetDeadline(time.Now().Add(10 * time.Second))
	defer link.SetDeadline(time.Time{})
	var fds []int
	for range n {
		m, files, err := link.Recv()
		if err == nil && (m.Type != "layer" || len(files) != 1) {
			err = fmt.Errorf("want a layer with one fd, got %q with %d", m.Type, len(files))
		}
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, fmt.Errorf("reading the layers: %w", err)
		}
		heldLayers = append(heldLayers, files[0])
		fds = append(fds, int(files[0].Fd()))
	}
	return fds, nil
}

// parentState are the parent's nest directories, hidden in a container
// that shows the parent's root: its config, its children's state and its
// logs are none of the container's business.
var parentState = []string{"/etc/nest", "/var/lib/nest", "/var/log/nest"}

// stateBinds show a user container's own entries of its state directory:
// its home, and its own nest config, state and logs in place of the
// parent's.
func stateBinds(c config.Container) []mounts.StateBind {
	return []mounts.StateBind{
		{Entry: rootfs.Home, Target: "/home/" + userName(c)},
		{Entry: rootfs.Etc, Target: "/etc/nest"},
		{Entry: rootfs.Lib, Target: "/var/lib/nest"},
		{Entry: rootfs.Log, Target: "/var/log/nest"},
	}
}

// userName is the user of a user container.
func userName(c config.Container) string {
	if c.User != "" {
		return c.User
	}
	return c.Name
}

// watchEnd delivers the status of unit name once it has ended for good:
// exited, failed, or stopped after it had run.
func watchEnd(sup *supervise.Supervisor, name string) <-chan supervise.Status {
	out := make(chan supervise.Status, 1)
	go func() {
		for {
			changed := sup.Changes()
			if u, ok := sup.Unit(name); ok {
				st := u.Status()
				// Stopped counts too: `nest stop web/web` ends the daemon
				// container, which is nothing but its service.
				ended := st.State == supervise.StateExited || st.State == supervise.StateFailed ||
					(st.State == supervise.StateStopped && st.LastExit != "")
				if st.Pid == 0 && ended {
					out <- st
					return
				}
			}
			<-changed
		}
	}()
	return out
}

func binds(list []config.Bind) []mounts.Bind {
	out := make([]mounts.Bind, len(list))
	for i, b := range list {
		out[i] = mounts.Bind{Source: b.Source, Target: b.Target, Writable: b.Writable}
	}
	return out
}

// confine execs a command with fewer privileges (internal mode): the
// capabilities and no_new_privs are per thread, and this thread execs.
func confine(args []string, _ chan os.Signal) int {
	runtime.LockOSThread()
	fl := flag.NewFlagSet("nest confine", flag.ContinueOnError)
	nnp := fl.Bool("nnp", false, "set no_new_privs")
	caps := fl.String("caps", "", "daemon: keep only sandbox.DaemonCaps")
	if err := fl.Parse(args); err != nil || fl.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: nest confine [--nnp] [--caps daemon] -- CMD [ARGS...]")
		return 2
	}
	argv := fl.Args()
	if *caps == "daemon" {
		if err := sandbox.LimitCaps(sandbox.DaemonCaps); err != nil {
			fmt.Fprintf(os.Stderr, "nest confine: %v\n", err)
			return 126
		}
	}
	if *nnp {
		if err := sandbox.NoNewPrivs(); err != nil {
			fmt.Fprintf(os.Stderr, "nest confine: %v\n", err)
			return 126
		}
	}
	path := argv[0]
	if !strings.Contains(path, "/") {
		fmt.Fprintf(os.Stderr, "nest confine: %s: want a path\n", path)
		return 127
	}
	err := syscall.Exec(path, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "nest confine: %s: %v\n", path, err)
	return 127
}
