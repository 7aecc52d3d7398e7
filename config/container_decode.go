package config

import (
	"cmp"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
)

// sandboxKeys are the boolean sandbox keys of a container, and where each
// goes.
var sandboxKeys = map[string]func(*Sandbox) *bool{
	"private_users":     func(s *Sandbox) *bool { return &s.PrivateUsers },
	"private_tmp":       func(s *Sandbox) *bool { return &s.PrivateTmp },
	"private_devices":   func(s *Sandbox) *bool { return &s.PrivateDevices },
	"protect_proc":      func(s *Sandbox) *bool { return &s.ProtectProc },
	"protect_sys":       func(s *Sandbox) *bool { return &s.ProtectSys },
	"no_new_privileges": func(s *Sandbox) *bool { return &s.NoNewPrivileges },
	"nesting":           func(s *Sandbox) *bool { return &s.Nesting },
}

// containers reads the [container.NAME] tables of the container parent
// ("" for the init's own) from the value of its "container" key at p, in
// the order of the file. header is how parent's table is written
// ("container.alice"; "" for the top of a file).
func (d *decoder) containers(parent string, p path, header string, v any) []Container {
	ctx := parentContext(parent)
	own := subHeader(header, "container")
	t, ok := v.(map[string]any)
	if !ok {
		d.val([]path{p}, "%scontainer = %s: want a table for each container, written [%s.NAME]", ctx, render(v), own)
		return nil
	}
	type named struct {
		name      string
		line, col int
	}
	var names []named
	for name := range t {
		line, col := d.ix.pos(true, p.key(name))
		names = append(names, named{name, line, col})
	}
	slices.SortFunc(names, func(a, b named) int {
		return cmp.Or(cmp.Compare(a.line, b.line), cmp.Compare(a.col, b.col), strings.Compare(a.name, b.name))
	})
	var out []Container
	for _, n := range names {
		h := own + "." + displayKey(n.name)
		e, ok := t[n.name].(map[string]any)
		if !ok {
			d.val([]path{p.key(n.name)}, "%scontainer.%s = %s: want a table, written [%s]", ctx, displayKey(n.name), render(t[n.name]), h)
			continue
		}
		out = append(out, d.container(p.key(n.name), h, parent, n.name, e))
	}
	return out
}

// subHeader is how the table key of the table header is written.
func subHeader(header, key string) string {
	if header == "" {
		return key
	}
	return header + "." + key
}

// container reads the table t at p of the container name, a child of
// parent ("" for the init's own). header is how t is written
// ("container.alice"; "" for a containers.d file).
func (d *decoder) container(p path, header, parent, name string, t map[string]any) Container {
	id := joinID(parent, name)
	ctx := containerContext(id)
	c := Container{
		Name:        name,
		Rootfs:      RootfsHost,
		Restart:     RestartOnFailure,
		Network:     NetworkNone,
		StopTimeout: DefaultStopTimeout,
		StartLimit:  DefaultStartLimit,
		File:        d.file,
		ix:          d.ix,
		at:          p,
		id:          id,
	}
	level := 1 // absent means 1, whatever is newest
	sandbox := map[string]bool{}
	hostname, user, nat := false, false, false
	for _, k := range slices.Sorted(maps.Keys(t)) {
		v, kp := t[k], p.key(k)
		switch k {
		case "kind":
			if s, ok := d.str(ctx, kp, k, v); ok {
				c.Kind = Kind(s)
			}
		case "rootfs":
			if s, ok := d.str(ctx, kp, k, v); ok {
				c.Rootfs = s
			}
		case "bind":
			c.Binds = d.binds(ctx, kp, v)
		case "memory":
			c.Memory, _ = d.size(ctx, kp, k, v)
		case "memory_high":
			c.MemoryHigh, _ = d.size(ctx, kp, k, v)
		case "pids":
			if n, ok := v.(int64); ok {
				c.Pids = n
			} else {
				d.val([]path{kp}, "%s%s = %s: want a whole number, like 4096", ctx, k, render(v))
			}
		case "cpu":
			switch n := v.(type) {
			case int64:
				c.CPU = float64(n)
			case float64:
				c.CPU = n
			default:
				d.val([]path{kp}, "%s%s = %s: want a number of CPUs, like 0.5 or 2", ctx, k, render(v))
			}
		case "restart":
			if r, ok := d.str(ctx, kp, k, v); ok {
				c.Restart = Restart(r)
			}
		case "after":
			c.After, _ = d.strs(ctx, kp, k, v)
		case "hostname":
			c.Hostname, hostname = d.str(ctx, kp, k, v)
		case "network":
			if s, ok := d.str(ctx, kp, k, v); ok {
				c.Network = s
			}
		case "address", "nat", "publish", "dns":
			d.networkKey(ctx, kp, k, v, &c, &nat)
		case "exec":
			c.Exec, _ = d.strs(ctx, kp, k, v)
		case "env":
			c.Env = d.env(ctx, kp, k, v)
		case "dir":
			c.Dir, _ = d.str(ctx, kp, k, v)
		case "user":
			c.User, user = d.str(ctx, kp, k, v)
		case "stop_timeout":
			if dur, ok := d.duration(ctx, kp, k, v); ok {
				c.StopTimeout = dur
			}
		case "start_limit":
			if n, ok := d.startLimit(ctx, kp, k, v); ok {
				c.StartLimit = n
			}
		case "private_users", "private_tmp", "private_devices", "protect_proc", "protect_sys", "no_new_privileges", "nesting":
			if b, ok := d.bool(ctx, kp, k, v); ok {
				sandbox[k] = b
			}
		case "level":
			if n, ok := v.(int64); ok && n >= math.MinInt32 && n <= math.MaxInt32 {
				level = int(n)
			} else {
				d.val([]path{kp}, "%s%s = %s: want a sandbox level, one of %s", ctx, k, render(v), levelList())
			}
		case "escalate", "keys", "keys_file", "as", "commands", "password_hash":
			d.escalateKey(ctx, kp, k, v, &c)
		case "service":
			c.Services = d.services(id, kp, subHeader(header, "service"), v)
		case "container":
			c.Containers = d.containers(id, kp, header, v)
		default:
			d.unknown(ctx, kp, k, containerKeys)
		}
	}
	if !hostname {
		c.Hostname = name
	}
	if !nat {
		c.NAT = c.Network == NetworkVeth
	}
	if !user && c.Kind == KindUser {
		c.User = name
	}
	sb, ok := DefaultSandbox(c.Kind, level)
	if !ok {
		sb, _ = DefaultSandbox(c.Kind, SandboxLevel)
		sb.Level = level // Validate reports it
	}
	for k, b := range sandbox {
		*sandboxKeys[k](&sb) = b
	}
	c.Sandbox = sb
	return c
}

// binds reads the array of bind tables at p.
func (d *decoder) binds(ctx string, p path, v any) []Bind {
	a, ok := v.([]any)
	if !ok {
		d.val([]path{p}, `%sbind = %s: want an array of tables, like [{ source = "/srv/data" }]`, ctx, render(v))
		return nil
	}
	out := make([]Bind, 0, len(a))
	for i, e := range a {
		bp := p.idx(i)
		t, ok := e.(map[string]any)
		if !ok {
			d.val([]path{bp}, `%sbind[%d] = %s: want a table, like { source = "/srv/data", writable = true }`, ctx, i, render(e))
			continue
		}
		var b Bind
		target := false
		for _, k := range slices.Sorted(maps.Keys(t)) {
			v, kp := t[k], bp.key(k)
			name := fmt.Sprintf("bind[%d].%s", i, k)
			switch k {
			case "source":
				b.Source, _ = d.str(ctx, kp, name, v)
			case "target":
				b.Target, target = d.str(ctx, kp, name, v)
			case "writable":
				b.Writable, _ = d.bool(ctx, kp, name, v)
			default:
				d.unknown(fmt.Sprintf("%sbind[%d]: ", ctx, i), kp, k, bindKeys)
			}
		}
		if !target {
			b.Target = b.Source
		}
		out = append(out, b)
	}
	return out
}

// size returns v if it is a size string (parseSize).
func (d *decoder) size(ctx string, p path, name string, v any) (int64, bool) {
	s, ok := v.(string)
	if !ok {
		d.val([]path{p}, `%s%s = %s: want a size as a string, like "512M" or "2G" (K, M, G, T: binary units; no unit: bytes)`, ctx, name, render(v))
		return 0, false
	}
	n, err := parseSize(s)
	if err != nil {
		d.val([]path{p}, "%s%s = %s: %v", ctx, name, render(v), err)
		return 0, false
	}
	return n, true
}

var sizeUnits = []struct {
	suffix byte
	shift  uint
}{{'K', 10}, {'M', 20}, {'G', 30}, {'T', 40}}

// parseSize parses a size in bytes with an optional binary unit: "100",
// "1024K", "512M", "2G", "1T" (K = 1024, M = 1024K, ...; lower case too),
// as the sandbox package does.
func parseSize(s string) (int64, error) {
	digits, shift := s, uint(0)
	if n := len(s); n > 0 {
		for _, u := range sizeUnits {
			if s[n-1] == u.suffix || s[n-1] == u.suffix+'a'-'A' {
				digits, shift = s[:n-1], u.shift
			}
		}
	}
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, fmt.Errorf(`want a whole number of bytes with an optional unit K, M, G or T (binary: 1K = 1024), like "512M" or "2G"`)
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("too large; at most %s", formatSize(math.MaxInt64>>40<<40))
	}
	return n << shift, nil
}

// formatSize is the inverse of parseSize, with the largest exact unit.
func formatSize(n int64) string {
	for i := len(sizeUnits) - 1; i >= 0; i-- {
		u := sizeUnits[i]
		if n > 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + string(u.suffix)
		}
	}
	return strconv.FormatInt(n, 10)
}

// levelList lists the known sandbox levels for a message.
func levelList() string {
	s := make([]string, len(sandboxLevels))
	for i, l := range sandboxLevels {
		s[i] = strconv.Itoa(l)
	}
	return strings.Join(s, ", ")
}
