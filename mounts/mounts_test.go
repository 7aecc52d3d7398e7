package mounts

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReadInfo(t *testing.T) {
	in := `22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
40 22 0:35 / /mnt/with\040space rw - tmpfs tmpfs rw
`
	got, err := ReadInfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []Info{
		{ID: 22, Parent: 1, Target: "/", Type: "ext4", Source: "/dev/sda1", Options: "rw,relatime"},
		{ID: 23, Parent: 22, Target: "/proc", Type: "proc", Source: "proc", Options: "rw,nosuid,nodev,noexec"},
		{ID: 40, Parent: 22, Target: "/mnt/with space", Type: "tmpfs", Source: "tmpfs", Options: "rw"},
	}
	if len(got) != len(want) {
		t.Fatalf("ReadInfo = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("ReadInfo[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := ReadInfo(strings.NewReader("garbage\n")); err == nil {
		t.Error("ReadInfo(garbage) = nil error")
	}
}

func TestParseOptions(t *testing.T) {
	tests := []struct {
		in    []string
		flags uintptr
		data  string
	}{
		{nil, 0, ""},
		{[]string{"ro", "noatime", "data=ordered"}, unix.MS_RDONLY | unix.MS_NOATIME, "data=ordered"},
		{[]string{"ro", "rw", "nosuid", "mode=0755", "size=10%"}, unix.MS_NOSUID, "mode=0755,size=10%"},
	}
	for _, tt := range tests {
		flags, data := ParseOptions(tt.in)
		if flags != tt.flags || data != tt.data {
			t.Errorf("ParseOptions(%q) = %#x, %q, want %#x, %q", tt.in, flags, data, tt.flags, tt.data)
		}
	}
}

func TestMounted(t *testing.T) {
	if !Mounted("/proc", unix.PROC_SUPER_MAGIC) {
		t.Error("Mounted(/proc, proc) = false")
	}
	if Mounted("/proc/self", unix.PROC_SUPER_MAGIC) {
		t.Error("Mounted(/proc/self, proc) = true: a directory on its parent's file system is no mount point")
	}
	if Mounted("/proc", unix.SYSFS_MAGIC) {
		t.Error("Mounted(/proc, sysfs) = true")
	}
}

func TestCheckBind(t *testing.T) {
	tests := []struct {
		bind Bind
		ok   bool
	}{
		{Bind{Source: "/srv/data", Target: "/data"}, true},
		{Bind{Source: "/srv", Target: "/srv/../dev/x"}, false},
		{Bind{Source: "/srv", Target: "/proc"}, false},
		{Bind{Source: "/srv", Target: "/sys/fs/cgroup"}, false},
		{Bind{Source: "/srv", Target: "/devices"}, true},
		{Bind{Source: "/srv", Target: "/"}, false},
		{Bind{Source: "/srv", Target: "relative"}, false},
		{Bind{Source: "/proc/1/root", Target: "/mnt"}, false},
		{Bind{Source: "/processes", Target: "/mnt"}, true},
	}
	for _, tt := range tests {
		if err := CheckBind(tt.bind); (err == nil) != tt.ok {
			t.Errorf("CheckBind(%+v) = %v, want ok %v", tt.bind, err, tt.ok)
		}
	}
}
