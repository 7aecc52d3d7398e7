//go:build vmguest

package pid1

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/rootfs"
	"nest/supervise"
)

// Scenario "nesting" (vmtest/pid1_test.go): the user container alice on
// an ext4 base, with a user container dev inside, with a daemon container
// leaf inside that: root → alice → dev → leaf, four levels. The state of
// user containers (/var/lib/nest) is a disk of its own.

// userProbe runs as a service inside alice (in the further user and mount
// namespace of her workloads): what a user container must allow
// ("CHECK name ok" or "CHECK name FAILED detail"), then the escape list.
func userProbe() int {
	check := func(name string, ok bool, detail string) {
		verdict := "ok"
		if !ok {
			verdict = "FAILED " + detail
		}
		fmt.Printf("CHECK %s %s\n", name, verdict)
	}
	passwd, _ := os.ReadFile("/etc/passwd")
	check("whoami", strings.HasPrefix(string(passwd), "alice:x:0:0:alice:/home/alice:"), string(passwd))
	err := os.WriteFile("/usr/from-alice", []byte("installed\n"), 0o755)
	check("copy-up", err == nil, fmt.Sprint(err))
	err = os.WriteFile("/home/alice/keep", []byte("mine\n"), 0o644)
	check("home", err == nil, fmt.Sprint(err))
	host, _ := os.ReadFile("/etc/hostname")
	check("hostname", strings.TrimSpace(string(host)) == "alice", string(host))
	_, err = os.Stat("/var/lib/nest/idmap")
	check("parent-state-hidden", os.IsNotExist(err), fmt.Sprint(err))
	entries, err := os.ReadDir("/var/lib/nest")
	names := []string{}
	for _, e := range entries {
		names = append(names, e.Name())
	}
	check("own-state", err == nil && !contains(names, "alice"), strings.Join(names, " "))
	err = unix.Unmount("/run/.nest", unix.MNT_DETACH)
	check("layers-locked", err != nil, "unmounted the cover of the layers")
	hidden, _ := os.ReadDir("/run/.nest")
	check("layers-hidden", len(hidden) == 0, fmt.Sprint(len(hidden), " entries"))
	err = os.WriteFile("/dev/console", []byte("CONSOLE-OF-ALICE\n"), 0)
	check("console", err == nil, fmt.Sprint(err))
	var st syscall.Stat_t
	err = syscall.Stat("/usr/bin", &st)
	check("system-owned-by-root", err == nil && st.Uid == 0, fmt.Sprint(st.Uid, err))
	escapeProbes()
	fmt.Println("PROBE done")
	for {
		time.Sleep(time.Hour)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// findPath finds a unit by its path in a tree listing.
func findPath(list []supervise.Status, path string) *supervise.Status {
	name, rest, deeper := strings.Cut(path, "/")
	for i := range list {
		if list[i].Name != name {
			continue
		}
		if !deeper {
			return &list[i]
		}
		return findPath(list[i].Children, rest)
	}
	return nil
}

func TestNestingTree(t *testing.T) {
	var out string
	until(t, 90*time.Second, "root → alice → dev → leaf running", func() bool {
		var code int
		out, code = nest(t, "ls", "--tree", "--json")
		var list []supervise.Status
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
			return false
		}
		for _, p := range []string{"alice", "alice/probe", "alice/dev", "alice/dev/leaf", "alice/dev/leaf/leaf"} {
			if u := findPath(list, p); u == nil || u.State != supervise.StateRunning {
				return false
			}
		}
		return true
	})
	text, _ := nest(t, "ls", "--tree")
	t.Logf("nest ls --tree:\n%s", text)
	for _, want := range []string{"\nalice ", "\n  alice/dev ", "\n    alice/dev/leaf ", "\n      alice/dev/leaf/leaf "} {
		if !strings.Contains(text, want) {
			t.Errorf("nest ls --tree lacks %q", want)
		}
	}
}

// probeReport waits for a probe's report in a log file and fails for
// every escape and every failed check.
func probeReport(t *testing.T, log string, min int) {
	var out string
	until(t, 60*time.Second, "the report in "+log, func() bool {
		b, _ := os.ReadFile(log)
		out = string(b)
		return strings.Contains(out, "PROBE done")
	})
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "ESCAPED") || strings.Contains(line, "FAILED") {
			t.Errorf("%s: %s", log, line)
		}
	}
	if n := strings.Count(out, " ok\n"); n < min {
		t.Errorf("only %d probes passed in %s:\n%s", n, log, out)
	}
}

func TestNestingUserContainer(t *testing.T) {
	probeReport(t, "/var/lib/nest/alice/log/probe.log", 23)
	// Her /dev/console feeds her log in the root, not the root's console.
	if log := readFile(t, "/var/log/nest/alice.log"); !strings.Contains(log, "CONSOLE-OF-ALICE\n") {
		t.Errorf("alice's console output is not in her log:\n%s", log)
	}
}

func TestNestingDepth4Escapes(t *testing.T) {
	probeReport(t, "/var/lib/nest/alice/lib/dev/log/leaf.log", 13)
}

// TestNestingCopyUp: what alice installed is in her upper layer, owned by
// her mapped root, and nowhere in the root's view or the base.
func TestNestingCopyUp(t *testing.T) {
	up := "/var/lib/nest/alice/upper/usr/from-alice"
	var st syscall.Stat_t
	if err := syscall.Stat(up, &st); err != nil || st.Uid < 100000 {
		t.Errorf("%s: uid %d, %v; want the file, owned by alice's mapped root", up, st.Uid, err)
	}
	for _, p := range []string{"/usr/from-alice", "/base/usr/from-alice"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s is visible outside alice (%v)", p, err)
		}
	}
}

// TestNestingStopResetStart: a stop leaves no process and no cgroup of the
// whole subtree; a reset drops the upper layer and keeps the home; alice
// starts again.
func TestNestingStopResetStart(t *testing.T) {
	first := firstID(t, status(t, "alice").Pid)
	if ids := status(t, "alice").IDs; ids != fmt.Sprintf("%d-%d", first, first+65535) {
		t.Errorf("nest status alice: ids %q, want her range from %d", ids, first)
	}
	if out, code := nest(t, "stop", "alice"); code != 0 {
		t.Fatalf("nest stop alice = %d %s", code, out)
	}
	if st := status(t, "alice"); st.State != supervise.StateStopped {
		t.Fatalf("alice = %s after stop", st.State)
	}
	if left := processesOwnedFrom(first); len(left) > 0 {
		t.Errorf("processes of alice's subtree left after stop: %v", left)
	}
	if _, err := os.Stat("/sys/fs/cgroup/containers/alice"); err == nil {
		t.Error("alice's cgroup is left after stop")
	}

	state := rootfs.StateOf("", "alice")
	if err := state.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(state.Path(rootfs.Upper) + "/usr/from-alice"); !os.IsNotExist(err) {
		t.Errorf("after reset the upper layer still has from-alice (%v)", err)
	}
	if b, err := os.ReadFile(state.Path(rootfs.Home) + "/keep"); err != nil || string(b) != "mine\n" {
		t.Errorf("after reset the home lost keep: %q, %v", b, err)
	}
	os.Remove("/var/lib/nest/alice/log/probe.log")
	if out, code := nest(t, "start", "alice"); code != 0 {
		t.Fatalf("nest start alice = %d %s", code, out)
	}
	probeReport(t, "/var/lib/nest/alice/log/probe.log", 23)
}

// firstID is the first host uid of the range pid's user namespace maps.
func firstID(t *testing.T, pid int) int {
	f := strings.Fields(readFile(t, fmt.Sprintf("/proc/%d/uid_map", pid)))
	if len(f) < 3 {
		t.Fatalf("uid_map of %d: %v", pid, f)
	}
	id, _ := strconv.Atoi(f[1])
	if id < 100000 {
		t.Fatalf("alice maps uid 0 to host uid %d, want a range >= 100000", id)
	}
	return id
}

// processesOwnedFrom lists processes whose real uid is in [first, first+65536).
func processesOwnedFrom(first int) []string {
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/status")
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
				if uid, _ := strconv.Atoi(f[1]); uid >= first && uid < first+65536 {
					out = append(out, e.Name())
				}
			}
		}
	}
	return out
}
