package config

import (
	"math"
	"net/netip"
	pathpkg "path"
	"slices"
	"strconv"
	"strings"
)

// validate checks the values of c and of its children, recording each
// problem in v, placed in c's own file. What spans the units of the init
// that starts c (its name taken, its after) is checkLevel's; what needs
// a file system is CheckPaths'.
func (c *Container) validate(parent *problems) {
	v := parent.in(c.File, c.ix)
	p := c.at
	ctx := containerContext(c.display())
	if !ValidName(c.Name) {
		v.key([]path{p}, "%swant a name of a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters", ctx)
	}
	// Whether an after name exists is a question for the level it lives
	// in (a containers.d file may name units of other files); its form is
	// not.
	for j, a := range c.After {
		if !ValidName(a) {
			v.val([]path{p.key("after").idx(j)}, "%safter[%d] = %s: want the name of a service or container: a-z, 0-9 and '-', at most 32 characters", ctx, j, strconv.Quote(a))
		}
	}
	switch c.Kind {
	case KindUser, KindDaemon:
	case "":
		v.key([]path{p.key("kind"), p}, `%skind is missing: want kind = "user" (a person's machine) or kind = "daemon" (one service)`, ctx)
	default:
		v.val([]path{p.key("kind")}, `%skind = %s: want "user" or "daemon"`, ctx, strconv.Quote(string(c.Kind)))
	}

	switch r := c.Rootfs; {
	case r == RootfsHost:
	case r == "/":
		v.val([]path{p.key("rootfs"), p}, `%srootfs = "/": want "host" for the parent's root, or another directory`, ctx)
	case !strings.HasPrefix(r, "/") || hasNUL(r):
		v.val([]path{p.key("rootfs"), p}, `%srootfs = %s: want "host" or an absolute path to a directory`, ctx, strconv.Quote(r))
	default:
		if why := pathProblem(r); why != "" {
			v.val([]path{p.key("rootfs"), p}, "%srootfs = %s: %s", ctx, strconv.Quote(r), why)
		}
	}
	c.validateBinds(v, ctx)

	size := func(key string, n int64) {
		if n < 0 {
			v.val([]path{p.key(key), p}, "%s%s = %d: want a size of 0 (no limit) or more", ctx, key, n)
		}
	}
	size("memory", c.Memory)
	size("memory_high", c.MemoryHigh)
	if c.Memory > 0 && c.MemoryHigh > c.Memory {
		v.val([]path{p.key("memory_high"), p}, "%smemory_high = %s is above memory = %s: the hard limit would be hit first; lower memory_high or raise memory",
			ctx, strconv.Quote(formatSize(c.MemoryHigh)), strconv.Quote(formatSize(c.Memory)))
	}
	if c.Pids < 0 || c.Pids > MaxPids {
		v.val([]path{p.key("pids"), p}, "%spids = %d: want a whole number from 1 to %d, or 0 for no limit", ctx, c.Pids, MaxPids)
	}
	if c.CPU != 0 && !(c.CPU >= MinCPU && c.CPU <= MaxCPU) {
		v.val([]path{p.key("cpu"), p}, "%scpu = %s: want a number of CPUs from %v to %v, like 0.5 or 2, or 0 for no limit", ctx, formatCPU(c.CPU), MinCPU, MaxCPU)
	}
	validateRestart(v, p, ctx, c.Restart)
	switch {
	case validHostname(c.Hostname):
	case c.Hostname == c.Name:
		// The default, or written the same: the name's problem, unless
		// only a host name may not end in '-'.
		if ValidName(c.Name) {
			v.val([]path{p.key("hostname"), p}, "%sits name is no host name (a host name does not end with '-'); set hostname", ctx)
		}
	default:
		v.val([]path{p.key("hostname"), p}, "%shostname = %s: want letters, digits, '-' and '.', at most 64 characters, no part starting or ending with '-'", ctx, strconv.Quote(c.Hostname))
	}
	c.validateNetwork(v, ctx)

	switch c.Kind {
	case KindDaemon:
		validateProcess(v, p, ctx, c.Exec, c.Env, c.Dir)
		if c.User != "" {
			v.key([]path{p.key("user"), p}, `%suser: only a user container has a user; leave it out, or set kind = "user"`, ctx)
		}
		if len(c.Services) > 0 {
			v.key([]path{p.key("service"), p}, `%sservice: a daemon container runs only its exec; give these services a container of their own, or set kind = "user"`, ctx)
		}
		if len(c.Containers) > 0 {
			v.key([]path{p.key("container"), p}, `%scontainer: a daemon container has no containers of its own; set kind = "user"`, ctx)
		}
	case KindUser:
		for _, k := range []struct {
			key string
			set bool
		}{{"exec", c.Exec != nil}, {"env", c.Env != nil}, {"dir", c.Dir != ""}} {
			if k.set {
				v.key([]path{p.key(k.key), p}, `%s%s: only a daemon container has %s; give a user container services instead, or set kind = "daemon"`, ctx, k.key, k.key)
			}
		}
		if !ValidName(c.User) && (c.User != c.Name || ValidName(c.Name)) {
			v.val([]path{p.key("user"), p}, "%suser = %s: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters", ctx, strconv.Quote(c.User))
		}
		if !c.Sandbox.Nesting && len(c.Containers) > 0 {
			v.val([]path{p.key("nesting"), p}, "%snesting = false: its containers need nesting = true", ctx)
		}
	}
	c.validateEscalate(v, ctx)
	validateStopTimeout(v, p, ctx, c.StopTimeout)
	if c.StartLimit < 1 || c.StartLimit > MaxStartLimit {
		v.val([]path{p.key("start_limit"), p}, "%sstart_limit = %d: want a whole number from 1 to %d", ctx, c.StartLimit, MaxStartLimit)
	}
	if !slices.Contains(sandboxLevels, c.Sandbox.Level) {
		v.val([]path{p.key("level"), p}, "%slevel = %d: unknown sandbox level; want one of the known levels: %s", ctx, c.Sandbox.Level, levelList())
	}

	id := c.display()
	validateServices(v, id, c.Services, p.key("service"))
	for i := range c.Containers {
		c.Containers[i].validate(v)
	}
	checkNetworkLevel(v, c, c.Containers, netip.Prefix{})
	checkLevel(v, levelMembers(v, id, c.Services, c.Containers, p), func(name string) string {
		if name == ConsoleUnit {
			return "reserved for the console shell of the init inside " + strconv.Quote(id) + "; pick another name"
		}
		return ""
	})
}

// NestPrivate are an init's own directories: its config, its children's
// state (id pool, overlay layers, homes), its logs and its sockets.
var NestPrivate = []string{"/etc/nest", "/var/lib/nest", "/var/log/nest", "/run/nest"}

// nestPrivate returns the directory of NestPrivate that a bind of source
// would show (source is it, inside it, or above it), or "".
func nestPrivate(source string) string {
	for _, d := range NestPrivate {
		if source == d || strings.HasPrefix(source, d+"/") || source == "/" || strings.HasPrefix(d, source+"/") {
			return d
		}
	}
	return ""
}

func (c *Container) validateBinds(v *problems, ctx string) {
	targets := map[string]int{}
	for i, b := range c.Binds {
		bp := c.at.key("bind").idx(i)
		srcOK := false
		switch {
		case b.Source == "":
			v.val([]path{bp.key("source"), bp, c.at.key("bind")}, `%sbind[%d]: source is missing: want an absolute path, like "/srv/data"`, ctx, i)
		default:
			if why := pathProblem(b.Source); why != "" {
				v.val([]path{bp.key("source")}, "%sbind[%d].source = %s: %s", ctx, i, strconv.Quote(b.Source), why)
			} else if private := nestPrivate(b.Source); private != "" {
				v.val([]path{bp.key("source")}, "%sbind[%d].source = %s: shows the init's own %s (its config, state or logs), which no container may see; bind a directory beside it", ctx, i, strconv.Quote(b.Source), private)
			} else {
				srcOK = true
			}
		}
		if b.Target == b.Source && !srcOK {
			continue // the target is the source: reported once
		}
		tp := []path{bp.key("target"), bp.key("source"), bp}
		t := b.Target
		switch {
		case slices.Contains(strings.Split(t, "/"), ".."):
			v.val(tp, `%sbind[%d].target = %s: outside the container's root; want an absolute path without "..", like "/srv/data"`, ctx, i, strconv.Quote(t))
			continue
		case t == "/":
			v.val(tp, `%sbind[%d].target = "/": want a directory below /; to give the container another root, set rootfs`, ctx, i)
			continue
		}
		if why := pathProblem(t); why != "" {
			v.val(tp, "%sbind[%d].target = %s: %s", ctx, i, strconv.Quote(t), why)
			continue
		}
		if j, dup := targets[t]; dup {
			v.val(tp, "%sbind[%d].target = %s: already the target of bind[%d]", ctx, i, strconv.Quote(t), j)
			continue
		}
		targets[t] = i
	}
}

// pathProblem says what is wrong with p as an absolute, clean path; ""
// when nothing is.
func pathProblem(p string) string {
	switch {
	case !strings.HasPrefix(p, "/") || hasNUL(p):
		return "want an absolute path"
	case pathpkg.Clean(p) != p:
		return "want a clean path: " + strconv.Quote(pathpkg.Clean(p))
	}
	return ""
}

// formatCPU writes a number of CPUs for a message.
func formatCPU(f float64) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}
