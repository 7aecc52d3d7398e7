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
	"nest/sandbox"
)

// ChildSpec is what a parent init sends its child's init over the link.
type ChildSpec struct {
	Container config.Container `json:"container"`
	// Cgroup says the child was born in a delegated cgroup v2 of its own,
	// which it mounts and manages (limits live on its parent side).
	Cgroup bool `json:"cgroup"`
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
		if ids, err = opts.IDs.Acquire(c.Name); err != nil {
			return fail(err)
		}
	}

	rootfs := c.Rootfs
	if rootfs == "" || rootfs == "host" {
		rootfs = "/"
	}
	base, err := mounts.CloneBase(rootfs)
	if err != nil {
		return fail(fmt.Errorf("rootfs %s: %w", rootfs, err))
	}
	cleanup = append(cleanup, func() { unix.Close(base) })

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
	cleanup = append(cleanup, func() { logR.Close() })

	flags := uintptr(unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWIPC | unix.CLONE_NEWUTS | unix.CLONE_NEWCGROUP)
	if c.Network != "host" {
		flags |= unix.CLONE_NEWNET
	}
	sys := &syscall.SysProcAttr{Cloneflags: flags, Setsid: true}
	if c.Sandbox.PrivateUsers {
		sys.Cloneflags |= unix.CLONE_NEWUSER
		sys.UidMappings, sys.GidMappings = ids.UidMappings(), ids.GidMappings()
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
	proc, err := opts.Reaper.Start([]string{exe, "child-init"}, &syscall.ProcAttr{
		Dir:   "/",
		Env:   childInitEnv,
		Files: []uintptr{null.Fd(), logW.Fd(), logW.Fd(), childLink.File().Fd(), uintptr(base)},
		Sys:   sys,
	})
	if cg != nil {
		cg.closeFD()
	}
	if err != nil {
		return fail(err)
	}
	unix.Close(base)
	go u.copyLog(logR)

	body, err := json.Marshal(ChildSpec{Container: *c, Cgroup: cg != nil})
	if err == nil {
		err = link.Send(&escalate.Message{Type: msgSpec, Body: body})
	}
	if err != nil {
		proc.Signal(unix.SIGKILL)
		<-proc.Done()
		proc.Close()
		return fail(fmt.Errorf("sending the spec: %w", err))
	}
	run := newContainerRun(link, c.Name, u.logf)
	go run.read()
	return proc, run, cg, nil
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
