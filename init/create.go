package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"sync"

	"nest/config"
	"nest/rootfs"
	"nest/sandbox"
	"nest/supervise"
)

// containerAdmin creates, removes and resets the child containers of one
// init at run time (`nest create`, `nest rm`, `nest reset`; the
// supervise.Admin of its control socket). A created container is a file
// in the containers.d beside the init's config file, so it outlives a
// reboot, and a unit added to the running supervisor. Changes of the
// init's units (these and reloads) take one lock, so that a reload that
// read the files before a create cannot undo it.
type containerAdmin struct {
	cfgPath string // the init's config file; containers.d is beside it
	// load reads the init's config as it is on disk now (loadConfig of
	// cfgPath, as the init reads it).
	load      func() (*config.Config, error)
	sup       *supervise.Supervisor
	ids       *sandbox.Pool // where the containers' id ranges are leased; nil: none (ids one to one)
	stateRoot string        // the containers' state ("": rootfs.StateRoot)
	logf      func(format string, args ...any)

	mu sync.Mutex
}

// lock takes the lock of the init's units and returns its unlock.
func (a *containerAdmin) lock() func() {
	a.mu.Lock()
	return a.mu.Unlock
}

// childAdmin is the containerAdmin of a child container's init: its own
// containers.d (/etc/nest/containers.d inside the container), whose
// children map its ids one to one; none where the container may not nest.
func childAdmin(c config.Container, sup *supervise.Supervisor, logf func(string, ...any)) supervise.Admin {
	if !c.Sandbox.Nesting {
		return nil
	}
	return &containerAdmin{cfgPath: config.DefaultPath, load: loadOwnConfig, sup: sup, logf: logf}
}

func (a *containerAdmin) dir() string { return config.DirFor(a.cfgPath) }

func checkName(name string) error {
	if !config.ValidName(name) {
		return supervise.Errorf(400, "container name %q: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters", name)
	}
	return nil
}

// newContainer turns a create request into what the file will say; what
// is wrong with it is an error of status 400.
func newContainer(req supervise.CreateRequest) (config.NewContainer, error) {
	n := config.NewContainer{Kind: req.Kind, Rootfs: req.Rootfs, Network: req.Network, Memory: req.Memory, Exec: req.Exec}
	if req.Kind == "" {
		return n, supervise.Errorf(400, `the kind is missing: want "user" (a person's machine) or "daemon" (one service)`)
	}
	if req.Pids != "" {
		p, err := strconv.ParseInt(req.Pids, 10, 64)
		if err != nil {
			return n, supervise.Errorf(400, "pids %q: want a whole number (0: no limit)", req.Pids)
		}
		n.Pids = p
	}
	for _, b := range req.Binds {
		var bf bindFlags
		if err := bf.Set(b); err != nil {
			return n, supervise.Errorf(400, "bind: %v", err)
		}
		n.Binds = append(n.Binds, config.Bind{Source: bf[0].Source, Target: bf[0].Target, Writable: bf[0].Writable})
	}
	return n, nil
}

// Create validates the container as its file will be read (config.ParseNew,
// then CheckPaths in this init's view), checks that no unit or config entry
// of this init has its name, writes containers.d/NAME.toml (atomically, never
// over an existing file), adds its unit and, if asked, starts it.
func (a *containerAdmin) Create(ctx context.Context, name string, req supervise.CreateRequest) (supervise.Status, error) {
	var st supervise.Status
	if err := checkName(name); err != nil {
		return st, err
	}
	n, err := newContainer(req)
	if err != nil {
		return st, err
	}
	dir := a.dir()
	c, data, err := config.ParseNew(name, config.FileFor(dir, name), n)
	if err == nil {
		err = c.CheckPaths()
	}
	if err != nil {
		return st, supervise.Errorf(400, "%v", config.Unplaced(err))
	}

	if err := a.add(c, data); err != nil {
		return st, err
	}
	if req.Start {
		return a.sup.Act(ctx, "start", name, 0)
	}
	return a.sup.Act(ctx, "status", name, 0)
}

// add writes the file of the new container c and adds its unit, stopped,
// if nothing of this init has its name.
func (a *containerAdmin) add(c *config.Container, data []byte) error {
	defer a.lock()()
	name, dir := c.Name, a.dir()
	cfg, err := a.load()
	if err != nil {
		return supervise.Errorf(409, "the config does not load; fix it first:\n%v", err)
	}
	if x, ok := cfg.Container(name); ok {
		return supervise.Errorf(409, "a container named %s exists already (%s)", name, x.Place())
	}
	if _, ok := cfg.Service(name); ok {
		return supervise.Errorf(409, "%s is the name of a service of this init (%s); pick another", name, cfg.Source)
	}
	if _, ok := a.sup.Unit(name); ok {
		return supervise.Errorf(409, "a unit named %s runs here; pick another name", name)
	}
	if err := cfg.Add(*c); err != nil {
		return supervise.Errorf(409, "%v", config.Unplaced(err))
	}
	if err := config.WriteFile(dir, name+".toml", data); errors.Is(err, fs.ErrExist) {
		return supervise.Errorf(409, "%s exists already", config.FileFor(dir, name))
	} else if err != nil {
		return fmt.Errorf("writing %s: %w", config.FileFor(dir, name), err)
	}
	if err := a.sup.Add(containerUnit(c), false); err != nil {
		return fmt.Errorf("%s is written, but: %w", config.FileFor(dir, name), err)
	}
	a.logf("%s: created (%s)", name, config.FileFor(dir, name))
	return nil
}

// isUp reports whether a unit is anything but down.
func isUp(st supervise.Status) bool {
	switch st.State {
	case supervise.StateStopped, supervise.StateExited, supervise.StateFailed:
		return false
	}
	return true
}

// Remove removes a container of containers.d: its file (durably), its
// unit (stopping it, if force), its id range and its state, the home
// only with purge. An inline container is the config file's to remove.
func (a *containerAdmin) Remove(ctx context.Context, name string, force, purge bool) error {
	if err := checkName(name); err != nil {
		return err
	}
	defer a.lock()()
	dir := a.dir()
	file := config.FileFor(dir, name)
	if _, err := os.Lstat(file); errors.Is(err, fs.ErrNotExist) {
		if cfg, err := a.load(); err == nil {
			if c, ok := cfg.Container(name); ok {
				return supervise.Errorf(409, "container %s is defined in %s, not in %s: remove it there, then nest reload", name, c.Place(), dir)
			}
		}
		if u, ok := a.sup.Unit(name); ok && u.Status().Kind != "service" {
			return supervise.Errorf(409, "container %s is declared by the config of this container's parent, not in %s", name, dir)
		}
		return supervise.Errorf(404, "no container %s in %s", name, dir)
	} else if err != nil {
		return err
	}
	u, ok := a.sup.Unit(name)
	if ok && u.Status().Kind == "service" {
		ok = false // a service of nest.toml that the file would clash with: not the file's
	}
	if ok && isUp(u.Status()) && !force {
		return supervise.Errorf(409, "container %s is %s: stop it first (nest stop %s), or nest rm --force %s", name, u.Status().State, name, name)
	}
	if err := config.RemoveFile(dir, name+".toml"); err != nil {
		return fmt.Errorf("removing %s: %w", file, err)
	}
	// Its address, its subnet and its descendants' (through the parents
	// up to the root) go with it.
	if ok {
		a.sup.Remove(name)
	} else {
		a.sup.ReleaseNetwork(name)
	}
	var errs []error
	if a.ids != nil {
		if err := a.ids.Release(name); err != nil {
			errs = append(errs, err)
		}
	}
	if err := rootfs.StateOf(a.stateRoot, name).Remove(purge); err != nil {
		errs = append(errs, err)
	}
	a.logf("%s: removed (%s)", name, file)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%s is removed, but: %w", name, err)
	}
	return nil
}

// Reset drops what a user container changed in its view of the system
// (the overlay's upper layer) and keeps its home. A running container
// needs force: it is stopped, reset and started again.
func (a *containerAdmin) Reset(ctx context.Context, name string, force bool) (supervise.Status, error) {
	if err := checkName(name); err != nil {
		return supervise.Status{}, err
	}
	wasUp, err := a.reset(ctx, name, force)
	if err != nil || !wasUp {
		st, _ := a.sup.Act(ctx, "status", name, 0)
		return st, err
	}
	return a.sup.Act(ctx, "start", name, 0)
}

// reset stops the container if it runs (and force says so) and drops its
// changes; it reports whether the container was up.
func (a *containerAdmin) reset(ctx context.Context, name string, force bool) (wasUp bool, err error) {
	defer a.lock()()
	u, ok := a.sup.Unit(name)
	if !ok {
		return false, supervise.Errorf(404, "no container named %q", name)
	}
	st := u.Status()
	switch st.Kind {
	case string(config.KindUser):
	case string(config.KindDaemon):
		return false, supervise.Errorf(409, "%s is a daemon container: its root is read-only and keeps no changes to reset", name)
	default:
		return false, supervise.Errorf(409, "%s is a service: nest reset resets a user container", name)
	}
	wasUp = isUp(st)
	if wasUp && !force {
		return false, supervise.Errorf(409, "container %s is %s: stop it first, or nest reset --force %s (stops it, resets it, starts it again)", name, st.State, name)
	}
	if wasUp {
		select {
		case <-a.sup.Stop(u):
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	if err := rootfs.StateOf(a.stateRoot, name).Reset(); err != nil {
		return false, err
	}
	a.logf("%s: reset (its changes dropped, its home kept)", name)
	return wasUp, nil
}
