package mounts

import (
	"errors"
	"fmt"
	"io/fs"
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
	for _, name := range []string{"hosts", "other"} {
		if err := f.Write(name, []byte(name+" one\n")); err != nil {
			return err
		}
	}
	via := filepath.Join(dir, "via")
	if err := os.Mkdir(via, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(via, "mine"), nil, 0o644); err != nil {
		return err
	}
	err = f.Bind(via, map[string]string{"hosts": target, "missing": filepath.Join(dir, "missing"), "other": filepath.Join(dir, "other")})
	if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("Bind with a missing target = %v, want fs.ErrNotExist", err)
	}
	if _, err := os.Stat(filepath.Join(via, "mine")); err != nil {
		return fmt.Errorf("%s does not show its own files again: %w", via, err)
	}
	check := func(path, want string) error {
		b, err := os.ReadFile(path)
		if err != nil || string(b) != want {
			return fmt.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
		return nil
	}
	if err := check(filepath.Join(dir, "other"), "other one\n"); err != nil {
		return err // bound beside the missing one
	}
	if err := check(target, "hosts one\n"); err != nil {
		return err
	}
	if err := f.Write("hosts", []byte("two, longer\n")); err != nil {
		return err
	}
	if err := check(target, "two, longer\n"); err != nil {
		return err
	}
	f.Close()
	return check(target, "two, longer\n")
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
	for _, name := range []string{"hosts", "other"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("original\n"), 0o644); err != nil {
			t.Fatal(err)
		}
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
