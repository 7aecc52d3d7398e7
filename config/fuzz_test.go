package config

import (
	"bytes"
	"errors"
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(full))
	f.Add([]byte(""))
	f.Add([]byte(svc("a", `after = ["b", ["c", [1]], []]`) + svc("b", `after = ["a"]`, "[service.env]", `"" = "x"`)))
	f.Add([]byte("[container.a.container.b]\nx = 1\n[[container.a.service]]\n"))
	f.Add([]byte("service = [{ name = \"a\", exec = [\"/a\"], env = { A = 1 } }]\nmount = [{}]\n"))
	f.Add([]byte("hostname = \"box\r\n[x]\n\"a.b\".c = 1979-05-27T07:32:00Z"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("f.toml", data)
		if err != nil {
			lines := bytes.Count(data, []byte("\n")) + 1
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				var ce *Error
				if !errors.As(e, &ce) || ce.File != "f.toml" || ce.Msg == "" || ce.Line > lines || ce.Line < 0 || ce.Col < 0 {
					t.Fatalf("Parse(%q) = %#v, want *Error values for f.toml within %d lines", data, e, lines)
				}
			}
			return
		}
		if c.Source != "f.toml" {
			t.Fatalf("Parse(%q).Source = %q, want f.toml", data, c.Source)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse(%q) passed, but Validate() = %v", data, err)
		}
	})
}
