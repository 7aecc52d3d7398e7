package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
	"nest/mounts"
	"nest/rootfs"
	"nest/sandbox"
)

// ChildSpec is what a parent init sends its child's init over the link.
type ChildSpec struct {
	Container config.Container `json:"container"`
	// Cgroup says the child was born in a delegated cgroup v2 of its own,
	// which it mounts and manages (limits live on its parent side).
	Cgroup bool `json:"cgroup"`
	// Layers is how many "layer" messages follow the spec, one fd each:
	// a user container's state tree, then the lowers of its overlay root,
	// topmost first. 0: the rootfs is fd 4, shown read-only.
	Layers int `json:"layers,omitempty"`
	// EscalationFD, when not 0, is the fd of a detached tree of the
	// child's escalation directory, for mounts.AttachParentDir.
	EscalationFD int `json:"escalation_fd,omitempty"`
}

// spawnContainer starts one run of a child container: nest itself as the
// init of fresh namespaces, born in its own cgroup, with the spec on the
// link and the rootfs as a detached mount tree. Nothing else of this
// process crosses.
func (u *Unit) spawnContainer() (*Process, *containerRun, *cgroup, error) {
	c := u.spec.Container
	opts := u.sup.opts
	if err := c.CheckPaths(); err != nil {
		return nil, nil, nil, err
	}
	var cleanup []func()
	fail := func(err error) (*Process, *containerRun, *cgroup, error) {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
		return nil, nil, nil, err
	}

	var ids sandbox.Range
	if c.Sandbox.PrivateUsers {
		var err error
		if opts.Nested {
			ids, err = sandbox.IdentityRange(c.Name)
		} else {
			ids, err = opts.IDs.Acquire(c.Name)
		}
		if err != nil {
			return fail(err)
		}
	}

	// A user container gets its root as layers after the start (an
	// idmapped base needs its user namespace); anything else a read-only
	// clone of its rootfs as fd 4.
	user := c.Kind == config.KindUser
	base := -1
	var layers []*os.File // each the one owner of its fd
	defer func() {
		for _, f := range layers {
			f.Close()
		}
	}()
	if user {
		owner := 0
		if c.Sandbox.PrivateUsers && !opts.Nested {
			owner = int(ids.Start)
		}
		st := rootfs.StateOf(opts.StateRoot, c.Name)
		if err := st.Prepare(owner); err != nil {
			return fail(err)
		}
		tree, err := mounts.StateTree(st.Dir)
		if err != nil {
			return fail(err)
		}
		layers = append(layers, os.NewFile(uintptr(tree), "state"))
	} else {
		var err error
		if base, err = mounts.CloneBase(rootfsPath(c)); err != nil {
			return fail(fmt.Errorf("rootfs %s: %w", rootfsPath(c), err))
		}
		cleanup = append(cleanup, func() {
			if base >= 0 {
				unix.Close(base)
			}
		})
	}

	link, childLink, err := escalate.Pair()
	if err != nil {
		return fail(err)
	}
	cleanup = append(cleanup, func() { link.Close() })
	defer childLink.Close()
	// The child has no business sending fds up its link (LimitFDs).
	link.LimitFDs(0)

	var cg *cgroup
	limits := sandbox.Limits{Memory: c.Memory, MemoryHigh: c.MemoryHigh, Pids: c.Pids, CPU: c.CPU}
	if opts.ContainerCgroups != "" {
		if cg, err = newCgroup(filepath.Join(opts.ContainerCgroups, c.Name)); err != nil {
			return fail(err)
		}
		cleanup = append(cleanup, func() { cg.Remove() })
		if err := limits.Apply(cg.path); err != nil {
			return fail(fmt.Errorf("container %s: %w", c.Name, err))
		}
		if c.Sandbox.PrivateUsers {
			if err := delegate(cg.path, int(ids.Start)); err != nil {
				return fail(err)
			}
		}
	} else if limits != (sandbox.Limits{}) {
		u.logf("%s: no cgroup v2 here: memory, pids and cpu limits are unavailable", c.Name)
	}

	null, err := os.Open(os.DevNull)
	if err != nil {
		return fail(err)
	}
	defer null.Close()
	logR, logW, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	defer logW.Close()
	cleanup = append(cleanup, func() {
		if logR != nil {
			logR.Close()
		}
	})

	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP)
	if c.Network != "host" {
		flags |= unix.CLONE_NEWNET
	}
	sys := &syscall.SysProcAttr{Cloneflags: flags, Setsid: true}
	if c.Sandbox.PrivateUsers {
		sys.Cloneflags |= unix.CLONE_NEWUSER
		sys.UidMappings, sys.GidMappings = ids.UidMappings(), ids.GidMappings()
		// The mapping is written by this (privileged) init, so the
		// container may keep setgroups(2): package managers and login
		// programs drop groups with it.
		sys.GidMappingsEnableSetgroups = true
		sys.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	if cg != nil {
		sys.UseCgroupFD, sys.CgroupFD = true, cg.fd
	}
	exe := opts.Self
	if exe == "" {
		exe = "/proc/self/exe"
	}
	if !c.Sandbox.PrivateUsers {
		// Its root is ours: it gets a copy of nest it cannot write to.
		if exe, err = sealedSelf(); err != nil {
			return fail(err)
		}
	}
	files := []uintptr{null.Fd(), logW.Fd(), logW.Fd(), childLink.File().Fd()}
	if base >= 0 {
		files = append(files, uintptr(base))
	}
	escFD := 0
	escDir, err := u.sup.escalationDir(c)
	if err != nil {
		return fail(err)
	}
	if escDir >= 0 {
		defer unix.Close(escDir)
		escFD = len(files)
		files = append(files, uintptr(escDir))
	}
	proc, err := opts.Reaper.Start([]string{exe, "child-init"}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   childInitEnv,
		Files: files,
		Sys:   sys,
	})
	if cg != nil {
		cg.closeFD()
	}
	if err != nil {
		return fail(err)
	}
	// Handed over: a later failure must not close it again (the fd
	// number may be another's by then).
	if base >= 0 {
		unix.Close(base)
		base = -1
	}
	failStarted := func(err error) (*Process, *containerRun, *cgroup, error) {
		proc.Signal(unix.SIGKILL)
		<-proc.Done()
		proc.Close()
		return fail(err)
	}

	if user {
		lowers, err := u.userLowers(proc.Pid, c)
		for _, fd := range lowers {
			layers = append(layers, os.NewFile(uintptr(fd), "layer"))
		}
		if err != nil {
			return failStarted(fmt.Errorf("container %s: %w", c.Name, err))
		}
	}
	spec := ChildSpec{Container: c.ForChild(), Cgroup: cg != nil, Layers: len(layers), EscalationFD: escFD}
	if err := sendSpec(link, spec, layers); err != nil {
		return failStarted(err)
	}
	// Only now: a failed start closes logR (the pipe keeps what the
	// init wrote meanwhile); from here on copyLog owns it.
	go u.copyLog(logR)
	logR = nil
	run := newContainerRun(link, c.Name, u.logf)
	run.subnets = u.sup.descendantSubnet
	if c.Network == config.NetworkVeth {
		if err := u.attachNetwork(proc, run); err != nil {
			return failStarted(err)
		}
	}
	go run.read()
	return proc, run, cg, nil
}

// sendSpec sends the spec, then each layer in a message of its own.
func sendSpec(link *escalate.Conn, spec ChildSpec, layers []*os.File) error {
	body, err := json.Marshal(spec)
	if err == nil {
		err = link.Send(&escalate.Message{Type: msgSpec, Body: body})
	}
	for i := 0; err == nil && i < len(layers); i++ {
		err = link.Send(&escalate.Message{Type: msgLayer}, layers[i])
	}
	if err != nil {
		return fmt.Errorf("sending the spec: %w", err)
	}
	return nil
}

// rootfsPath is the path of a container's rootfs in this init's view.
func rootfsPath(c *config.Container) string {
	if c.Rootfs == "" || c.Rootfs == config.RootfsHost {
		return "/"
	}
	return c.Rootfs
}

// userLowers returns the lowers of a user container's overlay root: this
// init's own layers when it sees "host" below the root's children;
// otherwise its rootfs, idmapped for the child's user namespace (of the
// started process pid) where the root init gives it ids of its own.
func (u *Unit) userLowers(pid int, c *config.Container) ([]int, error) {
	opts := u.sup.opts
	if rootfsPath(c) == "/" && opts.Layers != nil {
		return opts.Layers.ChildLowers()
	}
	path := rootfsPath(c)
	if !c.Sandbox.PrivateUsers || opts.Nested {
		fd, err := mounts.CloneBase(path)
		if err != nil {
			return nil, fmt.Errorf("rootfs %s: %w", path, err)
		}
		return []int{fd}, nil
	}
	ns, err := unix.Open(fmt.Sprintf("/proc/%d/ns/user", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("user namespace of the new init: %w", err)
	}
	defer unix.Close(ns)
	fd, err := mounts.IdmappedBase(path, ns)
	if err != nil {
		return nil, err
	}
	return []int{fd}, nil
}

// delegate gives a container's cgroup to its mapped root, so that its init
// can create cgroups for its own units (the files cgroup v2 delegation
// names: the directory, cgroup.procs, cgroup.subtree_control,
// cgroup.threads).
func delegate(dir string, uid int) error {
	for _, name := range []string{"", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"} {
		if err := os.Chown(filepath.Join(dir, name), uid, uid); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delegate cgroup %s: %w", dir, err)
		}
	}
	return nil
}
