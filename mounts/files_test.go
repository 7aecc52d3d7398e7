package mounts

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// helperEnv makes the test binary run filesHelper instead of the tests:
// mounts need a mount namespace of their own, which only a process that
// starts in one (unshare -m) can have.
const helperEnv = "NEST_MOUNTS_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "files" {
		if err := filesHelper(os.Args[1]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// filesHelper covers dir/hosts with a generated file, rewrites it, and
// checks what the covered path shows each time.
func filesHelper(dir string) error {
	target := filepath.Join(dir, "hosts")
	f, err := NewFiles()
	if err != nil {
		return err
	}
	if err := f.Write("hosts", []byte("one\n")); err != nil {
		return err
	}
	via := filepath.Join(dir, "via")
	if err := os.Mkdir(via, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(via, "mine"), nil, 0o644); err != nil {
		return err
	}
	if err := f.Bind(via, map[string]string{"hosts": target}); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(via, "mine")); err != nil {
		return fmt.Errorf("%s does not show its own files again: %w", via, err)
	}
	check := func(want string) error {
		b, err := os.ReadFile(target)
		if err != nil || string(b) != want {
			return fmt.Errorf("%s = %q, %v; want %q", target, b, err, want)
		}
		return nil
	}
	if err := check("one\n"); err != nil {
		return err
	}
	if err := f.Write("hosts", []byte("two, longer\n")); err != nil {
		return err
	}
	if err := check("two, longer\n"); err != nil {
		return err
	}
	if err := f.Bind(via, map[string]string{"hosts": filepath.Join(dir, "missing")}); err == nil {
		return fmt.Errorf("Bind over a missing file succeeded")
	}
	f.Close()
	return check("two, longer\n")
}

func TestFiles(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: a mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hosts"), []byte("original\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", os.Args[0], dir)
	cmd.Env = append(os.Environ(), helperEnv+"=files")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	// The cover was private to the helper's mount namespace.
	if b, _ := os.ReadFile(filepath.Join(dir, "hosts")); string(b) != "original\n" {
		t.Errorf("hosts outside the helper's namespace = %q, want it untouched", b)
	}
}
