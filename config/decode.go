package config

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The keys each table allows, in the order the docs list them.
var (
	topKeys       = []string{"hostname", "modules", "console", "subnet", "mount", "service", "container"}
	mountKeys     = []string{"source", "target", "type", "options"}
	serviceKeys   = []string{"name", "exec", "env", "dir", "restart", "after", "notify", "stop_timeout", "start_limit"}
	containerKeys = []string{"kind", "rootfs", "bind", "memory", "memory_high", "pids", "cpu", "restart", "after",
		"hostname", "network", "address", "nat", "publish", "dns", "exec", "env", "dir", "user", "stop_timeout", "start_limit",
		"private_users", "private_tmp", "private_devices", "protect_proc", "protect_sys", "no_new_privileges", "nesting", "level",
		"escalate", "keys", "keys_file", "as", "commands", "password_hash",
		"service", "container"}
	bindKeys = []string{"source", "target", "writable"}
)

// decoder reads the tree that the TOML decoder made into a Config,
// reporting unknown keys and values of the wrong type. It applies
// defaults; checking values is Validate's job.
type decoder struct {
	problems
}

func (d *decoder) config(tree map[string]any) *Config {
	c := &Config{Source: d.file, Console: ConsoleShell, ix: d.ix}
	for _, k := range slices.Sorted(maps.Keys(tree)) {
		v, p := tree[k], path("").key(k)
		switch k {
		case "hostname":
			if s, ok := d.str("", p, k, v); ok {
				if s == "" {
					d.val([]path{p}, `hostname = "": want a host name; leave hostname out to keep the current one`)
				}
				c.Hostname = s
			}
		case "modules":
			c.Modules, _ = d.strs("", p, k, v)
		case "console":
			if s, ok := d.str("", p, k, v); ok {
				c.Console = s
			}
		case "subnet":
			c.Subnet = d.subnet(p, v)
		case "mount":
			for i, t := range d.tables("", p, k, k, v) {
				if t != nil {
					c.Mounts = append(c.Mounts, d.mount(p.idx(i), i, t))
				}
			}
		case "service":
			c.Services = d.services("", p, "service", v)
		case "container":
			c.Containers = d.containers("", p, "", v)
		default:
			d.unknown("", p, k, topKeys)
		}
	}
	return c
}

func (d *decoder) mount(p path, i int, t map[string]any) Mount {
	target, _ := t["target"].(string)
	ctx := mountContext(i, target)
	var m Mount
	for _, k := range slices.Sorted(maps.Keys(t)) {
		v, kp := t[k], p.key(k)
		switch k {
		case "source":
			m.Source, _ = d.str(ctx, kp, k, v)
		case "target":
			m.Target, _ = d.str(ctx, kp, k, v)
		case "type":
			m.Type, _ = d.str(ctx, kp, k, v)
		case "options":
			m.Options, _ = d.strs(ctx, kp, k, v)
		default:
			d.unknown(ctx, kp, k, mountKeys)
		}
	}
	return m
}

// services reads the array of tables at p; header is how its tables are
// written ("service", "container.alice.service").
func (d *decoder) services(parent string, p path, header string, v any) []Service {
	var out []Service
	for i, t := range d.tables(parentContext(parent), p, "service", header, v) {
		if t != nil {
			out = append(out, d.service(p.idx(i), parent, i, t))
		}
	}
	return out
}

// service reads the i-th service of the container parent ("" for the
// init's own).
func (d *decoder) service(p path, parent string, i int, t map[string]any) Service {
	name, _ := t["name"].(string)
	ctx := serviceContext(parent, i, name)
	s := Service{Restart: RestartOnFailure, StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit}
	for _, k := range slices.Sorted(maps.Keys(t)) {
		v, kp := t[k], p.key(k)
		switch k {
		case "name":
			s.Name, _ = d.str(ctx, kp, k, v)
		case "exec":
			s.Exec, _ = d.strs(ctx, kp, k, v)
		case "env":
			s.Env = d.env(ctx, kp, k, v)
		case "dir":
			s.Dir, _ = d.str(ctx, kp, k, v)
		case "restart":
			if r, ok := d.str(ctx, kp, k, v); ok {
				s.Restart = Restart(r)
			}
		case "after":
			s.After, _ = d.strs(ctx, kp, k, v)
		case "notify":
			if b, ok := d.bool(ctx, kp, k, v); ok {
				s.Notify = b
			}
		case "stop_timeout":
			if dur, ok := d.duration(ctx, kp, k, v); ok {
				s.StopTimeout = dur
			}
		case "start_limit":
			if n, ok := d.startLimit(ctx, kp, k, v); ok {
				s.StartLimit = n
			}
		default:
			d.unknown(ctx, kp, k, serviceKeys)
		}
	}
	return s
}

// bool returns v if it is a boolean.
func (d *decoder) bool(ctx string, p path, name string, v any) (bool, bool) {
	b, ok := v.(bool)
	if !ok {
		d.val([]path{p}, "%s%s = %s: want true or false", ctx, name, render(v))
	}
	return b, ok
}

// duration returns v if it is a string that time.ParseDuration takes.
func (d *decoder) duration(ctx string, p path, name string, v any) (time.Duration, bool) {
	str, ok := v.(string)
	if !ok {
		d.val([]path{p}, `%s%s = %s: want a duration string like "10s"`, ctx, name, render(v))
		return 0, false
	}
	dur, err := time.ParseDuration(str)
	if err != nil {
		d.val([]path{p}, `%s%s = %s: want a duration like "10s", "1m30s" or "500ms"`, ctx, name, render(v))
		return 0, false
	}
	return dur, true
}

// startLimit returns v if it is a start_limit.
func (d *decoder) startLimit(ctx string, p path, name string, v any) (int, bool) {
	n, ok := v.(int64)
	if !ok || n < 1 || n > MaxStartLimit {
		d.val([]path{p}, "%s%s = %s: want a whole number from 1 to %d", ctx, name, render(v), MaxStartLimit)
		return 0, false
	}
	return int(n), true
}

// unknown reports a key that the table does not allow.
func (d *decoder) unknown(ctx string, p path, k string, allowed []string) {
	d.key([]path{p}, "%sunknown key %s: want one of %s", ctx, strconv.Quote(k), strings.Join(allowed, ", "))
}

// str returns v if it is a string.
func (d *decoder) str(ctx string, p path, name string, v any) (string, bool) {
	s, ok := v.(string)
	if !ok {
		d.val([]path{p}, "%s%s = %s: want a string", ctx, name, render(v))
	}
	return s, ok
}

// strs returns v if it is an array of strings.
func (d *decoder) strs(ctx string, p path, name string, v any) ([]string, bool) {
	a, ok := v.([]any)
	if !ok {
		d.val([]path{p}, "%s%s = %s: want an array of strings", ctx, name, render(v))
		return nil, false
	}
	out := make([]string, 0, len(a))
	for i, e := range a {
		s, ok := d.str(ctx, p.idx(i), fmt.Sprintf("%s[%d]", name, i), e)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// env returns v if it is a table of strings.
func (d *decoder) env(ctx string, p path, name string, v any) map[string]string {
	t, ok := v.(map[string]any)
	if !ok {
		d.val([]path{p}, `%s%s = %s: want a table of strings, like { PORT = "80" }`, ctx, name, render(v))
		return nil
	}
	out := make(map[string]string, len(t))
	for _, k := range slices.Sorted(maps.Keys(t)) {
		if s, ok := d.str(ctx, p.key(k), name+"."+displayKey(k), t[k]); ok {
			out[k] = s
		}
	}
	return out
}

// tables returns the elements of an array of tables; an element that is
// not a table is reported and nil. header is how the tables are written:
// [[header]].
func (d *decoder) tables(ctx string, p path, name, header string, v any) []map[string]any {
	a, ok := v.([]any)
	if !ok {
		d.val([]path{p}, "%s%s = %s: want an array of tables, written [[%s]]", ctx, name, render(v), header)
		return nil
	}
	out := make([]map[string]any, len(a))
	for i, e := range a {
		if t, ok := e.(map[string]any); ok {
			out[i] = t
		} else {
			d.val([]path{p.idx(i)}, "%s%s[%d] = %s: want a table", ctx, name, i, render(e))
		}
	}
	return out
}

// serviceContext starts a message about the i-th service of the container
// parent ("" for the init's own): `service "web": `, `service "alice/sshd": `.
func serviceContext(parent string, i int, name string) string {
	if name != "" {
		return "service " + strconv.Quote(joinID(parent, name)) + ": "
	}
	return fmt.Sprintf("%sservice[%d]: ", parentContext(parent), i)
}

// containerContext starts a message about a container: `container "alice/dev": `.
func containerContext(id string) string {
	return "container " + strconv.Quote(id) + ": "
}

// parentContext starts a message about something in the container id; ""
// for the init's own.
func parentContext(id string) string {
	if id == "" {
		return ""
	}
	return containerContext(id)
}

// joinID names a unit of the container parent in messages.
func joinID(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "/" + name
}

// mountContext starts a message about the i-th mount.
func mountContext(i int, target string) string {
	if target != "" {
		return "mount " + strconv.Quote(target) + ": "
	}
	return fmt.Sprintf("mount[%d]: ", i)
}

// displayKey writes a key as TOML does: bare when it can be.
func displayKey(k string) string {
	if k == "" {
		return `""`
	}
	for _, r := range k {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return strconv.Quote(k)
		}
	}
	return k
}

// render writes a decoded value for a message, TOML-like and short.
func render(v any) string {
	s := renderFull(v)
	if r := []rune(s); len(r) > 40 {
		s = string(r[:39]) + "…"
	}
	return s
}

func renderFull(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case float64:
		switch {
		case math.IsInf(v, 1):
			return "inf"
		case math.IsInf(v, -1):
			return "-inf"
		case math.IsNaN(v):
			return "nan"
		}
		s := strconv.FormatFloat(v, 'g', -1, 64)
		if !strings.ContainsAny(s, ".eE") {
			s += ".0"
		}
		return s
	case bool:
		return strconv.FormatBool(v)
	case time.Time:
		return v.Format(time.RFC3339Nano)
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = renderFull(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case map[string]any:
		if len(v) == 0 {
			return "{}"
		}
		return "{ … }"
	case fmt.Stringer: // local dates and times
		return v.String()
	}
	return fmt.Sprint(v)
}
