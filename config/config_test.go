package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const full = `# a full example
hostname = "box"
modules  = ["veth", "bridge"]
console  = "none"

[[mount]]
source  = "/dev/vda"
target  = "/var"
type    = "ext4"
options = ["noatime", "data=ordered"]

[[mount]]
source = "tmpfs"
target = "/srv"
type   = "tmpfs"

[[service]]
name         = "web"
exec         = ["/usr/sbin/httpd", "-f"]
env          = { PORT = "80", "X.Y" = "z" }
dir          = "/srv"
restart      = "always"
after        = ["db"]
notify       = true
stop_timeout = "1m30s"
start_limit = 3

[[service]]
name = "db"
exec = ["/usr/bin/db"]
restart = "no"

[service.env]
DATA = "/var/db"
`

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want *Config
	}{
		{"full", full, &Config{
			Source:   "t.toml",
			Hostname: "box",
			Modules:  []string{"veth", "bridge"},
			Console:  ConsoleNone,
			Mounts: []Mount{
				{Source: "/dev/vda", Target: "/var", Type: "ext4", Options: []string{"noatime", "data=ordered"}},
				{Source: "tmpfs", Target: "/srv", Type: "tmpfs"},
			},
			Services: []Service{
				{
					Name:        "web",
					Exec:        []string{"/usr/sbin/httpd", "-f"},
					Env:         map[string]string{"PORT": "80", "X.Y": "z"},
					Dir:         "/srv",
					Restart:     RestartAlways,
					After:       []string{"db"},
					Notify:      true,
					StopTimeout: 90 * time.Second,
					StartLimit:  3,
				},
				{
					Name:        "db",
					Exec:        []string{"/usr/bin/db"},
					Env:         map[string]string{"DATA": "/var/db"},
					Restart:     RestartNo,
					StopTimeout: DefaultStopTimeout,
					StartLimit:  DefaultStartLimit,
				},
			},
		}},
		{"empty", "", &Config{Source: "t.toml", Console: ConsoleShell}},
		{"defaults", "[[service]]\nname = \"a\"\nexec = [\"/bin/a\"]\n", &Config{
			Source:  "t.toml",
			Console: ConsoleShell,
			Services: []Service{{
				Name: "a", Exec: []string{"/bin/a"},
				Restart: RestartOnFailure, StopTimeout: 10 * time.Second, StartLimit: 10,
			}},
		}},
		{"inline array of tables", `service = [
  { name = "a", exec = ["/bin/a"], after = ["b-2"] },
  { name = "b-2", exec = ["/bin/b", ""], stop_timeout = "1h", env = {} },
]`, &Config{
			Source:  "t.toml",
			Console: ConsoleShell,
			Services: []Service{
				{Name: "a", Exec: []string{"/bin/a"}, After: []string{"b-2"}, Restart: RestartOnFailure, StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit},
				{Name: "b-2", Exec: []string{"/bin/b", ""}, Env: map[string]string{}, Restart: RestartOnFailure, StopTimeout: time.Hour, StartLimit: DefaultStartLimit},
			},
		}},
		{"module dashes", `modules = ["nf-nat", "BusLogic", "x_y"]`, &Config{
			Source: "t.toml", Console: ConsoleShell, Modules: []string{"nf-nat", "BusLogic", "x_y"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("t.toml", []byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse(%s) = error %v, want no error", tt.name, err)
			}
			stripPositions(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%s) = %+v, want %+v", tt.name, got, tt.want)
			}
		})
	}
}

// svc is a valid service to build error cases from: line 1 is [[service]],
// line 2 the name, line 3 exec; what a case adds starts on line 4.
func svc(name string, lines ...string) string {
	return fmt.Sprintf("[[service]]\nname = %q\nexec = [\"/bin/%s\"]\n", name, name) + strings.Join(lines, "\n") + "\n"
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string // prefix of the error; "t.toml:" is added
	}{
		// Syntax and TOML-level errors come from the decoder.
		{"syntax", `hostname = "box`, `1:15: unterminated basic string`},
		{"syntax array", "modules = [\"a\",\n", `1:`},
		{"duplicate key", "console = \"shell\"\nconsole = \"none\"", `2:1: key console is already defined`},

		// Types.
		{"restart type", svc("web", "restart = 3"), `4:11: service "web": restart = 3: want a string`},
		{"hostname type", `hostname = 1`, `1:12: hostname = 1: want a string`},
		{"modules type", `modules = "veth"`, `1:11: modules = "veth": want an array of strings`},
		{"modules element type", `modules = ["veth", 2]`, `1:20: modules[1] = 2: want a string`},
		{"exec type", "[[service]]\nname = \"a\"\nexec = \"/bin/a\"", `3:8: service "a": exec = "/bin/a": want an array of strings`},
		{"exec element type", "[[service]]\nname = \"a\"\nexec = [\"/bin/a\", true]", `3:19: service "a": exec[1] = true: want a string`},
		{"nested array", svc("a", `after = ["b", ["c"]]`), `4:15: service "a": after[1] = ["c"]: want a string`},
		{"env type", svc("a", `env = "A=1"`), `4:7: service "a": env = "A=1": want a table of strings, like { PORT = "80" }`},
		{"env value type", svc("a", `env = { A = "1", B = 2 }`), `4:22: service "a": env.B = 2: want a string`},
		{"notify type", svc("a", `notify = "yes"`), `4:10: service "a": notify = "yes": want true or false`},
		{"stop_timeout type", svc("a", `stop_timeout = 10`), `4:16: service "a": stop_timeout = 10: want a duration string like "10s"`},
		{"service table", "[service]\nname = \"a\"", `1:2: service = { … }: want an array of tables, written [[service]]`},
		{"service element", `service = [1]`, `1:12: service[0] = 1: want a table`},
		{"mount type", `mount = "x"`, `1:9: mount = "x": want an array of tables, written [[mount]]`},
		{"date", `hostname = 1979-05-27`, `1:12: hostname = 1979-05-27: want a string`},

		// Unknown keys.
		{"unknown top", "[network]\nbridge = \"nest0\"", `1:2: unknown key "network": want one of hostname, modules, console, subnet, mount, service, container`},
		{"subnet form", `subnet = "10.88.0.0"`, `1:10: subnet = "10.88.0.0": want an IPv4 prefix, like "10.88.0.0/16"`},
		{"subnet v6", `subnet = "fd00::/64"`, `1:10: subnet = "fd00::/64": want an IPv4 prefix`},
		{"subnet host bits", `subnet = "10.88.0.1/16"`, `1:10: subnet = "10.88.0.1/16": want the network's own address: "10.88.0.0/16"`},
		{"subnet small", `subnet = "10.88.0.0/25"`, `1:10: subnet = "10.88.0.0/25": want a prefix from /8 to /24 (each init's bridge takes a /24)`},
		{"subnet type", `subnet = 1`, `1:10: subnet = 1: want a string`},
		{"unknown top dotted", `foo.bar = 1`, `1:1: unknown key "foo": want one of`},
		{"unknown service key", svc("web", "restrat = \"no\""), `4:1: service "web": unknown key "restrat": want one of name, exec, env, dir, restart, after, notify, stop_timeout, start_limit`},
		{"start_limit zero", svc("a", `start_limit = 0`), `4:15: service "a": start_limit = 0: want a whole number from 1 to 1000`},
		{"start_limit string", svc("a", `start_limit = "5"`), `4:15: service "a": start_limit = "5": want a whole number from 1 to 1000`},
		{"console name taken", svc("console", ""), `2:8: service "console": name = "console": taken by the console shell (console = "shell"); pick another name or set console = "none"`},
		{"unknown inline key", `service = [{ name = "a", exec = ["/a"], bogus = 1 }]`, `1:41: service "a": unknown key "bogus": want one of name`},
		{"unknown mount key", "[[mount]]\nsource = \"a\"\ntarget = \"/a\"\ntype = \"ext4\"\nflags = 1", `5:1: mount "/a": unknown key "flags": want one of source, target, type, options`},
		{"unknown key second service", svc("a") + svc("b", "  user = \"x\""), `8:3: service "b": unknown key "user"`},

		// Top-level values.
		{"hostname empty", `hostname = ""`, `1:12: hostname = "": want a host name; leave hostname out to keep the current one`},
		{"hostname bad", `hostname = "my box"`, `1:12: hostname = "my box": want letters, digits, '-' and '.'`},
		{"hostname long", `hostname = "` + strings.Repeat("a", 65) + `"`, `1:12: hostname = "aaaa`},
		{"module bad", `modules = ["veth", "a/b"]`, `1:20: modules[1] = "a/b": want a kernel module name`},
		{"module twice", `modules = ["nf_nat", "nf-nat"]`, `1:22: modules[1] = "nf-nat": already listed as modules[0]`},
		{"console login name", "console = \"login\"\n" + svc("console", ""), `3:8: service "console": name = "console": taken by the console's login prompt (console = "login"); pick another name or set console = "none"`},
		{"console bad", `console = "serial"`, `1:11: console = "serial": want "shell", "login" or "none"`},

		// Mounts.
		{"mount target relative", "[[mount]]\nsource = \"tmpfs\"\ntarget = \"tmp\"\ntype = \"tmpfs\"", `3:10: mount "tmp": target = "tmp": want an absolute path`},
		{"mount target unclean", "[[mount]]\nsource = \"tmpfs\"\ntarget = \"/a/../b\"\ntype = \"tmpfs\"", `3:10: mount "/a/../b": target = "/a/../b": want a clean path: "/b"`},
		{"mount target root", "[[mount]]\nsource = \"tmpfs\"\ntarget = \"/\"\ntype = \"tmpfs\"", `3:10: mount "/": target = "/": want a directory below /`},
		{"mount missing", "[[mount]]\nsource = \"tmpfs\"\ntype = \"tmpfs\"", `1:3: mount[0]: target is missing`},
		{"mount type", "[[mount]]\nsource = \"x\"\ntarget = \"/x\"\ntype = \"ext 4\"", `4:8: mount "/x": type = "ext 4": want a filesystem type`},
		{"mount options", "[[mount]]\nsource = \"x\"\ntarget = \"/x\"\ntype = \"ext4\"\noptions = [\"ro\", \"nodev,noexec\"]", `5:18: mount "/x": options[1] = "nodev,noexec": want one option per string`},

		// Services.
		{"restart enum", "# nest\n\n[[service]]\nname = \"web\"\nexec = [\"/usr/sbin/httpd\"]\n\nrestart = \"sometimes\"\n",
			`7:11: service "web": restart = "sometimes": want "always", "on-failure" or "no"`},
		{"duration syntax", svc("a", `stop_timeout = "10"`), `4:16: service "a": stop_timeout = "10": want a duration like "10s", "1m30s" or "500ms"`},
		{"duration zero", svc("a", `stop_timeout = "0s"`), `4:16: service "a": stop_timeout = "0s": want a duration above 0 and at most 1h`},
		{"duration negative", svc("a", `stop_timeout = "-1s"`), `4:16: service "a": stop_timeout = "-1s": want a duration above 0`},
		{"duration long", svc("a", `stop_timeout = "61m"`), `4:16: service "a": stop_timeout = "1h1m": want a duration above 0 and at most 1h`},
		{"name upper", svc("Web"), `2:8: service "Web": name = "Web": want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters`},
		{"name dash", svc("-web"), `2:8: service "-web": name = "-web": want a-z`},
		{"name long", svc(strings.Repeat("a", 33)), `2:8: service "aaaa`},
		{"name missing", "[[service]]\nexec = [\"/bin/a\"]", `1:3: service[0]: name is missing: want a name like "web"`},
		{"name type", "[[service]]\nname = 1\nexec = [\"/bin/a\"]", `2:8: service[0]: name = 1: want a string`},
		{"name duplicate", svc("web") + "\n" + svc("web"), `7:8: service "web": name = "web": already used by the service at line 2; rename or remove one of them`},
		{"exec missing", "[[service]]\nname = \"a\"", `1:3: service "a": exec is missing or empty`},
		{"exec empty", "[[service]]\nname = \"a\"\nexec = []", `3:8: service "a": exec is missing or empty`},
		{"exec relative", "[[service]]\nname = \"a\"\nexec = [\"httpd\"]", `3:9: service "a": exec[0] = "httpd": want an absolute path`},
		{"env key", svc("a", `env = { "A=B" = "1" }`), `4:9: service "a": env."A=B": want an environment variable name: not empty, without '=' or NUL`},
		{"env key table", svc("a", "[service.env]", `"" = "1"`), `5:1: service "a": env."": want an environment variable name`},
		{"env NUL", svc("a", `env = { A = "x\u0000y" }`), `4:13: service "a": env.A = "x\x00y": contains a NUL byte`},
		{"dir relative", svc("a", `dir = "srv"`), `4:7: service "a": dir = "srv": want an absolute path`},
		{"after unknown", svc("a", `after = ["b"]`) + svc("c"), `4:10: service "a": after[0] = "b": no service or container has that name; want one of "c"`},
		{"after unknown alone", svc("a", `after = ["b"]`), `4:10: service "a": after[0] = "b": no service or container has that name; there is no other service or container`},
		{"after self", svc("a", `after = ["a"]`), `4:10: service "a": after[0] = "a": a service cannot come after itself`},
		{"after twice", svc("a", `after = ["b", "b"]`) + svc("b"), `4:15: service "a": after[1] = "b": listed twice`},
		{"cycle of two", svc("a", `after = ["b"]`) + svc("b", `after = ["a"]`), `8:10: service "b": after[0] = "a": dependency cycle: b after a after b`},
		{"cycle of three", svc("a", `after = ["c"]`) + svc("b", `after = ["a"]`) + svc("c", `after = ["x", "b"]`) + svc("x"),
			`8:10: service "b": after[0] = "a": dependency cycle: b after a after c after b`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(tt.doc))
			want := "t.toml:" + tt.want
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error %q", tt.doc, c, want)
			}
			if got := err.Error(); !strings.HasPrefix(got, want) {
				t.Errorf("Parse(%q) = %q, want %q…", tt.doc, got, want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "t.toml" || e.Line == 0 || e.Col == 0 {
				t.Errorf("Parse(%q) = %#v, want an *Error with a position", tt.doc, err)
			}
		})
	}
}

func TestParseManyErrors(t *testing.T) {
	doc := "a = 1\nb = 2\n" + svc("x", `restart = "x"`, `dir = "y"`)
	_, err := Parse("t.toml", []byte(doc))
	want := `t.toml:4:11: service "x": restart = "x": want "always", "on-failure" or "no"` + "\n" +
		`t.toml:5:7: service "x": dir = "y": want an absolute path`
	// Unknown keys and type errors come first; value errors only after
	// the document has none.
	if err == nil || !strings.HasPrefix(err.Error(), "t.toml:1:1: unknown key \"a\"") {
		t.Fatalf("Parse(two unknown keys) = %v, want t.toml:1:1: unknown key \"a\"…", err)
	}
	if got := strings.Count(err.Error(), "\n"); got != 1 {
		t.Errorf("Parse(two unknown keys) = %q, want 2 lines", err)
	}
	_, err = Parse("t.toml", []byte(doc[12:]))
	if err == nil || err.Error() != want {
		t.Errorf("Parse(two bad values) = %v, want %q", err, want)
	}

	var b strings.Builder
	for i := range 12 {
		fmt.Fprintf(&b, "k%d = 1\n", i)
	}
	_, err = Parse("t.toml", []byte(b.String()))
	lines := strings.Split(fmt.Sprint(err), "\n")
	if len(lines) != maxErrors+1 || lines[maxErrors] != "t.toml: and 2 more problems" {
		t.Errorf("Parse(12 unknown keys) = %q, want %d errors and \"t.toml: and 2 more problems\"", lines, maxErrors)
	}
	for i, l := range lines[:maxErrors] {
		if want := fmt.Sprintf("t.toml:%d:1: unknown key \"k", i+1); !strings.HasPrefix(l, want) {
			t.Errorf("Parse(12 unknown keys) line %d = %q, want %q…", i, l, want)
		}
	}
}

func TestDefault(t *testing.T) {
	c := Default()
	if err := c.Validate(); err != nil {
		t.Fatalf("Default().Validate() = %v, want nil", err)
	}
	if c.Source != BuiltIn || c.Hostname != "nest" || c.Console != ConsoleShell {
		t.Errorf("Default() = %+v, want Source %q, Hostname \"nest\", Console %q", c, BuiltIn, ConsoleShell)
	}
	if web, ok := c.Container("web"); !ok || web.Network != NetworkVeth || len(web.Publish) != 1 || !web.NAT {
		t.Errorf("Default() has no networked web container: %+v", web)
	}
}

func TestValidate(t *testing.T) {
	ok := Service{Name: "a", Exec: []string{"/a"}, Restart: RestartNo, StopTimeout: time.Second}
	tests := []struct {
		name string
		c    Config
		want string
	}{
		{"valid", Config{Source: "x", Console: ConsoleNone, Services: []Service{ok}}, ""},
		{"no console", Config{Source: "x"}, `x: console = "": want "shell", "login" or "none"`},
		{"zero service", Config{Source: "x", Console: ConsoleShell, Services: []Service{{Name: "a", Exec: []string{"/a"}}}},
			`x: service "a": restart = "": want "always", "on-failure" or "no"` + "\n" +
				`x: service "a": stop_timeout = "0s": want a duration above 0 and at most 1h`},
		{"duplicate", Config{Source: "x", Console: ConsoleShell, Services: []Service{ok, ok}},
			`x: service "a": name = "a": already used by service[0]; rename or remove one of them`},
		{"no source", Config{Console: "?"}, `console = "?": want "shell", "login" or "none"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.c.Validate()
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate(%+v) = %q, want %q", tt.c, got, tt.want)
			}
		})
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(filepath.Join(dir, "nest.toml"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want an error that is fs.ErrNotExist", err)
	}

	name := filepath.Join(dir, "ok.toml")
	if err := os.WriteFile(name, []byte(full), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Load(name)
	if err != nil || c.Source != name || len(c.Services) != 2 {
		t.Errorf("Load(%s) = %+v, %v, want 2 services from %s", name, c, err, name)
	}

	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("\n\nconsole = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = Load(bad)
	if want := bad + ":3:11: console = 1: want a string"; err == nil || err.Error() != want {
		t.Errorf("Load(%s) = %v, want %q", bad, err, want)
	}
}

func TestService(t *testing.T) {
	c, err := Parse("t.toml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	s, ok := c.Service("db")
	if !ok || s.Name != "db" || s != &c.Services[1] {
		t.Errorf("Service(\"db\") = %v, %v, want &c.Services[1], true", s, ok)
	}
	if s, ok := c.Service("nope"); ok || s != nil {
		t.Errorf("Service(\"nope\") = %v, %v, want nil, false", s, ok)
	}
}

func TestEqual(t *testing.T) {
	base := Service{
		Name: "a", Exec: []string{"/a", "-x"}, Env: map[string]string{"K": "v"}, Dir: "/d",
		Restart: RestartAlways, After: []string{"b", "c"}, Notify: true, StopTimeout: time.Second,
	}
	change := func(f func(*Service)) Service {
		s := base
		s.Exec = append([]string(nil), base.Exec...)
		s.After = append([]string(nil), base.After...)
		s.Env = map[string]string{"K": "v"}
		f(&s)
		return s
	}
	tests := []struct {
		name string
		o    Service
		want bool
	}{
		{"same values, new slices", change(func(*Service) {}), true},
		{"name", change(func(s *Service) { s.Name = "b" }), false},
		{"exec arg", change(func(s *Service) { s.Exec[1] = "-y" }), false},
		{"exec longer", change(func(s *Service) { s.Exec = append(s.Exec, "z") }), false},
		{"env value", change(func(s *Service) { s.Env["K"] = "w" }), false},
		{"env key", change(func(s *Service) { s.Env = map[string]string{"L": "v"} }), false},
		{"dir", change(func(s *Service) { s.Dir = "/" }), false},
		{"restart", change(func(s *Service) { s.Restart = RestartNo }), false},
		{"after order", change(func(s *Service) { s.After = []string{"c", "b"} }), false},
		{"notify", change(func(s *Service) { s.Notify = false }), false},
		{"stop timeout", change(func(s *Service) { s.StopTimeout = 2 * time.Second }), false},
	}
	for _, tt := range tests {
		if got := base.Equal(tt.o); got != tt.want {
			t.Errorf("Equal(%s) = %v, want %v", tt.name, got, tt.want)
		}
	}
	if a, b := (Service{Env: map[string]string{}}), (Service{}); !a.Equal(b) {
		t.Errorf("Equal(empty env, nil env) = false, want true")
	}
}

func TestErrorString(t *testing.T) {
	tests := []struct {
		e    Error
		want string
	}{
		{Error{File: "f", Line: 7, Col: 11, Msg: "m"}, "f:7:11: m"},
		{Error{File: "f", Line: 7, Msg: "m"}, "f:7: m"},
		{Error{File: "f", Msg: "m"}, "f: m"},
		{Error{Msg: "m"}, "m"},
	}
	for _, tt := range tests {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("(%#v).Error() = %q, want %q", tt.e, got, tt.want)
		}
	}
}

// TestParseBriefExample checks the whole message of the example error in
// the package doc.
func TestParseBriefExample(t *testing.T) {
	doc := "# nest\n\n[[service]]\nname = \"web\"\nexec = [\"/usr/sbin/httpd\"]\n\nrestart = \"sometimes\"\n"
	want := `/etc/nest/nest.toml:7:11: service "web": restart = "sometimes": want "always", "on-failure" or "no"`
	if _, err := Parse(DefaultPath, []byte(doc)); err == nil || err.Error() != want {
		t.Errorf("Parse(%q) = %v, want %q", doc, err, want)
	}
}
