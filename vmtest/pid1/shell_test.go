//go:build vmguest

package pid1

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"nest/supervise"
)

// Scenario "nesting" again, as PID 1 with cgroup v2: nest shell and nest
// create where the host tests cannot go.

// TestNestingShell: a shell in a user container runs as its user, in the
// further user and mount namespace of the container's workloads (its
// masks cannot be removed); what a session leaves in the background ends
// with it (its cgroup); a shell two levels down goes through the links.
func TestNestingShell(t *testing.T) {
	until(t, 90*time.Second, "alice/dev running", func() bool {
		out, code := nest(t, "status", "--json", "alice/dev")
		var st supervise.Status
		return code == 0 && json.Unmarshal([]byte(out), &st) == nil && st.State == supervise.StateRunning
	})
	out, code := nest(t, "shell", "alice", "--", "/bin/sh", "-c",
		"whoami; cat /proc/self/uid_map; umount /proc/kcore 2>/dev/null && echo MASK-REMOVED; exit 3")
	if code != 3 || !strings.Contains(out, "alice\r\n") || strings.Contains(out, "MASK-REMOVED") {
		t.Errorf("nest shell alice -- sh -c 'whoami; …; exit 3' = %d %q; want 3, alice, the mask kept", code, out)
	}
	// The workload's user namespace maps alice's ids one to one (her
	// init's maps them to her host range).
	if f := strings.Fields(out[strings.Index(out, "\r\n")+2:]); len(f) < 3 || f[0] != "0" || f[1] != "0" {
		t.Errorf("uid_map of the shell = %q, want an identity map (a further user namespace)", out)
	}

	out, code = nest(t, "shell", "alice", "--", "/bin/sh", "-c", "sleep 4242 & echo started")
	if code != 0 || !strings.Contains(out, "started") {
		t.Fatalf("nest shell alice -- sh -c 'sleep 4242 &' = %d %q", code, out)
	}
	until(t, 5*time.Second, "the session's background sleep to end with it", func() bool {
		return len(processesRunning("sleep", "4242")) == 0
	})

	out, code = nest(t, "shell", "alice/dev", "--", "/bin/sh", "-c", "hostname; whoami; exit 5")
	if code != 5 || !strings.Contains(out, "dev\r\ndev\r\n") {
		t.Errorf("nest shell alice/dev -- sh -c '…; exit 5' = %d %q; want 5, dev twice", code, out)
	}

	// alice makes a child of her own: nest create inside her container
	// talks to her init and writes her containers.d.
	out, code = nest(t, "shell", "alice", "--", "/bin/nest", "create", "inner", "--kind", "daemon", "--", "/bin/sleep", "1000")
	if code != 0 || !strings.Contains(out, "inner: created, running") {
		t.Fatalf("nest create inner inside alice = %d %q", code, out)
	}
	if st := status(t, "alice/inner"); st.State != supervise.StateRunning {
		t.Errorf("alice/inner = %s, want running", st.State)
	}
	if _, err := os.Stat("/var/lib/nest/alice/etc/containers.d/inner.toml"); err != nil {
		t.Errorf("alice's containers.d: %v", err)
	}
	out, code = nest(t, "shell", "alice", "--", "/bin/nest", "rm", "--force", "inner")
	if code != 0 || !strings.Contains(out, "inner: removed") {
		t.Errorf("nest rm --force inner inside alice = %d %q", code, out)
	}
	if _, err := os.Stat("/var/lib/nest/alice/etc/containers.d/inner.toml"); !os.IsNotExist(err) {
		t.Errorf("inner.toml after rm inside alice: %v", err)
	}
}

// TestNestingCreate: nest create under PID 1 writes
// /etc/nest/containers.d/NAME.toml and starts the container with its
// limits (cgroup v2); nest rm removes the file, the unit and the cgroup.
func TestNestingCreate(t *testing.T) {
	out, code := nest(t, "create", "web2", "--kind", "daemon", "--pids", "16", "--", "/bin/sleep", "1000")
	if code != 0 || !strings.Contains(out, "web2: created, running") {
		t.Fatalf("nest create web2 = %d %q", code, out)
	}
	file := readFile(t, "/etc/nest/containers.d/web2.toml")
	if !strings.Contains(file, "level = 1\n") || !strings.Contains(file, "pids = 16\n") {
		t.Errorf("web2.toml:\n%s", file)
	}
	out, code = nest(t, "shell", "web2", "--", "/bin/cat", "/sys/fs/cgroup/pids.max")
	if code != 0 || !strings.Contains(out, "16\r\n") {
		t.Errorf("pids.max seen in web2 = %d %q, want 16", code, out)
	}
	if out, code := nest(t, "rm", "web2"); code != 1 || !strings.Contains(out, "--force") {
		t.Errorf("nest rm of the running web2 = %d %q, want 1 asking for --force", code, out)
	}
	if out, code := nest(t, "rm", "--force", "web2"); code != 0 {
		t.Fatalf("nest rm --force web2 = %d %q", code, out)
	}
	for _, p := range []string{"/etc/nest/containers.d/web2.toml", "/sys/fs/cgroup/containers/web2"} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s after nest rm: %v, want it gone", p, err)
		}
	}
	if out, code := nest(t, "status", "web2"); code != 1 {
		t.Errorf("nest status web2 after rm = %d %q, want no such unit", code, out)
	}
}

// processesRunning lists the pids whose command line is argv.
func processesRunning(argv ...string) []int {
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline")); bytes.Equal(b, want) {
			out = append(out, pid)
		}
	}
	return out
}
