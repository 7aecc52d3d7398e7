package config

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte(""))
	f.Add([]byte(svc("a", `after = ["b", ["c", [1]], []]`) + svc("b", `after = ["a"]`, "[service.env]", `"" = "x"`)))
	f.Add([]byte("[container.a.container.b]\nx = 1\n[[container.a.service]]\n"))
	f.Add([]byte("service = [{ name = \"a\", exec = [\"/a\"], env = { A = 1 } }]\nmount = [{}]\n"))
	f.Add([]byte("hostname = \"box\r\n[x]\n\"a.b\".c = 1979-05-27T07:32:00Z"))
	f.Add([]byte(fullContainers))
	f.Add([]byte(svc("db", `after = ["web"]`) + daemon("web", `after = ["db"]`, `bind = [{ source = "/", target = "/../x" }, { source = "/a" }]`, `memory = "1G"`, `memory_high = "2G"`, `cpu = nan`)))
	f.Add([]byte("container = { a = { kind = \"user\", container = { b = { kind = \"daemon\", service = [{}] } } } }"))
	f.Add([]byte("kind = \"daemon\"\nexec = [\"/x\"]\n[[bind]]\nsource = \"/x\"\n[container.c]\nkind = \"user\"\nlevel = 2\n"))
	f.Add([]byte("subnet = \"10.77.0.0/16\"\n[container.w]\nkind = \"daemon\"\nexec = [\"/w\"]\nnetwork = \"veth\"\naddress = \"10.77.0.9\"\npublish = [\"80:80\", \"53:53/udp\"]\ndns = [\"::1\"]\nnat = false\n"))
	f.Add([]byte("kind = \"user\"\nnetwork = \"veth\"\naddress = \"10.88.9.1\"\n[container.x]\nkind = \"daemon\"\nexec = [\"/x\"]\nnetwork = \"veth\"\npublish = [\"1:1\"]\n"))
	f.Add([]byte("[container.a]\nkind = \"user\"\nescalate = \"key\"\nkeys = [\"ssh-ed25519 AAAA x\"]\ncommands = [[\"id\", \"...\"], []]\npassword_hash = \"$y$j9T$x\"\nas = \"root\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines := bytes.Count(data, []byte("\n")) + 1
		c, err := Parse("f.toml", data)
		if err != nil {
			checkFuzzError(t, "Parse", data, err, lines)
		} else {
			if c.Source != "f.toml" {
				t.Fatalf("Parse(%q).Source = %q, want f.toml", data, c.Source)
			}
			if err := c.Validate(); err != nil {
				t.Fatalf("Parse(%q) passed, but Validate() = %v", data, err)
			}
		}
		// The same bytes as a containers.d file.
		ct, err := ParseContainer("f", "f.toml", data)
		if err != nil {
			checkFuzzError(t, "ParseContainer", data, err, lines)
			return
		}
		if ct.Name != "f" || ct.File != "f.toml" {
			t.Fatalf("ParseContainer(%q) = %+v, want container f of f.toml", data, ct)
		}
		// Alone in a config it must validate, but for its after names,
		// which may name units of other containers.d files, and its
		// address, which must be in the bridge of the init's subnet
		// (LoadDir checks those).
		alone := *ct
		alone.After = nil
		alone.Address = netip.Addr{}
		cfg := &Config{Source: "nest.toml", Console: ConsoleNone, Containers: []Container{alone}}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("ParseContainer(%q) passed, but Validate() = %v", data, err)
		}
		if !ct.Equal(*ct) {
			t.Fatalf("ParseContainer(%q): not Equal to itself", data)
		}
	})
}

// checkFuzzError checks that err is made of *Error values for f.toml,
// each within the document.
func checkFuzzError(t *testing.T, fn string, data []byte, err error, lines int) {
	t.Helper()
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var ce *Error
		if !errors.As(e, &ce) || ce.File != "f.toml" || ce.Msg == "" || ce.Line > lines || ce.Line < 0 || ce.Col < 0 {
			t.Fatalf("%s(%q) = %#v, want *Error values for f.toml within %d lines", fn, data, e, lines)
		}
	}
}
