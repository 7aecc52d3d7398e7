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

	"nest/config"
	nestnet "nest/net"
	"nest/rootfs"
	"nest/sandbox"
	"nest/supervise"
)

// upInNamespace runs `nest up -c f.conf --socket f.sock` (as a subreaper)
// in a mount namespace of its own whose /var/lib/nest and /var/log/nest
// are empty tmpfs: the id pool, the containers' state and their logs are
// the test's alone. It returns the run and nest's root seen from here
// (/proc/PID/root).
func upInNamespace(t *testing.T, ctx context.Context, f *servicesFixture) (*nestRun, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containers need root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("no unshare: %v", err)
	}
	script := `mkdir -p /var/lib/nest /var/log/nest &&
mount -t tmpfs nest-test /var/lib/nest && mount -t tmpfs nest-test /var/log/nest && exec "$0" "$@"`
	m := upModes[0]
	cmd := exec.CommandContext(ctx, unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script,
		nestBin, "up", "-c", f.conf, "--socket", f.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		killTree(cmd.Process.Pid)
		return nil
	}
	cmd.WaitDelay = 3 * time.Second
	r, err := launch(t, m, cmd)
	if err != nil {
		t.Fatal(err)
	}
	return r, fmt.Sprintf("/proc/%d/root", r.cmd.Process.Pid)
}

// cli runs a CLI verb against the fixture's socket and returns its output
// and status.
func (f *servicesFixture) cli(ctx context.Context, args ...string) (string, int) {
	out, errOut, code := nestCLI(ctx, append([]string{"--socket", f.sock}, args...)...)
	return out + errOut, code
}

// status is the unit name of the fixture's init, or a zero status.
func (f *servicesFixture) status(t *testing.T, ctx context.Context, name string) supervise.Status {
	t.Helper()
	out, _, code := nestCLI(ctx, "--socket", f.sock, "status", "--json", name)
	var st supervise.Status
	if code == 0 {
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("nest status --json %s: %v: %s", name, err, out)
		}
	}
	return st
}

// TestCreateRemoveReset: nest create writes containers.d/NAME.toml beside
// the config (with the newest level) and starts the container, or not;
// bad flags, taken names and missing paths are errors that name the
// problem; reload and a restart of nest up keep created containers; nest
// reset drops a user container's upper layer and keeps its home, a running
// one only with --force; nest rm removes only containers.d ones, a
// running one only with --force, and with them their id range and state
// (the home only with --purge).
func TestCreateRemoveReset(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f := newServicesFixture(t)
	svc, inline := f.name("svc"), "i-"+f.suffix
	d, u := "d-"+f.suffix, "u-"+f.suffix
	f.write(t, service{name: svc, script: "exec sleep 1000"})
	conf, _ := os.ReadFile(f.conf)
	conf = append(conf, fmt.Sprintf("\n[container.%s]\nkind = \"user\"\n", inline)...)
	if err := os.WriteFile(f.conf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(f.dir, "containers.d")
	r, root := upInNamespace(t, ctx, f)
	f.waitUnits(t, ctx, r, svc+" and "+inline+" running", running(svc, inline))

	want := func(code int, sub string, args ...string) string {
		t.Helper()
		out, got := f.cli(ctx, args...)
		if got != code || !strings.Contains(out, sub) {
			t.Fatalf("nest %s = %d %q, want %d with %q\n%s", strings.Join(args, " "), got, out, code, sub, r.describe())
		}
		return out
	}

	want(0, d+": created, running (pid ", "create", d, "--kind", "daemon", "--memory", "64M", "--pids", "100", "--", "/bin/sleep", "1000")
	file, err := os.ReadFile(filepath.Join(dir, d+".toml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"kind = \"daemon\"\n", fmt.Sprintf("level = %d\n", config.SandboxLevel), "memory = \"64M\"\n", "pids = 100\n", "exec = [\"/bin/sleep\", \"1000\"]\n"} {
		if !strings.Contains(string(file), line) {
			t.Errorf("%s.toml has no %q:\n%s", d, line, file)
		}
	}
	want(0, u+": created, stopped", "create", "--kind", "user", "--no-start", u)
	if st := f.status(t, ctx, u); st.State != supervise.StateStopped || st.Kind != "user" {
		t.Errorf("%s after create --no-start: %+v", u, st)
	}

	// What is wrong is said, and nothing is written.
	want(1, "a container named "+d+" exists already ("+filepath.Join(dir, d+".toml")+")", "create", d, "--kind", "user")
	want(1, "a container named "+inline+" exists already ("+f.conf+":", "create", inline, "--kind", "user")
	want(1, "is the name of a service", "create", svc, "--kind", "user")
	want(1, `memory = "2GB": want a whole number`, "create", "x-"+f.suffix, "--kind", "user", "--memory", "2GB")
	want(1, `bind[0].source = "/nonexistent-nest-test": does not exist`, "create", "x-"+f.suffix, "--kind", "user", "--bind", "/nonexistent-nest-test")
	want(1, "want a-z", "create", "X", "--kind", "user")
	want(2, "--kind", "create", "x-"+f.suffix)
	want(2, "-- CMD", "create", "x-"+f.suffix, "--kind", "daemon")
	want(2, "leave out -- CMD", "create", "x-"+f.suffix, "--kind", "user", "--", "/bin/true")
	want(2, "want a container name", "create", "--kind", "user")
	if _, err := os.Stat(filepath.Join(dir, "x-"+f.suffix+".toml")); err == nil {
		t.Error("a refused create left a file")
	}

	// A reload applies the files as they are: the created containers stay
	// as they were.
	dpid := f.status(t, ctx, d).Pid
	want(0, "", "reload")
	if st := f.status(t, ctx, d); st.Pid != dpid || st.State != supervise.StateRunning {
		t.Errorf("%s after reload: %+v, want still pid %d", d, st, dpid)
	}
	if st := f.status(t, ctx, u); st.State != supervise.StateStopped {
		t.Errorf("%s after reload: %+v, want still stopped", u, st)
	}

	// reset: the upper layer goes, the home stays; a running container
	// only with --force, and it runs again after.
	want(0, u+": reset, stopped", "reset", u) // never started: nothing to drop
	want(0, "running", "start", u)
	state := rootfs.StateOf(filepath.Join(root, rootfs.StateRoot), u)
	for _, e := range []string{rootfs.Upper, rootfs.Home} {
		if err := os.WriteFile(filepath.Join(state.Path(e), "file"), []byte(e), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(e string) bool {
		_, err := os.Stat(filepath.Join(state.Path(e), "file"))
		return err == nil
	}
	upid := f.status(t, ctx, u).Pid
	want(1, "is running: stop it first, or nest reset --force", "reset", u)
	out := want(0, u+": reset, running (pid ", "reset", "--force", u)
	if strings.Contains(out, fmt.Sprintf("(pid %d)", upid)) {
		t.Errorf("reset --force of a running container: %q, want a new pid", out)
	}
	if exists(rootfs.Upper) || !exists(rootfs.Home) {
		t.Errorf("after reset: a file in upper %v, in home %v; want only the home's", exists(rootfs.Upper), exists(rootfs.Home))
	}
	want(1, "daemon container", "reset", d)
	want(1, "is a service", "reset", svc)
	want(1, `no container named "nope"`, "reset", "nope")

	// Restarting nest up: boot reads containers.d too.
	if err := r.signal(ctx, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, ok := r.waitExit(10 * time.Second); !ok || code != 0 {
		t.Fatalf("nest up after SIGTERM = %d, %v\n%s", code, ok, r.describe())
	}
	// The second nest up has a tmpfs of its own: the state is new.
	r, root = upInNamespace(t, ctx, f)
	f.waitUnits(t, ctx, r, "all four running", running(svc, inline, d, u))
	state = rootfs.StateOf(filepath.Join(root, rootfs.StateRoot), u)
	if err := os.WriteFile(filepath.Join(state.Path(rootfs.Home), "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	pool, err := os.ReadFile(filepath.Join(root, sandbox.DefaultPoolPath))
	if err != nil || !strings.Contains(string(pool), " "+d+"\n") {
		t.Fatalf("id pool with %s running: %q, %v", d, pool, err)
	}

	// Leases of d and u (as veth containers would have them, u with a
	// subtree below it, as its init would ask for one): rm gives them
	// back, and only theirs.
	netDir := filepath.Join(root, nestnet.DefaultStateDir)
	if err := os.MkdirAll(netDir, 0o700); err != nil {
		t.Fatal(err)
	}
	addresses, subnets := filepath.Join(netDir, "addresses"), filepath.Join(netDir, "subnets")
	os.WriteFile(addresses, []byte(fmt.Sprintf("10.88.0.2 %s\n10.88.0.3 %s\n10.88.0.4 %s\n", d, u, inline)), 0o600)
	os.WriteFile(subnets, []byte(fmt.Sprintf("10.88.1.0/24 %s\n10.88.2.0/24 %s/dev\n10.88.3.0/24 %s/dev/x\n10.88.4.0/24 %s\n", u, u, u, inline)), 0o600)

	// rm: only containers.d ones, a running one with --force.
	want(1, fmt.Sprintf("container %s is defined in %s:", inline, f.conf), "rm", inline)
	want(1, "no container nope in "+dir, "rm", "nope")
	want(1, "is running: stop it first", "rm", d)
	want(0, d+": removed", "rm", d, "--force")
	if _, err := os.Stat(filepath.Join(dir, d+".toml")); err == nil {
		t.Errorf("%s.toml is still there after rm", d)
	}
	if st := f.status(t, ctx, d); st.Name != "" {
		t.Errorf("%s after rm: %+v, want no unit", d, st)
	}
	if pool, _ := os.ReadFile(filepath.Join(root, sandbox.DefaultPoolPath)); strings.Contains(string(pool), " "+d+"\n") {
		t.Errorf("id pool after rm of %s: %q, want its range released", d, pool)
	}
	want(0, u+": removed", "rm", "--force", u)
	if entries, _ := os.ReadDir(state.Dir); len(entries) != 1 || entries[0].Name() != rootfs.Home || !exists(rootfs.Home) {
		t.Errorf("after rm: %s holds %v; want only the home, with its file", state.Dir, entries)
	}
	for path, rest := range map[string]string{addresses: "10.88.0.4 " + inline + "\n", subnets: "10.88.4.0/24 " + inline + "\n"} {
		b, _ := os.ReadFile(path)
		if _, leases, _ := strings.Cut(string(b), "\n"); leases != rest {
			t.Errorf("%s after rm of %s and %s:\n%s\nwant only %q", path, d, u, b, rest)
		}
	}
	want(0, u+": created, stopped", "create", u, "--kind", "user", "--no-start")
	want(0, u+": removed", "rm", u, "--purge")
	if _, err := os.Stat(state.Dir); err == nil {
		t.Errorf("%s is still there after rm --purge", state.Dir)
	}
	f.waitUnits(t, ctx, r, svc+" and "+inline+" left", running(svc, inline))

	if err := r.signal(ctx, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, ok := r.waitExit(10 * time.Second); !ok || code != 0 {
		t.Errorf("nest up after SIGTERM = %d, %v\n%s", code, ok, r.describe())
	}
}
