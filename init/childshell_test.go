package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/supervise"
)

// TestShellCommand: a shell session runs the user's login shell from the
// container's passwd (a user container), /bin/sh otherwise, or the
// command asked for, looked up in PATH; a passwd that is no regular file
// is not read (a FIFO would hold the init).
func TestShellCommand(t *testing.T) {
	dir := t.TempDir()
	passwd := filepath.Join(dir, "passwd")
	if err := os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/sh\nalice:x:0:0:Alice:"+dir+":/bin/bash\nbob:x:0:0::relative:sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	user := func(name string) config.Container {
		sb, _ := config.DefaultSandbox(config.KindUser, config.SandboxLevel)
		return config.Container{Name: name, Kind: config.KindUser, User: name, Sandbox: sb}
	}
	sb, _ := config.DefaultSandbox(config.KindDaemon, config.SandboxLevel)
	daemon := config.Container{Name: "web", Kind: config.KindDaemon, Sandbox: sb}
	tests := []struct {
		name   string
		c      config.Container
		passwd string
		argv   []string
		exec   []string
		home   string
		dir    string
		nnp    bool
	}{
		{"alice", user("alice"), passwd, nil, []string{"/bin/bash", "-l"}, dir, dir, false},
		{"bob: relative home and shell", user("bob"), passwd, nil, []string{"/bin/sh", "-l"}, "/home/bob", "/", false},
		{"carol: not in passwd", user("carol"), passwd, nil, []string{"/bin/sh", "-l"}, "/home/carol", "/", false},
		{"fifo", user("alice"), fifo, nil, []string{"/bin/sh", "-l"}, "/home/alice", "/", false},
		{"daemon", daemon, passwd, nil, []string{"/bin/sh", "-l"}, "/root", "", true},
		{"command", daemon, passwd, []string{"sh", "-c", "x"}, []string{"/bin/sh", "-c", "x"}, "/root", "", true},
	}
	for _, tt := range tests {
		h := &shellHost{c: tt.c, pts: -1, passwd: tt.passwd}
		done := make(chan struct{})
		var sp supervise.Spec
		var err error
		go func() {
			sp, err = h.Command(supervise.ShellRequest{Argv: tt.argv})
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: Command blocks", tt.name)
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if tt.exec[0] == "/bin/sh" && sp.Exec[0] != "/bin/sh" && sp.Exec[0] != "/usr/bin/sh" {
			t.Errorf("%s: exec %q, want %q", tt.name, sp.Exec, tt.exec)
		} else if tt.exec[0] != "/bin/sh" && !slices.Equal(sp.Exec, tt.exec) {
			t.Errorf("%s: exec %q, want %q", tt.name, sp.Exec, tt.exec)
		}
		if sp.Env["HOME"] != tt.home || (tt.dir != "" && sp.Dir != tt.dir) || sp.Env["TERM"] != "xterm" {
			t.Errorf("%s: HOME %q, dir %q, TERM %q; want %q, %q, xterm", tt.name, sp.Env["HOME"], sp.Dir, sp.Env["TERM"], tt.home, tt.dir)
		}
		if got := slices.Contains(sp.Confine, "--nnp"); got != tt.nnp {
			t.Errorf("%s: confine %q, want --nnp %v", tt.name, sp.Confine, tt.nnp)
		}
	}
	h := &shellHost{c: daemon, pts: -1}
	if _, err := h.Command(supervise.ShellRequest{Argv: []string{"no-such-command-nest"}}); err == nil {
		t.Error("Command of a command that is not there = nil error")
	}
	if _, _, err := h.Terminal(); err == nil {
		t.Error("Terminal without a devpts = nil error")
	}
}

// TestLoadConfigBuiltin: at boot a missing config file is the built-in
// config, and the containers.d beside it is read all the same; nest up
// (no built-in) wants the file.
func TestLoadConfigBuiltin(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "nest.toml")
	if err := config.WriteFile(config.DirFor(path), "db.toml", []byte("kind = \"user\"\n")); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := cfg.Container("db"); !ok || cfg.Source != config.BuiltIn {
		t.Errorf("loadConfig(missing, builtin) = %s with %d containers, want the built-in one with db", cfg.Source, len(cfg.Containers))
	}
	if _, err := loadConfig(path, false); err == nil {
		t.Error("loadConfig(missing, no builtin) = nil error")
	}
	if err := os.WriteFile(path, []byte("[container.db]\nkind = \"daemon\"\nexec = [\"/bin/true\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(path, false); err == nil {
		t.Error("loadConfig with db inline and in containers.d = nil error")
	}
}
