// Package mounts owns the file-system mounts an init makes: the early API
// mounts of PID 1 (/proc, /sys, /dev, /run, cgroup2, ...), the move of an
// initramfs root to a mount that pivot_root accepts, user-configured mounts,
// and the unmount at shutdown. It never decides when to mount: callers do.
package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Mount is one mount to make. A target that already holds a file system of
// Magic is left alone, so the same table works from an initramfs, a disk
// root, or inside a container that already has its API mounts.
type Mount struct {
	Source string
	Target string
	Type   string
	Flags  uintptr
	Data   string
	Mode   os.FileMode // of the target directory when it is created
	Magic  int64       // statfs f_type of Type
	// Fallback data to try when Data is refused (an option the kernel
	// does not know).
	Fallback []string
}

func (m Mount) String() string {
	return fmt.Sprintf("%s on %s type %s (%s)", m.Source, m.Target, m.Type, m.Data)
}

// Early is PID 1's table, in order.
var Early = []Mount{
	{Source: "proc", Target: "/proc", Type: "proc", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Mode: 0o555, Magic: unix.PROC_SUPER_MAGIC},
	{Source: "sysfs", Target: "/sys", Type: "sysfs", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Mode: 0o555, Magic: unix.SYSFS_MAGIC},
	{Source: "devtmpfs", Target: "/dev", Type: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755", Mode: 0o755, Magic: unix.TMPFS_MAGIC},
	{Source: "devpts", Target: "/dev/pts", Type: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: "newinstance,ptmxmode=0666,mode=0620,gid=5", Mode: 0o755, Magic: unix.DEVPTS_SUPER_MAGIC},
	{Source: "shm", Target: "/dev/shm", Type: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777", Mode: 0o1777, Magic: unix.TMPFS_MAGIC},
	{Source: "mqueue", Target: "/dev/mqueue", Type: "mqueue", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Mode: 0o755, Magic: mqueueMagic},
	{Source: "tmpfs", Target: "/run", Type: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755", Mode: 0o755, Magic: unix.TMPFS_MAGIC},
	// nsdelegate makes cgroup namespaces delegation boundaries, which nested
	// inits rely on; memory_recursiveprot (5.7) where the kernel has it.
	{Source: "cgroup2", Target: "/sys/fs/cgroup", Type: "cgroup2", Flags: unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, Data: "nsdelegate,memory_recursiveprot", Fallback: []string{"nsdelegate", ""}, Mode: 0o755, Magic: unix.CGROUP2_SUPER_MAGIC},
}

// Mounted reports whether target is a mount point of a file system with the
// given statfs magic. A directory on its parent's file system is not.
func Mounted(target string, magic int64) bool {
	var fs unix.Statfs_t
	if err := unix.Statfs(target, &fs); err != nil || fs.Type != magic {
		return false
	}
	if target == "/" {
		return true
	}
	var st, parent unix.Stat_t
	if unix.Lstat(target, &st) != nil || unix.Lstat(filepath.Dir(target), &parent) != nil {
		return false
	}
	return st.Dev != parent.Dev
}

// Do makes m unless it is already there. It reports whether it mounted.
func (m Mount) Do() (bool, error) {
	if m.Magic != 0 && Mounted(m.Target, m.Magic) {
		return false, nil
	}
	if err := os.MkdirAll(m.Target, m.Mode|0o700); err != nil {
		return false, fmt.Errorf("mount %s: %w", m.Target, err)
	}
	data := append([]string{m.Data}, m.Fallback...)
	var err error
	for _, d := range data {
		err = unix.Mount(m.Source, m.Target, m.Type, m.Flags, d)
		if err != unix.EINVAL || len(data) == 1 {
			break
		}
	}
	if err != nil {
		return false, fmt.Errorf("mount %s: %w", m, err)
	}
	return true, nil
}

// MountAll makes every mount of table in order and returns every failure;
// one failed mount does not stop the others.
func MountAll(table []Mount) error {
	var errs []error
	for _, m := range table {
		if _, err := m.Do(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// DevLinks are the /dev symlinks that devtmpfs does not make.
var DevLinks = [][2]string{
	{"/proc/self/fd", "/dev/fd"},
	{"/proc/self/fd/0", "/dev/stdin"},
	{"/proc/self/fd/1", "/dev/stdout"},
	{"/proc/self/fd/2", "/dev/stderr"},
	{"/proc/kcore", "/dev/core"},
}

// Links makes each symlink [old, new] unless new exists.
func Links(links [][2]string) error {
	var errs []error
	for _, l := range links {
		if err := os.Symlink(l[0], l[1]); err != nil && !errors.Is(err, os.ErrExist) {
			errs = append(errs, fmt.Errorf("symlink %s: %w", l[1], err))
		}
	}
	return errors.Join(errs...)
}

// ParseOptions splits mount(8)-style options into flags and the data
// string that the file system itself reads.
func ParseOptions(opts []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range opts {
		if f, ok := optionFlags[o]; ok {
			if f.clear {
				flags &^= f.flag
			} else {
				flags |= f.flag
			}
			continue
		}
		data = append(data, o)
	}
	return flags, strings.Join(data, ",")
}

var optionFlags = map[string]struct {
	flag  uintptr
	clear bool
}{
	"ro":          {unix.MS_RDONLY, false},
	"rw":          {unix.MS_RDONLY, true},
	"nosuid":      {unix.MS_NOSUID, false},
	"suid":        {unix.MS_NOSUID, true},
	"nodev":       {unix.MS_NODEV, false},
	"dev":         {unix.MS_NODEV, true},
	"noexec":      {unix.MS_NOEXEC, false},
	"exec":        {unix.MS_NOEXEC, true},
	"sync":        {unix.MS_SYNCHRONOUS, false},
	"async":       {unix.MS_SYNCHRONOUS, true},
	"noatime":     {unix.MS_NOATIME, false},
	"atime":       {unix.MS_NOATIME, true},
	"nodiratime":  {unix.MS_NODIRATIME, false},
	"relatime":    {unix.MS_RELATIME, false},
	"norelatime":  {unix.MS_RELATIME, true},
	"strictatime": {unix.MS_STRICTATIME, false},
	"lazytime":    {unix.MS_LAZYTIME, false},
	"dirsync":     {unix.MS_DIRSYNC, false},
	"mand":        {unix.MS_MANDLOCK, false},
	"nomand":      {unix.MS_MANDLOCK, true},
}

// mqueueMagic is MQUEUE_MAGIC from linux/magic.h (x/sys/unix lacks it).
const mqueueMagic = 0x19800202
