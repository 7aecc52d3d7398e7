package config

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// The crash test runs WriteFile in a helper: this test binary again, with
// crashEnv naming the step after which the helper kills itself.
const (
	crashEnv    = "NEST_CONFIG_TEST_CRASH_AT"
	crashDirEnv = "NEST_CONFIG_TEST_CRASH_DIR"
)

func TestMain(m *testing.M) {
	if step := os.Getenv(crashEnv); step != "" {
		crashHelper(step, os.Getenv(crashDirEnv))
		os.Exit(3) // not reached unless the step never came
	}
	os.Exit(m.Run())
}

// crashHelper writes web.toml in dir and dies of SIGKILL right after step,
// as a power cut or an OOM kill of the init would end it.
func crashHelper(step, dir string) {
	crashPoint = func(s string) error {
		if s == step {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
		return nil
	}
	if err := WriteFile(dir, "web.toml", newFile); err != nil {
		os.Exit(4)
	}
}

var newFile = []byte("kind = \"daemon\"\nlevel = 1\nexec = [\"/bin/sleep\", \"1000\"]\n")

// TestWriteFileCrash: whichever step the writer dies after, the directory
// holds no web.toml or the whole new one, containers.d loads, and the next
// write of the same name works (or says the file exists).
func TestWriteFileCrash(t *testing.T) {
	steps := []string{stepTemp, stepWritten, stepSynced, stepRenamed, stepDirSynced}
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			// Another container's file is never touched.
			other := []byte("kind = \"user\"\n")
			if err := os.WriteFile(filepath.Join(dir, "db.toml"), other, 0o644); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), crashEnv+"="+step, crashDirEnv+"="+dir)
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("helper crashing after %s: %v, want death by SIGKILL", step, err)
			}

			got, err := os.ReadFile(filepath.Join(dir, "web.toml"))
			exists := err == nil
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				t.Fatal(err)
			case !bytes.Equal(got, newFile):
				t.Fatalf("after a crash at %s web.toml = %q, want %q or no file", step, got, newFile)
			}
			if want := step == stepRenamed || step == stepDirSynced; exists != want {
				t.Errorf("after a crash at %s web.toml exists = %v, want %v", step, exists, want)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "db.toml")); !bytes.Equal(b, other) {
				t.Errorf("db.toml = %q after a crash writing web.toml", b)
			}
			cfg := &Config{Source: "nest.toml"}
			if err := LoadDir(cfg, dir); err != nil {
				t.Fatalf("LoadDir after a crash at %s: %v", step, err)
			}
			if _, ok := cfg.Container("web"); ok != exists {
				t.Errorf("LoadDir after a crash at %s: web loaded = %v, want %v", step, ok, exists)
			}

			err = WriteFile(dir, "web.toml", newFile)
			if exists && !errors.Is(err, fs.ErrExist) {
				t.Errorf("WriteFile over the existing web.toml = %v, want an error matching fs.ErrExist", err)
			}
			if !exists && err != nil {
				t.Errorf("WriteFile after a crash at %s = %v", step, err)
			}
			entries, _ := os.ReadDir(dir)
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			if got := strings.Join(names, " "); got != "db.toml web.toml" {
				t.Errorf("files after the second write: %s, want db.toml web.toml (no temporary file left)", got)
			}
		})
	}
}

// TestWriteFileNoReplace: an existing file is never replaced, and a failed
// write leaves nothing behind.
func TestWriteFileNoReplace(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFile(dir, "web.toml", newFile); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "web.toml")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("web.toml: %v, %v; want mode 0644", fi, err)
	}
	if err := WriteFile(dir, "web.toml", []byte("kind = \"user\"\n")); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second WriteFile = %v, want fs.ErrExist", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "web.toml")); !bytes.Equal(b, newFile) {
		t.Errorf("web.toml = %q after a refused write", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d entries in the directory, want 1", len(entries))
	}
	if err := RemoveFile(dir, "web.toml"); err != nil {
		t.Fatal(err)
	}
	if err := RemoveFile(dir, "web.toml"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("second RemoveFile = %v, want fs.ErrNotExist", err)
	}
}

// TestParseNew: what `nest create` writes is what the file says, with the
// newest level, and bad flags are reported without a line and column.
func TestParseNew(t *testing.T) {
	ok := []struct {
		name string
		n    NewContainer
		want func(c *Container) bool
	}{
		{"user", NewContainer{Kind: "user"}, func(c *Container) bool {
			return c.Kind == KindUser && c.User == "user" && c.Rootfs == RootfsHost && c.Sandbox.Level == SandboxLevel && c.Sandbox.Nesting
		}},
		{"web", NewContainer{Kind: "daemon", Exec: []string{"/bin/sh", "-c", "echo 'it''s' \"x\"\n\x01\\ \t\r\x7f é ✓"},
			Binds:   []Bind{{Source: "/srv", Target: "/srv"}, {Source: "/var/lib/web", Target: "/data", Writable: true}},
			Network: "host", Memory: "512M", Pids: 64, Rootfs: "/srv/root"},
			func(c *Container) bool {
				return c.Kind == KindDaemon && len(c.Exec) == 3 && c.Exec[2] == "echo 'it''s' \"x\"\n\x01\\ \t\r\x7f é ✓" &&
					len(c.Binds) == 2 && c.Binds[0] == (Bind{"/srv", "/srv", false}) && c.Binds[1] == (Bind{"/var/lib/web", "/data", true}) &&
					c.Network == NetworkHost && c.Memory == 512<<20 && c.Pids == 64 && c.Rootfs == "/srv/root" && c.Sandbox.NoNewPrivileges
			}},
	}
	for _, tt := range ok {
		c, data, err := ParseNew(tt.name, "/etc/nest/containers.d/"+tt.name+".toml", tt.n)
		if err != nil {
			t.Errorf("ParseNew(%s, %+v) = %v", tt.name, tt.n, err)
			continue
		}
		if !tt.want(c) || c.File != "/etc/nest/containers.d/"+tt.name+".toml" {
			t.Errorf("ParseNew(%s, %+v) = %+v", tt.name, tt.n, c)
		}
		if !strings.Contains(string(data), "level = 1\n") {
			t.Errorf("ParseNew(%s) wrote no level:\n%s", tt.name, data)
		}
		// The file reads back to the same container.
		back, err := ParseContainer(tt.name, "x.toml", data)
		if err != nil || !back.Equal(*c) {
			t.Errorf("ParseContainer of what ParseNew wrote = %+v, %v; want %+v", back, err, c)
		}
	}

	bad := []struct {
		name string
		n    NewContainer
		want string
	}{
		{"web", NewContainer{Kind: "daemon", Exec: []string{"/bin/true"}, Memory: "2GB"}, `container "web": memory = "2GB": want a whole number`},
		{"web", NewContainer{Kind: "server"}, `container "web": kind = "server": want "user" or "daemon"`},
		{"web", NewContainer{Kind: "daemon"}, `exec`},
		{"alice", NewContainer{Kind: "user", Exec: []string{"/bin/sh"}}, `only a daemon container has exec`},
		{"web", NewContainer{Kind: "daemon", Exec: []string{"sleep"}}, `exec[0] = "sleep"`},
		{"web", NewContainer{Kind: "user", Binds: []Bind{{Source: "/a", Target: "/../etc"}}}, `outside the container's root`},
		{"web", NewContainer{Kind: "user", Network: "bridge"}, `network = "bridge"`},
		{"Web", NewContainer{Kind: "user"}, `want a-z, 0-9`},
		{"web", NewContainer{Kind: "daemon", Exec: []string{"/bin/echo", "a\xffb"}}, `not valid UTF-8`},
	}
	for _, tt := range bad {
		_, _, err := ParseNew(tt.name, "/etc/nest/containers.d/"+tt.name+".toml", tt.n)
		if err == nil || !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), ".toml:") {
			t.Errorf("ParseNew(%s, %+v) = %v, want an error with %q and no place", tt.name, tt.n, err, tt.want)
		}
	}
}

// TestConfigAdd: a new container joins the one set of names.
func TestConfigAdd(t *testing.T) {
	cfg, err := Parse("/etc/nest/nest.toml", []byte("[[service]]\nname = \"db\"\nexec = [\"/bin/db\"]\n\n[container.web]\nkind = \"user\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := cfg.Container("web"); c.Place() != "/etc/nest/nest.toml:5:12" {
		t.Errorf("Place of web = %q, want /etc/nest/nest.toml:5:12", c.Place())
	}
	for _, name := range []string{"db", "web"} {
		c, _, err := ParseNew(name, "/etc/nest/containers.d/"+name+".toml", NewContainer{Kind: "user"})
		if err != nil {
			t.Fatal(err)
		}
		if err := cfg.Add(*c); err == nil || !strings.Contains(err.Error(), "already used") {
			t.Errorf("Add(%s) = %v, want already used", name, err)
		}
	}
	c, _, _ := ParseNew("app", "/etc/nest/containers.d/app.toml", NewContainer{Kind: "user"})
	if err := cfg.Add(*c); err != nil || len(cfg.Containers) != 2 {
		t.Errorf("Add(app) = %v, %d containers", err, len(cfg.Containers))
	}
	if c.Place() != "/etc/nest/containers.d/app.toml" {
		t.Errorf("Place of app = %q", c.Place())
	}
}

// BenchmarkWriteFile: what the durability of `nest create` and `nest rm`
// costs: WriteFile (two fsyncs) and RemoveFile (one) of one file.
func BenchmarkWriteFile(b *testing.B) {
	dir := b.TempDir()
	for b.Loop() {
		if err := WriteFile(dir, "web.toml", newFile); err != nil {
			b.Fatal(err)
		}
		if err := RemoveFile(dir, "web.toml"); err != nil {
			b.Fatal(err)
		}
	}
}
