package config

import (
	"fmt"
	"maps"
	pathpkg "path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// validate checks the values of c and records each problem in v.
func (c *Config) validate(v *problems) {
	top := path("")
	if c.Hostname != "" && !validHostname(c.Hostname) {
		v.val([]path{top.key("hostname")}, "hostname = %s: want letters, digits, '-' and '.', at most 64 characters, no part starting or ending with '-'", strconv.Quote(c.Hostname))
	}
	modules := map[string]int{}
	for i, m := range c.Modules {
		p := top.key("modules").idx(i)
		canon := strings.ReplaceAll(m, "-", "_")
		if !validModule(m) {
			v.val([]path{p}, "modules[%d] = %s: want a kernel module name: letters, digits, '-' and '_', at most 55 characters", i, strconv.Quote(m))
		} else if j, dup := modules[canon]; dup {
			v.val([]path{p}, "modules[%d] = %s: already listed as modules[%d] ('-' and '_' are the same)", i, strconv.Quote(m), j)
		} else {
			modules[canon] = i
		}
	}
	switch c.Console {
	case ConsoleShell, ConsoleNone:
	case "login":
		v.val([]path{top.key("console")}, `console = "login": not supported yet; want "shell" or "none"`)
	default:
		v.val([]path{top.key("console")}, `console = %s: want "shell" or "none"`, strconv.Quote(c.Console))
	}
	for i, m := range c.Mounts {
		m.validate(v, top.key("mount").idx(i), i)
	}
	c.validateServices(v, top.key("service"))
}

func (m *Mount) validate(v *problems, p path, i int) {
	ctx := mountContext(i, m.Target)
	switch {
	case m.Source == "":
		v.val([]path{p.key("source"), p}, `%ssource is missing: want a device, directory or name, like "/dev/vda" or "tmpfs"`, ctx)
	case hasNUL(m.Source):
		v.val([]path{p.key("source")}, "%ssource = %s: contains a NUL byte", ctx, strconv.Quote(m.Source))
	}
	switch t := m.Target; {
	case t == "":
		v.val([]path{p.key("target"), p}, `%starget is missing: want an absolute path, like "/var"`, ctx)
	case !strings.HasPrefix(t, "/") || hasNUL(t):
		v.val([]path{p.key("target")}, "%starget = %s: want an absolute path", ctx, strconv.Quote(t))
	case pathpkg.Clean(t) != t:
		v.val([]path{p.key("target")}, "%starget = %s: want a clean path: %s", ctx, strconv.Quote(t), strconv.Quote(pathpkg.Clean(t)))
	case t == "/":
		v.val([]path{p.key("target")}, `%starget = "/": want a directory below /`, ctx)
	}
	switch {
	case m.Type == "":
		v.val([]path{p.key("type"), p}, `%stype is missing: want a filesystem type, like "ext4" or "tmpfs"`, ctx)
	case !validFSType(m.Type):
		v.val([]path{p.key("type")}, `%stype = %s: want a filesystem type (letters, digits, '.', '_' and '-'), like "ext4" or "tmpfs"`, ctx, strconv.Quote(m.Type))
	}
	for j, o := range m.Options {
		if o == "" || strings.ContainsRune(o, ',') || hasNUL(o) {
			v.val([]path{p.key("options").idx(j)}, `%soptions[%d] = %s: want one option per string, like ["ro", "noatime"]`, ctx, j, strconv.Quote(o))
		}
	}
}

func (c *Config) validateServices(v *problems, top path) {
	first := map[string]int{} // name -> index of the service that has it
	for i := range c.Services {
		s := &c.Services[i]
		p := top.idx(i)
		ctx := serviceContext(i, s.Name)
		switch {
		case s.Name == "":
			v.val([]path{p.key("name"), p}, `%sname is missing: want a name like "web": a-z, 0-9 and '-', at most 32 characters`, ctx)
		case !validName(s.Name):
			v.val([]path{p.key("name")}, "%sname = %s: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters", ctx, strconv.Quote(s.Name))
		default:
			if s.Name == ConsoleUnit && c.Console == ConsoleShell {
				v.val([]path{p.key("name")}, `%sname = %s: taken by the console shell (console = "shell"); pick another name or set console = "none"`, ctx, strconv.Quote(s.Name))
			}
			if j, dup := first[s.Name]; dup {
				where := fmt.Sprintf("service[%d]", j)
				if line, _ := v.ix.pos(false, top.idx(j).key("name")); line > 0 {
					where = fmt.Sprintf("the service at line %d", line)
				}
				v.val([]path{p.key("name")}, "%sname = %s: already used by %s", ctx, strconv.Quote(s.Name), where)
			} else {
				first[s.Name] = i
			}
		}
		s.validate(v, p, ctx)
	}
	for i := range c.Services {
		s := &c.Services[i]
		p := top.idx(i)
		ctx := serviceContext(i, s.Name)
		seen := map[string]bool{}
		for j, a := range s.After {
			_, known := first[a]
			switch {
			case a == s.Name && a != "":
				v.val([]path{p.key("after").idx(j)}, "%safter[%d] = %s: a service cannot come after itself", ctx, j, strconv.Quote(a))
			case !known:
				v.val([]path{p.key("after").idx(j)}, "%safter[%d] = %s: no service has that name; %s", ctx, j, strconv.Quote(a), otherNames(first, s.Name))
			case seen[a]:
				v.val([]path{p.key("after").idx(j)}, "%safter[%d] = %s: listed twice", ctx, j, strconv.Quote(a))
			}
			seen[a] = true
		}
	}
	c.findCycles(v, top, first)
}

func (s *Service) validate(v *problems, p path, ctx string) {
	switch {
	case len(s.Exec) == 0:
		v.val([]path{p.key("exec"), p}, `%sexec is missing or empty: want the program and its arguments, like ["/usr/sbin/httpd", "-f"]`, ctx)
	case !strings.HasPrefix(s.Exec[0], "/"):
		v.val([]path{p.key("exec").idx(0)}, "%sexec[0] = %s: want an absolute path", ctx, strconv.Quote(s.Exec[0]))
	}
	for i, a := range s.Exec {
		if hasNUL(a) {
			v.val([]path{p.key("exec").idx(i)}, "%sexec[%d] = %s: contains a NUL byte", ctx, i, strconv.Quote(a))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(s.Env)) {
		name := "env." + displayKey(k)
		if k == "" || strings.ContainsRune(k, '=') || hasNUL(k) {
			v.key([]path{p.key("env").key(k)}, "%s%s: want an environment variable name: not empty, without '=' or NUL", ctx, name)
		} else if hasNUL(s.Env[k]) {
			v.val([]path{p.key("env").key(k)}, "%s%s = %s: contains a NUL byte", ctx, name, strconv.Quote(s.Env[k]))
		}
	}
	if s.Dir != "" && (!strings.HasPrefix(s.Dir, "/") || hasNUL(s.Dir)) {
		v.val([]path{p.key("dir")}, "%sdir = %s: want an absolute path", ctx, strconv.Quote(s.Dir))
	}
	switch s.Restart {
	case RestartAlways, RestartOnFailure, RestartNo:
	default:
		v.val([]path{p.key("restart"), p}, `%srestart = %s: want "always", "on-failure" or "no"`, ctx, strconv.Quote(string(s.Restart)))
	}
	if s.StopTimeout <= 0 || s.StopTimeout > MaxStopTimeout {
		v.val([]path{p.key("stop_timeout"), p}, "%sstop_timeout = %s: want a duration above 0 and at most 1h", ctx, strconv.Quote(formatDuration(s.StopTimeout)))
	}
}

// findCycles reports each cycle of after that a depth-first walk in file
// order closes, at the after value that closes it.
func (c *Config) findCycles(v *problems, top path, first map[string]int) {
	const (
		unseen = iota
		open
		done
	)
	state := make([]int, len(c.Services))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		state[i] = open
		stack = append(stack, i)
		s := &c.Services[i]
		for j, a := range s.After {
			t, ok := first[a]
			if !ok || t == i {
				continue
			}
			switch state[t] {
			case unseen:
				visit(t)
			case open:
				k := slices.Index(stack, t)
				chain := []string{s.Name}
				for _, n := range stack[k:] {
					chain = append(chain, c.Services[n].Name)
				}
				v.val([]path{top.idx(i).key("after").idx(j)}, "%safter[%d] = %s: dependency cycle: %s", serviceContext(i, s.Name), j, strconv.Quote(a), strings.Join(chain, " after "))
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
	}
	for i, s := range c.Services {
		if first[s.Name] == i && s.Name != "" && state[i] == unseen {
			visit(i)
		}
	}
}

// otherNames lists the services other than self for a message.
func otherNames(first map[string]int, self string) string {
	var names []string
	for n := range first {
		if n != self {
			names = append(names, strconv.Quote(n))
		}
	}
	if len(names) == 0 {
		return "there is no other service"
	}
	slices.Sort(names)
	if len(names) > 8 {
		names = append(names[:8], "…")
	}
	return "want one of " + strings.Join(names, ", ")
}

// validName reports whether s matches [a-z0-9][a-z0-9-]{0,31}.
func validName(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validHostname reports whether h is an RFC 1123 host name that fits the
// kernel's 64 bytes.
func validHostname(h string) bool {
	if len(h) > 64 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !(isAlnum(c) || c == '-') {
				return false
			}
		}
	}
	return true
}

// validModule reports whether m can be a kernel module name (the kernel
// allows 55 bytes).
func validModule(m string) bool {
	if len(m) == 0 || len(m) > 55 {
		return false
	}
	for i := 0; i < len(m); i++ {
		if c := m[i]; !(isAlnum(c) || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validFSType reports whether t looks like a filesystem type ("ext4",
// "fuse.sshfs").
func validFSType(t string) bool {
	for i := 0; i < len(t); i++ {
		if c := t[i]; !(isAlnum(c) || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return t != ""
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// formatDuration writes d as time.Duration does, without zero minutes and
// seconds after larger units: "2h", not "2h0m0s".
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func hasNUL(s string) bool { return strings.IndexByte(s, 0) >= 0 }
