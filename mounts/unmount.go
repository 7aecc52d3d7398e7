package mounts

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// Info is one line of /proc/self/mountinfo.
type Info struct {
	ID, Parent int
	Target     string
	Type       string
	Source     string
	Options    string // per-mount options (ro, nosuid, ...)
}

// ReadInfo parses /proc/self/mountinfo (or any reader in that format), in
// mount order.
func ReadInfo(r io.Reader) ([]Info, error) {
	var out []Info
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			return nil, fmt.Errorf("mountinfo: no separator in %q", line)
		}
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if len(f) < 6 || len(g) < 2 {
			return nil, fmt.Errorf("mountinfo: short line %q", line)
		}
		var in Info
		if _, err := fmt.Sscan(f[0], &in.ID); err != nil {
			return nil, fmt.Errorf("mountinfo: %q: %w", line, err)
		}
		if _, err := fmt.Sscan(f[1], &in.Parent); err != nil {
			return nil, fmt.Errorf("mountinfo: %q: %w", line, err)
		}
		in.Target = unescape(f[4])
		in.Options = f[5]
		in.Type, in.Source = g[0], unescape(g[1])
		out = append(out, in)
	}
	return out, sc.Err()
}

// unescape undoes mountinfo's octal escapes (\040 for space, ...).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v int
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// virtual file systems hold nothing to flush; shutdown leaves them mounted
// (the console, /proc and /dev stay usable to the very end).
var virtual = map[string]bool{
	"proc": true, "sysfs": true, "devtmpfs": true, "devpts": true, "tmpfs": true,
	"ramfs": true, "rootfs": true, "cgroup": true, "cgroup2": true, "mqueue": true,
	"securityfs": true, "debugfs": true, "tracefs": true, "bpf": true, "pstore": true,
	"efivarfs": true, "configfs": true, "fusectl": true, "hugetlbfs": true,
	"binfmt_misc": true, "autofs": true, "nsfs": true,
}

// UnmountAll unmounts every mount that holds data, newest first, and
// remounts read-only what cannot be unmounted (the root among them), so
// that everything written reaches the disk. logf reports each step.
func UnmountAll(logf func(string, ...any)) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	infos, err := ReadInfo(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("unmount: %w", err)
	}
	var errs []error
	for i := len(infos) - 1; i >= 0; i-- {
		in := infos[i]
		if virtual[in.Type] {
			continue
		}
		if in.Target != "/" {
			if err := unix.Unmount(in.Target, 0); err == nil {
				logf("unmounted %s", in.Target)
				continue
			} else if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue // already gone with a parent
			}
		}
		err := unix.Mount("", in.Target, "", unix.MS_REMOUNT|unix.MS_RDONLY, "")
		if err != nil {
			errs = append(errs, fmt.Errorf("remount %s read-only: %w", in.Target, err))
			continue
		}
		logf("remounted %s read-only", in.Target)
	}
	return errors.Join(errs...)
}
