package config

import (
	"fmt"
	"maps"
	"net/netip"
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
	case ConsoleShell, ConsoleLogin, ConsoleNone:
	default:
		v.val([]path{top.key("console")}, `console = %s: want "shell", "login" or "none"`, strconv.Quote(c.Console))
	}
	for i, m := range c.Mounts {
		m.validate(v, top.key("mount").idx(i), i)
	}
	validateServices(v, "", c.Services, top.key("service"))
	if s := c.Subnet; s.IsValid() && (!s.Addr().Is4() || s.Masked() != s || s.Bits() < MinSubnetBits || s.Bits() > MaxSubnetBits) {
		v.val([]path{top.key("subnet")}, "subnet = %s: want an IPv4 network prefix from /%d to /%d", strconv.Quote(s.String()), MinSubnetBits, MaxSubnetBits)
	}
	for i := range c.Containers {
		c.Containers[i].validate(v)
	}
	checkNetworkLevel(v, nil, c.Containers, c.BridgeSubnet())
	checkLevel(v, levelMembers(v, "", c.Services, c.Containers, top), c.reserved())
}

// Pool is Subnet, or DefaultSubnet when it is not set.
func (c *Config) Pool() netip.Prefix {
	if c.Subnet.IsValid() {
		return c.Subnet
	}
	return DefaultSubnet
}

// BridgeSubnet is the /24 of this init's own bridge: the first of Pool.
func (c *Config) BridgeSubnet() netip.Prefix { return BridgeSubnet(c.Pool()) }

// reserved says why a name is taken at the top of c: the console shell's.
func (c *Config) reserved() func(name string) string {
	return func(name string) string {
		if name == ConsoleUnit && c.Console == ConsoleShell {
			return `taken by the console shell (console = "shell"); pick another name or set console = "none"`
		}
		if name == ConsoleUnit && c.Console == ConsoleLogin {
			return `taken by the console's login prompt (console = "login"); pick another name or set console = "none"`
		}
		return ""
	}
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

// validateServices checks each service of the container parent ("" for
// the init's own) on its own; checkLevel checks what spans the units.
func validateServices(v *problems, parent string, services []Service, top path) {
	for i := range services {
		s := &services[i]
		p := top.idx(i)
		ctx := serviceContext(parent, i, s.Name)
		switch {
		case s.Name == "":
			v.val([]path{p.key("name"), p}, `%sname is missing: want a name like "web": a-z, 0-9 and '-', at most 32 characters`, ctx)
		case !ValidName(s.Name):
			v.val([]path{p.key("name")}, "%sname = %s: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters", ctx, strconv.Quote(s.Name))
		}
		s.validate(v, p, ctx)
	}
}

func (s *Service) validate(v *problems, p path, ctx string) {
	validateProcess(v, p, ctx, s.Exec, s.Env, s.Dir)
	validateRestart(v, p, ctx, s.Restart)
	validateStopTimeout(v, p, ctx, s.StopTimeout)
}

// validateProcess checks what a service and a daemon container have in
// common: exec, env and dir.
func validateProcess(v *problems, p path, ctx string, exec []string, env map[string]string, dir string) {
	switch {
	case len(exec) == 0:
		v.val([]path{p.key("exec"), p}, `%sexec is missing or empty: want the program and its arguments, like ["/usr/sbin/httpd", "-f"]`, ctx)
	case !strings.HasPrefix(exec[0], "/"):
		v.val([]path{p.key("exec").idx(0)}, "%sexec[0] = %s: want an absolute path", ctx, strconv.Quote(exec[0]))
	}
	for i, a := range exec {
		if hasNUL(a) {
			v.val([]path{p.key("exec").idx(i)}, "%sexec[%d] = %s: contains a NUL byte", ctx, i, strconv.Quote(a))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(env)) {
		name := "env." + displayKey(k)
		if k == "" || strings.ContainsRune(k, '=') || hasNUL(k) {
			v.key([]path{p.key("env").key(k)}, "%s%s: want an environment variable name: not empty, without '=' or NUL", ctx, name)
		} else if hasNUL(env[k]) {
			v.val([]path{p.key("env").key(k)}, "%s%s = %s: contains a NUL byte", ctx, name, strconv.Quote(env[k]))
		}
	}
	if dir != "" && (!strings.HasPrefix(dir, "/") || hasNUL(dir)) {
		v.val([]path{p.key("dir")}, "%sdir = %s: want an absolute path", ctx, strconv.Quote(dir))
	}
}

func validateRestart(v *problems, p path, ctx string, r Restart) {
	switch r {
	case RestartAlways, RestartOnFailure, RestartNo:
	default:
		v.val([]path{p.key("restart"), p}, `%srestart = %s: want "always", "on-failure" or "no"`, ctx, strconv.Quote(string(r)))
	}
}

func validateStopTimeout(v *problems, p path, ctx string, d time.Duration) {
	if d <= 0 || d > MaxStopTimeout {
		v.val([]path{p.key("stop_timeout"), p}, "%sstop_timeout = %s: want a duration above 0 and at most 1h", ctx, strconv.Quote(formatDuration(d)))
	}
}

// member is a service or a container of one init, for the checks that
// span them: one set of names, after, cycles.
type member struct {
	container bool // a container, not a service
	name      string
	index     int // in its list
	after     []string
	p         path // its table
	ctx       string
	v         *problems // where its problems go, and its positions
}

// levelMembers lists the services and containers of one init: the
// container parent ("" for the init's own), whose table is at top.
func levelMembers(v *problems, parent string, services []Service, containers []Container, top path) []member {
	var ms []member
	for i, s := range services {
		ms = append(ms, member{name: s.Name, index: i, after: s.After, p: top.key("service").idx(i),
			ctx: serviceContext(parent, i, s.Name), v: v})
	}
	for i := range containers {
		c := &containers[i]
		ms = append(ms, member{container: true, name: c.Name, index: i, after: c.After, p: c.at,
			ctx: containerContext(joinID(parent, c.Name)), v: v.in(c.File, c.ix)})
	}
	return ms
}

func (m *member) kind() string {
	if m.container {
		return "container"
	}
	return "service"
}

// namePaths are where m's name is written.
func (m *member) namePaths() []path {
	if m.container {
		return []path{m.p}
	}
	return []path{m.p.key("name"), m.p}
}

// nameIs starts a message about m's name after its context.
func (m *member) nameIs() string {
	if m.container {
		return ""
	}
	return "name = " + strconv.Quote(m.name) + ": "
}

// where names m for a message about another member, reported in from.
func (m *member) where(from *problems) string {
	line, col := m.v.ix.pos(m.container, m.namePaths()...)
	switch {
	case line > 0 && m.v.file == from.file:
		return fmt.Sprintf("the %s at line %d", m.kind(), line)
	case line > 0:
		return fmt.Sprintf("the %s at %s:%d:%d", m.kind(), m.v.file, line, col)
	case m.v.file != from.file && m.v.file != "":
		return fmt.Sprintf("the %s in %s", m.kind(), m.v.file)
	}
	return fmt.Sprintf("%s[%d]", m.kind(), m.index)
}

// before reports whether m is written before o in the same file.
func (m *member) before(o *member) bool {
	if m.v.file != o.v.file {
		return false
	}
	lm, cm := m.v.ix.pos(m.container, m.namePaths()...)
	lo, co := o.v.ix.pos(o.container, o.namePaths()...)
	return lm > 0 && lo > 0 && (lm < lo || lm == lo && cm < co)
}

// atName records a problem with m's name: at a service's name value, at a
// container's name in its table header.
func (m *member) atName(format string, args ...any) {
	m.v.at(m.container, m.namePaths(), format, args...)
}

// checkLevel checks what spans the services and containers of one init:
// names are unique among both, and not the reserved one (reserved says why
// a name is taken, or ""); after names a unit of the same init, and no
// cycle goes through after.
func checkLevel(v *problems, ms []member, reserved func(name string) string) {
	first := map[string]int{} // name -> index in ms of the unit that has it
	for i := range ms {
		m := &ms[i]
		if !ValidName(m.name) {
			continue // reported with the unit
		}
		if why := reserved(m.name); why != "" {
			m.atName("%s%s%s", m.ctx, m.nameIs(), why)
		}
		j, dup := first[m.name]
		if !dup {
			first[m.name] = i
			continue
		}
		// Report the one written later; the other is named.
		at, other := m, &ms[j]
		if at.before(other) {
			at, other = other, at
		}
		shared := ""
		if at.container != other.container {
			shared = " (services and containers share one set of names)"
		}
		at.atName("%s%salready used by %s%s; rename or remove one of them", at.ctx, at.nameIs(), other.where(at.v), shared)
	}
	for i := range ms {
		m := &ms[i]
		ap := m.p.key("after")
		seen := map[string]bool{}
		for j, a := range m.after {
			_, known := first[a]
			switch {
			case a == m.name && a != "":
				m.v.val([]path{ap.idx(j)}, "%safter[%d] = %s: a %s cannot come after itself", m.ctx, j, strconv.Quote(a), m.kind())
			case !known:
				m.v.val([]path{ap.idx(j)}, "%safter[%d] = %s: no service or container has that name; %s", m.ctx, j, strconv.Quote(a), otherNames(first, m.name))
			case seen[a]:
				m.v.val([]path{ap.idx(j)}, "%safter[%d] = %s: listed twice", m.ctx, j, strconv.Quote(a))
			}
			seen[a] = true
		}
	}
	findCycles(ms, first)
}

// findCycles reports each cycle of after that a depth-first walk in the
// order of ms closes, at the after value that closes it.
func findCycles(ms []member, first map[string]int) {
	const (
		unseen = iota
		open
		done
	)
	state := make([]int, len(ms))
	var stack []int
	var visit func(i int)
	visit = func(i int) {
		state[i] = open
		stack = append(stack, i)
		m := &ms[i]
		for j, a := range m.after {
			t, ok := first[a]
			if !ok || t == i {
				continue
			}
			switch state[t] {
			case unseen:
				visit(t)
			case open:
				k := slices.Index(stack, t)
				chain := []string{m.name}
				for _, n := range stack[k:] {
					chain = append(chain, ms[n].name)
				}
				m.v.val([]path{m.p.key("after").idx(j)}, "%safter[%d] = %s: dependency cycle: %s", m.ctx, j, strconv.Quote(a), strings.Join(chain, " after "))
			}
		}
		stack = stack[:len(stack)-1]
		state[i] = done
	}
	for i, m := range ms {
		if first[m.name] == i && ValidName(m.name) && state[i] == unseen {
			visit(i)
		}
	}
}

// otherNames lists the units other than self for a message.
func otherNames(first map[string]int, self string) string {
	var names []string
	for n := range first {
		if n != self {
			names = append(names, strconv.Quote(n))
		}
	}
	if len(names) == 0 {
		return "there is no other service or container"
	}
	slices.Sort(names)
	if len(names) > 8 {
		names = append(names[:8], "…")
	}
	return "want one of " + strings.Join(names, ", ")
}

// validName reports whether s matches [a-z0-9][a-z0-9-]{0,31}.
// ValidName reports whether s is a unit name: [a-z0-9][a-z0-9-]{0,31}.
// Services and containers share it; so does everything that reads names a
// child reports.
func ValidName(s string) bool {
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
