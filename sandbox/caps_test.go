package sandbox

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseCap(t *testing.T) {
	tests := []struct {
		in   string
		want Cap
	}{
		{"CAP_NET_ADMIN", unix.CAP_NET_ADMIN},
		{"net_admin", unix.CAP_NET_ADMIN},
		{"Cap_Sys_Admin", unix.CAP_SYS_ADMIN},
		{"chown", 0},
		{"CAP_CHECKPOINT_RESTORE", 40},
	}
	for _, tt := range tests {
		if got, err := ParseCap(tt.in); err != nil || got != tt.want {
			t.Errorf("ParseCap(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
	for _, in := range []string{"", "CAP_", "sys-admin", "CAP_CAP_CHOWN", "all", " chown", "21"} {
		if got, err := ParseCap(in); err == nil {
			t.Errorf("ParseCap(%q) = %v, want an error", in, got)
		}
	}
	_, err := ParseCap("bogus")
	if want := `unknown capability "bogus": want a name from capabilities(7), such as CAP_NET_ADMIN or net_admin`; err == nil || err.Error() != want {
		t.Errorf("ParseCap(bogus) = %v, want %s", err, want)
	}
}

func TestCapString(t *testing.T) {
	tests := []struct {
		c    Cap
		want string
	}{
		{0, "CAP_CHOWN"},
		{21, "CAP_SYS_ADMIN"},
		{40, "CAP_CHECKPOINT_RESTORE"},
		{41, "CAP_41"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Cap(%d).String() = %q, want %q", int(tt.c), got, tt.want)
		}
	}
	// Every known name parses back to its number.
	for c := range Cap(41) {
		if got, err := ParseCap(c.String()); err != nil || got != c {
			t.Errorf("ParseCap(%q) = %v, %v, want %d", c.String(), got, err, int(c))
		}
	}
}

func TestDaemonCaps(t *testing.T) {
	want := []string{"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
		"CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
		"CAP_SETUID", "CAP_SYS_CHROOT"}
	var got []string
	for _, c := range DaemonCaps {
		got = append(got, c.String())
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("DaemonCaps = %v, want %v", got, want)
	}
}

func TestLastCap(t *testing.T) {
	last, err := lastCap()
	if err != nil {
		t.Fatal(err)
	}
	// The answer without /proc, the way LimitCaps finds it before a child
	// init has mounted its own.
	if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(last), 0, 0, 0); err != nil {
		t.Errorf("PR_CAPBSET_READ(lastCap() = %d) = %v", last, err)
	}
	if _, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(last+1), 0, 0, 0); !errors.Is(err, unix.EINVAL) {
		t.Errorf("PR_CAPBSET_READ(lastCap()+1 = %d) = %v, want EINVAL", last+1, err)
	}
}

func mask(cs ...Cap) uint64 {
	var m uint64
	for _, c := range cs {
		m |= 1 << c
	}
	return m
}

// TestLimitCaps limits the capabilities of a fresh root process of the test
// binary and reads back what its thread holds, then tries a mount in a
// mount namespace of its own.
func TestLimitCaps(t *testing.T) {
	helperUsed.Store("limit-caps", true) // also when skipped
	if os.Geteuid() != 0 {
		t.Skip("needs root: LimitCaps drops from the bounding set, the helper unshares a mount namespace")
	}
	tests := []struct {
		name  string
		keep  []Cap
		mount string
	}{
		{"daemon", DaemonCaps, "EPERM"},
		{"none", nil, "EPERM"},
		// The EPERMs above come from LimitCaps, not from the setup.
		{"sys_admin", []Cap{unix.CAP_SYS_ADMIN}, "ok"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var names []string
			for _, c := range tt.keep {
				names = append(names, c.String())
			}
			cmd := helperCommand(t, "limit-caps", strings.Join(names, ","), t.TempDir())
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 3 {
				t.Skipf("helper: %s", out)
			}
			if err != nil {
				t.Fatalf("helper: %v\n%s", err, out)
			}
			got := map[string]string{}
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				k, v, _ := strings.Cut(sc.Text(), ":")
				got[k] = strings.TrimSpace(v)
			}
			hex := func(k string) uint64 {
				n, err := strconv.ParseUint(got[k], 16, 64)
				if err != nil {
					t.Fatalf("helper %s = %q (output %q)", k, got[k], out)
				}
				return n
			}
			keep := mask(tt.keep...)
			for k, want := range map[string]uint64{
				"CapBnd": keep & hex("before CapBnd"),
				"CapPrm": keep & hex("before CapPrm"),
				"CapEff": keep & hex("before CapPrm"),
				"CapInh": 0,
				"CapAmb": 0,
			} {
				if g := hex(k); g != want {
					t.Errorf("after LimitCaps(%v): %s = %016x, want %016x", names, k, g, want)
				}
			}
			if slices.Equal(tt.keep, DaemonCaps) {
				bnd := hex("CapBnd")
				if bnd&(1<<unix.CAP_SYS_ADMIN) != 0 || bnd&(1<<unix.CAP_CHOWN) == 0 {
					t.Errorf("after LimitCaps(DaemonCaps): CapBnd = %016x, want CAP_CHOWN (bit 0) and no CAP_SYS_ADMIN (bit 21)", bnd)
				}
			}
			if got["NoNewPrivs"] != "1" {
				t.Errorf("after NoNewPrivs: NoNewPrivs = %q, want 1", got["NoNewPrivs"])
			}
			if got["mount"] != tt.mount {
				t.Errorf("mount tmpfs after LimitCaps(%v) = %s, want %s", names, got["mount"], tt.mount)
			}
		})
	}
}

// helperLimitCaps runs on one locked thread: it enters a private mount
// namespace, prints the capability sets, calls LimitCaps with the
// comma-separated names in args[0] and NoNewPrivs, prints the sets again
// and whether mounting a tmpfs on args[1] works. Exit status 3: cannot
// run here.
func helperLimitCaps(args ...string) int {
	runtime.LockOSThread() // never unlocked: the thread dies with the process
	var keep []Cap
	for name := range strings.SplitSeq(args[0], ",") {
		if name == "" {
			continue
		}
		c, err := ParseCap(name)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		keep = append(keep, c)
	}
	// Only this thread enters the new namespace; making it private first
	// means even a mount that should have failed stays in it.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		fmt.Printf("unshare a mount namespace: %v\n", err)
		return 3
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintln(os.Stderr, "make / private:", err)
		return 1
	}
	if err := printStatus("before "); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := LimitCaps(keep); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := NoNewPrivs(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := printStatus(""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	switch err := unix.Mount("tmpfs", args[1], "tmpfs", 0, ""); {
	case err == nil:
		unix.Unmount(args[1], 0)
		fmt.Println("mount: ok")
	case errors.Is(err, unix.EPERM):
		fmt.Println("mount: EPERM")
	default:
		fmt.Println("mount:", err)
	}
	return 0
}

// printStatus prints the capability lines and NoNewPrivs of the calling
// thread's status, each name prefixed.
func printStatus(prefix string) error {
	b, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "Cap") || strings.HasPrefix(line, "NoNewPrivs:") {
			fmt.Print(prefix + line)
		}
	}
	return nil
}
