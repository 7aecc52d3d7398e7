package sandbox

// Capabilities and no_new_privs are attributes of a thread, not of a
// process: capset(2) and prctl(2) change only the calling thread, and
// execve(2) carries the calling thread's set into the new program. Go moves
// goroutines between threads, so every function here must run on a
// goroutine that has called runtime.LockOSThread and that calls
// syscall.Exec right after; anything else leaves the other threads of the
// process (and whatever they exec) with the old set.
//
// Kernel features used: capset version 3 (2.6.26), PR_CAPBSET_READ/DROP
// (2.6.25), /proc/sys/kernel/cap_last_cap (3.2), PR_SET_NO_NEW_PRIVS (3.5),
// PR_CAP_AMBIENT (4.3).

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A Cap is a capability number, as in capabilities(7).
type Cap int

var capNames = map[Cap]string{
	unix.CAP_CHOWN:              "CAP_CHOWN",
	unix.CAP_DAC_OVERRIDE:       "CAP_DAC_OVERRIDE",
	unix.CAP_DAC_READ_SEARCH:    "CAP_DAC_READ_SEARCH",
	unix.CAP_FOWNER:             "CAP_FOWNER",
	unix.CAP_FSETID:             "CAP_FSETID",
	unix.CAP_KILL:               "CAP_KILL",
	unix.CAP_SETGID:             "CAP_SETGID",
	unix.CAP_SETUID:             "CAP_SETUID",
	unix.CAP_SETPCAP:            "CAP_SETPCAP",
	unix.CAP_LINUX_IMMUTABLE:    "CAP_LINUX_IMMUTABLE",
	unix.CAP_NET_BIND_SERVICE:   "CAP_NET_BIND_SERVICE",
	unix.CAP_NET_BROADCAST:      "CAP_NET_BROADCAST",
	unix.CAP_NET_ADMIN:          "CAP_NET_ADMIN",
	unix.CAP_NET_RAW:            "CAP_NET_RAW",
	unix.CAP_IPC_LOCK:           "CAP_IPC_LOCK",
	unix.CAP_IPC_OWNER:          "CAP_IPC_OWNER",
	unix.CAP_SYS_MODULE:         "CAP_SYS_MODULE",
	unix.CAP_SYS_RAWIO:          "CAP_SYS_RAWIO",
	unix.CAP_SYS_CHROOT:         "CAP_SYS_CHROOT",
	unix.CAP_SYS_PTRACE:         "CAP_SYS_PTRACE",
	unix.CAP_SYS_PACCT:          "CAP_SYS_PACCT",
	unix.CAP_SYS_ADMIN:          "CAP_SYS_ADMIN",
	unix.CAP_SYS_BOOT:           "CAP_SYS_BOOT",
	unix.CAP_SYS_NICE:           "CAP_SYS_NICE",
	unix.CAP_SYS_RESOURCE:       "CAP_SYS_RESOURCE",
	unix.CAP_SYS_TIME:           "CAP_SYS_TIME",
	unix.CAP_SYS_TTY_CONFIG:     "CAP_SYS_TTY_CONFIG",
	unix.CAP_MKNOD:              "CAP_MKNOD",
	unix.CAP_LEASE:              "CAP_LEASE",
	unix.CAP_AUDIT_WRITE:        "CAP_AUDIT_WRITE",
	unix.CAP_AUDIT_CONTROL:      "CAP_AUDIT_CONTROL",
	unix.CAP_SETFCAP:            "CAP_SETFCAP",
	unix.CAP_MAC_OVERRIDE:       "CAP_MAC_OVERRIDE",
	unix.CAP_MAC_ADMIN:          "CAP_MAC_ADMIN",
	unix.CAP_SYSLOG:             "CAP_SYSLOG",
	unix.CAP_WAKE_ALARM:         "CAP_WAKE_ALARM",
	unix.CAP_BLOCK_SUSPEND:      "CAP_BLOCK_SUSPEND",
	unix.CAP_AUDIT_READ:         "CAP_AUDIT_READ",
	unix.CAP_PERFMON:            "CAP_PERFMON",
	unix.CAP_BPF:                "CAP_BPF",
	unix.CAP_CHECKPOINT_RESTORE: "CAP_CHECKPOINT_RESTORE",
}

// String returns the capability's name, "CAP_SYS_ADMIN", or "CAP_N" for a
// number newer than this package.
func (c Cap) String() string {
	if s, ok := capNames[c]; ok {
		return s
	}
	return "CAP_" + strconv.Itoa(int(c))
}

// ParseCap parses a capability name, with or without "CAP_", in any case:
// "CAP_NET_ADMIN", "net_admin".
func ParseCap(name string) (Cap, error) {
	up := strings.ToUpper(name)
	if !strings.HasPrefix(up, "CAP_") {
		up = "CAP_" + up
	}
	for c, s := range capNames {
		if s == up {
			return c, nil
		}
	}
	return 0, fmt.Errorf("unknown capability %q: want a name from capabilities(7), such as CAP_NET_ADMIN or net_admin", name)
}

// DaemonCaps is the set that daemon containers and `nest run` keep:
// Docker's default 14. It has no CAP_SYS_ADMIN, so the container's root
// cannot unmount the masks over /proc and /sys, nor mount anything.
var DaemonCaps = []Cap{
	unix.CAP_CHOWN,
	unix.CAP_DAC_OVERRIDE,
	unix.CAP_FOWNER,
	unix.CAP_FSETID,
	unix.CAP_KILL,
	unix.CAP_NET_BIND_SERVICE,
	unix.CAP_SETFCAP,
	unix.CAP_SETGID,
	unix.CAP_SETPCAP,
	unix.CAP_SETUID,
	unix.CAP_SYS_CHROOT,
	unix.CAP_AUDIT_WRITE,
	unix.CAP_MKNOD,
	unix.CAP_NET_RAW,
}

// LimitCaps reduces the calling thread to the capabilities in keep: every
// other one leaves the bounding set (up to the kernel's last capability),
// the ambient set is cleared, permitted and effective become keep ∩ the
// current permitted set, and inheritable becomes empty. A program that
// root (uid 0 in its user namespace) execs afterwards gets the bounding
// set as its permitted set, so keep is what it has.
//
// It needs CAP_SETPCAP to drop from the bounding set. Call it on a locked
// OS thread just before syscall.Exec (see the top of this file).
func LimitCaps(keep []Cap) error {
	var mask uint64
	for _, c := range keep {
		if c < 0 || c > 63 {
			return fmt.Errorf("limit capabilities: capability number %d out of range", int(c))
		}
		mask |= 1 << c
	}
	last, err := lastCap()
	if err != nil {
		return fmt.Errorf("limit capabilities: %w", err)
	}
	// The bounding set first: dropping needs CAP_SETPCAP in the effective
	// set, which the capset below may take away.
	for c := Cap(0); c <= last; c++ {
		if mask&(1<<c) != 0 {
			continue
		}
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0)
		if err != nil {
			return fmt.Errorf("limit capabilities: read bounding set %v: %w", c, err)
		}
		if in == 0 {
			continue // dropping it again would need CAP_SETPCAP for nothing
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("limit capabilities: drop %v from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("limit capabilities: clear the ambient set: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3: capabilities 0-31, then 32-63
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("limit capabilities: capget: %w", err)
	}
	for i := range data {
		m := uint32(mask >> (32 * i))
		data[i].Permitted &= m
		data[i].Effective = data[i].Permitted
		data[i].Inheritable = 0
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("limit capabilities: capset: %w", err)
	}
	return nil
}

// NoNewPrivs sets no_new_privs on the calling thread: nothing it execs,
// and none of its descendants, can gain privileges through setuid bits or
// file capabilities. It cannot be unset. Call it on a locked OS thread just
// before syscall.Exec (see the top of this file).
func NoNewPrivs() error {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	return nil
}

// lastCap returns the highest capability the running kernel knows.
func lastCap() (Cap, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		n, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || n < 0 || n > 63 {
			return 0, fmt.Errorf("/proc/sys/kernel/cap_last_cap: %q is no capability number", b)
		}
		return Cap(n), nil
	}
	// No /proc yet (a child init before it mounts its own): ask the
	// kernel, which answers EINVAL for a capability it does not know.
	for c := Cap(0); c <= 63; c++ {
		if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) && c > 0 {
				return c - 1, nil
			}
			return 0, fmt.Errorf("find the last capability: %w", err)
		}
	}
	return 63, nil
}
