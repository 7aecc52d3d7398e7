package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/supervise"
)

// TestUpUserContainers runs nest up as root on this host (cgroup v1: no
// limits, pidfds only) with a tree of three levels below it — a user
// container seeing the host's root through an idmapped overlay, a user
// container inside it, and a daemon container inside that — and checks
// the tree, copy-up, the user's name, and that a stop leaves no process
// behind. nest up runs in a mount namespace of its own with its state and
// logs on a tmpfs of the test (nested user containers need their state
// on a file system other than their base).
func TestUpUserContainers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := shortTempDir(t)
	state, logs := filepath.Join(dir, "state"), filepath.Join(dir, "logs")
	for _, d := range []string{state, logs} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount("tmpfs", state, "tmpfs", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(state, unix.MNT_DETACH) })
	// alice's own config (in her state, her /etc/nest) adds a service.
	aliceEtc := filepath.Join(state, "alice", "etc")
	if err := os.MkdirAll(aliceEtc, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(filepath.Dir(aliceEtc), 0o711)
	err := os.WriteFile(filepath.Join(aliceEtc, "nest.toml"), []byte("[[service]]\nname = \"extra\"\nexec = [\"/bin/sleep\", \"1000\"]\n"), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	conf, sock := filepath.Join(dir, "nest.toml"), filepath.Join(dir, "nest.sock")
	err = os.WriteFile(conf, []byte(`console = "none"

[container.alice]
kind = "user"

[[container.alice.service]]
name = "work"
exec = ["/bin/sh", "-c", "head -1 /etc/passwd > /home/alice/who; echo new > /usr/from-alice; exec sleep 1000"]

[container.alice.container.dev]
kind = "user"

[container.alice.container.dev.container.leaf]
kind = "daemon"
exec = ["/bin/sh", "-c", "grep ^alice: /etc/passwd; exec sleep 1000"]
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	script := fmt.Sprintf("mount --bind %s /var/lib/nest && mount --bind %s /var/log/nest && exec %s up -c %s --socket %s",
		state, logs, nestBin, conf, sock)
	os.MkdirAll("/var/lib/nest", 0o700)
	os.MkdirAll("/var/log/nest", 0o755)
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { killTree(cmd.Process.Pid); return nil }
	cmd.WaitDelay = 3 * time.Second
	r, err := launch(t, upModes[0], cmd)
	if err != nil {
		t.Fatal(err)
	}

	var tree []supervise.Status
	paths := []string{"alice", "alice/work", "alice/extra", "alice/dev", "alice/dev/leaf", "alice/dev/leaf/leaf"}
	for {
		out, _, code := nestCLI(ctx, "--socket", sock, "ls", "--tree", "--json")
		tree = nil
		ok := code == 0 && json.Unmarshal([]byte(out), &tree) == nil
		for _, p := range paths {
			if u := unitAt(tree, p); ok && (u == nil || u.State != supervise.StateRunning) {
				ok = false
			}
		}
		if ok {
			break
		}
		if r.exited() || ctx.Err() != nil {
			t.Fatalf("want %v running; nest ls --tree --json = %d %s\n%s", paths, code, out, r.describe())
		}
		time.Sleep(50 * time.Millisecond)
	}

	// What alice wrote is in her upper layer, owned by her mapped root;
	// the host's /usr does not have it. The leaf two levels down sees her
	// layer below dev's: her passwd line, kept under dev's own.
	upper := filepath.Join(state, "alice", "upper", "usr", "from-alice")
	var st syscall.Stat_t
	for syscall.Stat(upper, &st) != nil && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	if st.Uid < 100000 {
		t.Errorf("%s owned by host uid %d, want alice's mapped root", upper, st.Uid)
	}
	if _, err := os.Stat("/usr/from-alice"); err == nil {
		t.Error("alice's copy-up reached the host's /usr")
	}
	if b, _ := os.ReadFile(filepath.Join(state, "alice", "home", "who")); !strings.HasPrefix(string(b), "alice:x:0:0:") {
		t.Errorf("alice's first passwd line = %q, want alice as uid 0", b)
	}
	leafLog := filepath.Join(state, "alice", "lib", "dev", "log", "leaf.log")
	for {
		b, _ := os.ReadFile(leafLog)
		if strings.Contains(string(b), "alice:x:0:0:") {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the leaf never saw alice's layer (her passwd line): %s = %q", leafLog, b)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The leaf's log two links down, as dev's init keeps it; followed, it
	// stays open for what comes.
	if out, errOut, code := nestCLI(ctx, "--socket", sock, "logs", "alice/dev/leaf"); code != 0 || !strings.Contains(out, "alice:x:0:0:") {
		t.Errorf("nest logs alice/dev/leaf = %d %q %q, want the leaf's passwd line", code, out, errOut)
	}
	followCtx, stopFollow := context.WithTimeout(ctx, 2*time.Second)
	out, _, code := nestCLI(followCtx, "--socket", sock, "logs", "-f", "alice/dev/leaf")
	stopFollow()
	if code != -1 || !strings.Contains(out, "alice:x:0:0:") {
		t.Errorf("nest logs -f alice/dev/leaf = %d %q, want the leaf's passwd line and still following after 2 s", code, out)
	}

	// Every process of alice's tree, held by pidfds (pids could be reused).
	alice := unitAt(tree, "alice")
	mappedRoot(t, alice.Pid)
	var fds []int
	for _, pid := range append([]int{alice.Pid}, descendants(procChildren(), alice.Pid)...) {
		if fd, err := pidfd(t, pid); err == nil {
			fds = append(fds, fd)
		}
	}
	if len(fds) < 6 {
		t.Errorf("alice's tree has %d processes, want 6 (three inits and three services)", len(fds))
	}
	if out, errOut, code := nestCLI(ctx, "--socket", sock, "stop", "alice"); code != 0 {
		t.Fatalf("nest stop alice = %d %s%s", code, out, errOut)
	}
	// (pidfd closes them at the test's end: closing one here too would
	// let that cleanup signal whatever reused the number.)
	for _, fd := range fds {
		if !processGone(fd) {
			t.Errorf("a process of alice's tree is left after stop")
		}
	}
	if err := r.signal(ctx, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, ok := r.waitExit(stopWithin); !ok || code != 0 {
		t.Errorf("nest up after SIGTERM = %d (exited %v)\n%s", code, ok, r.describe())
	}
}

// unitAt finds a unit by its path in a tree listing.
func unitAt(list []supervise.Status, path string) *supervise.Status {
	name, rest, deeper := strings.Cut(path, "/")
	for i := range list {
		if list[i].Name == name {
			if !deeper {
				return &list[i]
			}
			return unitAt(list[i].Children, rest)
		}
	}
	return nil
}

// mappedRoot is the host uid that pid's user namespace maps 0 to.
func mappedRoot(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/uid_map", pid))
	f := strings.Fields(string(b))
	if err != nil || len(f) < 3 {
		t.Fatalf("uid_map of %d: %q, %v", pid, b, err)
	}
	var id int
	fmt.Sscan(f[1], &id)
	if id < 100000 {
		t.Fatalf("pid %d maps root to host uid %d, want a range >= 100000", pid, id)
	}
	return id
}
