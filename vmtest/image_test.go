package vmtest

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"
)

// readCPIO reads an archive back with u-root's reader, keyed by name, and
// checks that every record's parent came before it.
func readCPIO(t *testing.T, path string) map[string]cpio.Record {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	recs, err := cpio.ReadAllRecords(cpio.Newc.Reader(f))
	if err != nil {
		t.Fatalf("ReadAllRecords(%s) = %v", path, err)
	}
	byName := map[string]cpio.Record{}
	for _, r := range recs {
		if _, dup := byName[r.Name]; dup {
			t.Errorf("archive has %s twice", r.Name)
		}
		if dir := filepath.Dir(r.Name); dir != "." {
			if _, ok := byName[dir]; !ok {
				t.Errorf("archive has %s before its parent %s", r.Name, dir)
			}
		}
		byName[r.Name] = r
	}
	return byName
}

func recordData(t *testing.T, r cpio.Record) string {
	t.Helper()
	b, err := io.ReadAll(io.NewSectionReader(r.ReaderAt, 0, int64(r.FileSize)))
	if err != nil {
		t.Fatalf("read %s: %v", r.Name, err)
	}
	return string(b)
}

func TestWriteCPIO(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "hostfile")
	if err := os.WriteFile(host, []byte("from the host"), 0o750); err != nil {
		t.Fatal(err)
	}
	img := NewImage()
	img.AddFile("/init", host, 0o755)
	img.AddFile("/deep/er/file", host, 0) // host mode, parents created
	img.AddBytes("etc/config.toml", []byte("x = 1\n"), 0o644)
	img.AddBytes("/etc/config.toml", []byte("x = 2\n"), 0o600) // last one wins
	img.AddSymlink("/bin/sh", "/bin/busybox")
	img.AddDir("/var/empty", 0o700)
	img.AddDir("/sticky", 0o1777)
	img.AddDir("/sticky", os.ModeSticky|0o777) // same thing, Go's spelling
	out := filepath.Join(dir, "initrd.cpio")
	if err := img.WriteCPIO(out); err != nil {
		t.Fatalf("WriteCPIO() = %v", err)
	}
	recs := readCPIO(t, out)

	tests := []struct {
		name string
		mode uint64
		data string
	}{
		{"init", cpio.S_IFREG | 0o755, "from the host"},
		{"deep", cpio.S_IFDIR | 0o755, ""},
		{"deep/er", cpio.S_IFDIR | 0o755, ""},
		{"deep/er/file", cpio.S_IFREG | 0o750, "from the host"},
		{"etc/config.toml", cpio.S_IFREG | 0o600, "x = 2\n"},
		{"bin", cpio.S_IFDIR | 0o755, ""},
		{"bin/sh", cpio.S_IFLNK | 0o777, "/bin/busybox"},
		{"var", cpio.S_IFDIR | 0o755, ""},
		{"var/empty", cpio.S_IFDIR | 0o700, ""},
		{"dev", cpio.S_IFDIR | 0o755, ""},
		{"proc", cpio.S_IFDIR | 0o755, ""},
		{"sys", cpio.S_IFDIR | 0o755, ""},
		{"run", cpio.S_IFDIR | 0o755, ""},
		{"etc", cpio.S_IFDIR | 0o755, ""},
		{"tmp", cpio.S_IFDIR | 0o1777, ""},
		{"sticky", cpio.S_IFDIR | 0o1777, ""},
		{"dev/console", cpio.S_IFCHR | 0o600, ""},
	}
	for _, tt := range tests {
		r, ok := recs[tt.name]
		if !ok {
			t.Errorf("record %s missing; have %v", tt.name, img.Paths())
			continue
		}
		if r.Mode != tt.mode {
			t.Errorf("record %s mode = %#o, want %#o", tt.name, r.Mode, tt.mode)
		}
		if got := recordData(t, r); got != tt.data {
			t.Errorf("record %s data = %q, want %q", tt.name, got, tt.data)
		}
		if r.MTime != 0 || r.UID != 0 || r.GID != 0 {
			t.Errorf("record %s mtime/uid/gid = %d/%d/%d, want 0/0/0", tt.name, r.MTime, r.UID, r.GID)
		}
	}
	if c := recs["dev/console"]; c.Rmajor != 5 || c.Rminor != 1 {
		t.Errorf("dev/console rdev = %d,%d, want 5,1", c.Rmajor, c.Rminor)
	}
	if len(recs) != len(tests) {
		t.Errorf("archive has %d records, want %d: %v", len(recs), len(tests), img.Paths())
	}

	// Reproducible: the same image writes the same bytes.
	out2 := filepath.Join(dir, "again.cpio")
	if err := img.WriteCPIO(out2); err != nil {
		t.Fatalf("WriteCPIO() again = %v", err)
	}
	a, _ := os.ReadFile(out)
	b, _ := os.ReadFile(out2)
	if !bytes.Equal(a, b) {
		t.Errorf("WriteCPIO() twice gave different archives (%d and %d bytes)", len(a), len(b))
	}
}

func TestZeroImage(t *testing.T) {
	var img Image
	img.AddBytes("/init", []byte("#!/bin/sh\n"), 0o755)
	out := filepath.Join(t.TempDir(), "i.cpio")
	if err := img.WriteCPIO(out); err != nil {
		t.Fatalf("WriteCPIO() = %v", err)
	}
	recs := readCPIO(t, out)
	for _, want := range []string{"init", "dev/console", "tmp"} {
		if _, ok := recs[want]; !ok {
			t.Errorf("zero Image archive lacks %s", want)
		}
	}
}

func TestImageErrors(t *testing.T) {
	tests := []struct {
		name  string
		build func(img *Image)
		want  string
	}{
		{"missing host file", func(img *Image) { img.AddFile("/x", "/nonexistent/nest-file", 0o644) }, "/nonexistent/nest-file"},
		{"host dir", func(img *Image) { img.AddFile("/x", "/", 0o644) }, "not a regular file"},
		{"parent is a file", func(img *Image) {
			img.AddBytes("/a", nil, 0o644)
			img.AddBytes("/a/b", nil, 0o644)
		}, "parent /a is not a directory"},
		{"file over non-empty dir", func(img *Image) {
			img.AddBytes("/a/b", nil, 0o644)
			img.AddBytes("/a", nil, 0o644)
		}, "non-empty directory"},
		{"root", func(img *Image) { img.AddDir("/", 0o755) }, "root directory"},
	}
	for _, tt := range tests {
		img := NewImage()
		tt.build(img)
		out := filepath.Join(t.TempDir(), "x.cpio")
		err := img.WriteCPIO(out)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: WriteCPIO() = %v, want error containing %q", tt.name, err, tt.want)
		}
		if _, serr := os.Stat(out); serr == nil {
			t.Errorf("%s: WriteCPIO() failed but left %s", tt.name, out)
		}
	}
}

func TestAddModules(t *testing.T) {
	k := &Kernel{Version: "6.1.0-test", ModulesDir: fakeModulesDir(t)}
	img := NewImage()
	if err := img.AddModules(k, "virtio_blk"); err != nil {
		t.Fatalf("AddModules(virtio_blk) = %v", err)
	}
	if err := img.AddModules(k, "ext4", "ext2"); err != nil {
		t.Fatalf("AddModules(ext4, ext2) = %v", err)
	}
	if err := img.AddModules(k, "nosuch"); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("AddModules(nosuch) = %v, want error naming it", err)
	}
	out := filepath.Join(t.TempDir(), "m.cpio")
	if err := img.WriteCPIO(out); err != nil {
		t.Fatalf("WriteCPIO() = %v", err)
	}
	recs := readCPIO(t, out)
	dir := "lib/modules/6.1.0-test/"
	for _, f := range []string{
		"kernel/drivers/block/virtio_blk.ko.gz", "kernel/drivers/virtio/virtio.ko.zst",
		"kernel/drivers/virtio/virtio_ring.ko.xz", "kernel/fs/ext4/ext4.ko", "kernel/crypto/crc32c_generic.ko",
		"modules.builtin", "modules.softdep",
	} {
		r, ok := recs[dir+f]
		if !ok {
			t.Errorf("image lacks %s%s", dir, f)
			continue
		}
		host, _ := os.ReadFile(filepath.Join(k.ModulesDir, f))
		if got := recordData(t, r); got != string(host) {
			t.Errorf("image %s%s = %q, want host contents %q", dir, f, got, host)
		}
	}
	if _, ok := recs[dir+"kernel/arch/x86/crypto/crc32c-intel.ko"]; ok {
		t.Errorf("image has crc32c-intel.ko, which nothing asked for")
	}
	wantDep := `kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.zst: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.zst
kernel/crypto/crc32c_generic.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
`
	if got := recordData(t, recs[dir+"modules.dep"]); got != wantDep {
		t.Errorf("modules.dep =\n%s\nwant\n%s", got, wantDep)
	}
	wantAlias := "alias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\nalias virtio:d00000002v* virtio_blk\n"
	if got := recordData(t, recs[dir+"modules.alias"]); got != wantAlias {
		t.Errorf("modules.alias = %q, want %q", got, wantAlias)
	}

	other := &Kernel{Version: "other", ModulesDir: k.ModulesDir}
	if err := img.AddModules(other, "llc"); err == nil {
		t.Errorf("AddModules(kernel other) after 6.1.0-test = nil, want error")
	}
}

func TestBusyboxApplets(t *testing.T) {
	got, err := busyboxApplets([]byte("usr/bin/[\nbin/ash\nsbin/init\nlinuxrc\nbin/sh\nsbin/run-init\n\n"))
	want := []string{"usr/bin/[", "bin/ash", "bin/sh", "sbin/run-init"}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("busyboxApplets() = %q, %v, want %q", got, err, want)
	}
	if _, err := busyboxApplets([]byte("../etc/passwd\n")); err == nil {
		t.Errorf("busyboxApplets(../etc/passwd) = nil error, want error")
	}
}

func TestAddBusybox(t *testing.T) {
	img := NewImage()
	if err := img.AddBusybox(); err != nil {
		t.Fatalf("AddBusybox() = %v", err)
	}
	paths := map[string]bool{}
	for _, p := range img.Paths() {
		paths[p] = true
	}
	for _, want := range []string{"/bin/busybox", "/bin/sh", "/bin/mount", "/sbin/poweroff"} {
		if !paths[want] {
			t.Errorf("AddBusybox() image lacks %s", want)
		}
	}
	for _, bad := range []string{"/sbin/init", "/linuxrc", "/init"} {
		if paths[bad] {
			t.Errorf("AddBusybox() image has %s, which would shadow nest", bad)
		}
	}
}
