package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// fakeModules writes modules.dep and modules.builtin into a new directory
// and returns a loader whose insmod records module names instead of
// loading them; modules in fail fail with EPERM, those in loaded with
// EEXIST through insmod's rule (no error).
func fakeModules(t *testing.T, dep, builtin string, fail ...string) (*modLoader, *[]string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if builtin != "" {
		if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte(builtin), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	l, err := newModLoader(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	l.insmod = func(path string) error {
		if !strings.HasPrefix(path, dir+"/") {
			t.Errorf("insmod(%s): not under %s", path, dir)
		}
		name := moduleName(path)
		got = append(got, name)
		if slices.Contains(fail, name) {
			return unix.EPERM
		}
		return nil
	}
	return l, &got
}

const testDep = `kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko: kernel/lib/crc32c-generic.ko
kernel/lib/crc32c-generic.ko:
kernel/drivers/net/dummy.ko.zst:
kernel/a.ko: kernel/b.ko
kernel/b.ko: kernel/a.ko
kernel/needs-builtin.ko: kernel/lib/zlib.ko
`

func TestModLoader(t *testing.T) {
	tests := []struct {
		name    string
		load    []string
		fail    []string
		want    []string // insmod calls, in order
		wantErr string   // of the last load
	}{
		{"dependencies first, each once", []string{"ext4", "jbd2"}, nil,
			[]string{"crc16", "mbcache", "crc32c_generic", "jbd2", "ext4"}, ""},
		{"either spelling", []string{"crc32c-generic", "crc32c_generic"}, nil, []string{"crc32c_generic"}, ""},
		{"compressed name", []string{"dummy"}, nil, []string{"dummy"}, ""},
		{"built in", []string{"zlib", "needs_builtin"}, nil, []string{"needs_builtin"}, ""},
		{"missing", []string{"nosuch"}, nil, nil, "not in "},
		{"failed dependency", []string{"ext4"}, []string{"jbd2"},
			[]string{"crc16", "mbcache", "crc32c_generic", "jbd2"}, "needs jbd2: operation not permitted"},
		{"a failure is remembered", []string{"jbd2", "jbd2"}, []string{"jbd2"}, []string{"crc32c_generic", "jbd2"}, "operation not permitted"},
		{"cycle", []string{"a"}, nil, nil, "dependency cycle: kernel/a.ko -> kernel/b.ko -> kernel/a.ko"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, got := fakeModules(t, testDep, "kernel/lib/zlib.ko\n", tt.fail...)
			var err error
			for _, name := range tt.load {
				err = l.load(name)
			}
			if !slices.Equal(*got, tt.want) {
				t.Errorf("insmod calls = %v, want %v", *got, tt.want)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("load(%v) = %v, want error %q", tt.load, err, tt.wantErr)
			}
		})
	}
}

func TestModLoaderBadDep(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "modules.dep"), []byte("kernel/x.ko:\nno colon here\n"), 0o644)
	if _, err := newModLoader(dir); err == nil || !strings.Contains(err.Error(), "modules.dep:2:") {
		t.Errorf("newModLoader(bad modules.dep) = %v, want an error at line 2", err)
	}
	if _, err := newModLoader(filepath.Join(dir, "none")); err == nil {
		t.Errorf("newModLoader(no directory) = nil error")
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/ext4/ext4.ko":          "ext4",
		"kernel/lib/crc32c-generic.ko.xz": "crc32c_generic",
		"kernel/drivers/net/dummy.ko.zst": "dummy",
		"kernel/x/nf_tables.ko.gz":        "nf_tables",
		"kernel/lib/libcrc32c.ko":         "libcrc32c",
	} {
		if got := moduleName(in); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", in, got, want)
		}
	}
}
