package rootfs

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func owner(t *testing.T, path string) int {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Sys().(*syscall.Stat_t).Uid)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func TestStateLifecycle(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: entries are chowned to the container's root")
	}
	root := t.TempDir()
	s := StateOf(root, "alice")
	if err := s.Prepare(100000); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(s.Dir); fi.Mode().Perm() != 0o711 || owner(t, s.Dir) != 0 {
		t.Errorf("state dir: mode %v owner %d, want 0711 and root", fi.Mode().Perm(), owner(t, s.Dir))
	}
	for _, e := range entries {
		if got := owner(t, s.Path(e)); got != 100000 {
			t.Errorf("%s owned by %d, want 100000", e, got)
		}
	}
	// What the container wrote, and a symlink out that nobody may follow.
	outside := filepath.Join(root, "outside")
	os.WriteFile(outside, []byte("keep"), 0o644)
	os.WriteFile(s.Path(Home)+"/notes", []byte("mine"), 0o644)
	os.MkdirAll(s.Path(Upper)+"/usr/bin", 0o755)
	os.Symlink(root, s.Path(Upper)+"/escape")
	// A second Prepare leaves existing entries alone.
	os.Chown(s.Path(Home), 100001, 100001)
	if err := s.Prepare(100000); err != nil {
		t.Fatal(err)
	}
	if owner(t, s.Path(Home)) != 100001 {
		t.Error("Prepare changed an existing entry")
	}

	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]bool{
		s.Path(Upper): false, s.Path(Work): false, s.Path(Home) + "/notes": true,
		s.Path(Etc): true, outside: true,
	} {
		if exists(path) != want {
			t.Errorf("after reset: %s exists = %v, want %v", path, !want, want)
		}
	}
	if err := s.Remove(false); err != nil {
		t.Fatal(err)
	}
	if !exists(s.Path(Home)+"/notes") || exists(s.Path(Lib)) {
		t.Error("rm must keep the home and only the home")
	}
	if err := s.Remove(true); err != nil {
		t.Fatal(err)
	}
	if exists(s.Dir) || !exists(outside) {
		t.Errorf("rm --purge: state dir exists = %v, outside file exists = %v", exists(s.Dir), exists(outside))
	}
}

func TestPrepareRefusesForeignDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	root := t.TempDir()
	s := StateOf(root, "bob")
	os.Mkdir(s.Dir, 0o711)
	os.Chown(s.Dir, 100000, 100000)
	if err := s.Prepare(100000); err == nil {
		t.Fatal("Prepare used a state directory the container owns")
	}
	// A symlink in place of the directory is refused too.
	s2 := StateOf(root, "eve")
	os.Symlink("/etc", s2.Dir)
	if err := s2.Prepare(100000); err == nil {
		t.Fatal("Prepare followed a symlink")
	}
}
