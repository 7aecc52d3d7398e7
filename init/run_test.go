package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/sandbox"
	"nest/supervise"
)

// nestRunOut runs `nest run ARGS` and returns its combined output and exit
// status.
func nestRunOut(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nestBin, append([]string{"run"}, args...)...)
	cmd.WaitDelay = 3 * time.Second
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("nest run %v: %v", args, err)
	}
	return string(out), code
}

func sh(script string) []string { return []string{"--", "/bin/sh", "-c", script} }

// masked prints "masked" when path is absent or a bind of /dev/null.
func masked(path string) string {
	return "[ ! -e " + path + " ] || [ \"$(stat -c %t,%T " + path + ")\" = 1,3 ] && echo masked || echo visible"
}

// refused prints whether a command failed (as it must) or was allowed.
func refused(cmd string) string { return "(" + cmd + ") 2>/dev/null && echo allowed || echo refused" }

func TestRunExitStatus(t *testing.T) {
	tests := []struct {
		script string
		want   int
	}{
		{"exit 0", 0}, {"exit 42", 42}, {"exit 255", 255},
		{"kill -TERM $$", 143}, {"kill -KILL $$", 137},
	}
	for _, tt := range tests {
		if out, code := nestRunOut(t, sh(tt.script)...); code != tt.want {
			t.Errorf("nest run -- sh -c %q = %d, want %d\n%s", tt.script, code, tt.want, out)
		}
	}
	if out, code := nestRunOut(t, "--", "/nonexistent"); code != 127 || !strings.Contains(out, "/nonexistent") {
		t.Errorf("nest run -- /nonexistent = %d %q, want 127 naming it", code, out)
	}
}

func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"--network", "bridge", "--", "true"}, {"--bind", "relative", "--", "true"}} {
		if out, code := nestRunOut(t, args...); code != 2 {
			t.Errorf("nest run %q = %d %q, want 2", args, code, out)
		}
	}
	if out, code := nestRunOut(t, "--bind", "/nonexistent/src", "--", "true"); code != runExitError || !strings.Contains(out, "/nonexistent/src") {
		t.Errorf("missing bind source = %d %q, want %d naming it", code, out, runExitError)
	}
}

// TestRunSandbox checks the default sandbox from inside, as the container's
// root would see it.
func TestRunSandbox(t *testing.T) {
	checks := []struct {
		name, script, want string
	}{
		{"root inside", "id -u", "0"},
		{"mapped outside", "cat /proc/self/uid_map | awk '{print ($1 == 0 && $2 >= 100000 && $3 == 65536)}'", "1"},
		{"pid 1 is the sandbox's init", "tr '\\0' ' ' < /proc/1/cmdline", "/proc/self/exe run-init"},
		{"hostname", "hostname", "nest-run"},
		{"network none", "ls /sys/class/net", "lo"},
		{"root read-only", "touch /usr/nest-test 2>&1 | grep -c 'Read-only'", "1"},
		{"private tmp", "touch /tmp/x && ls /tmp", "x"},
		// A masked file is /dev/null (char 1,3); some kernels lack it.
		{"kcore masked", masked("/proc/kcore"), "masked"},
		{"sysrq masked", masked("/proc/sysrq-trigger"), "masked"},
		{"keys masked", masked("/proc/keys"), "masked"},
		{"core_pattern read-only", refused("echo x > /proc/sys/kernel/core_pattern"), "refused"},
		{"/sys read-only", refused("touch /sys/x"), "refused"},
		{"cannot unmount a mask", refused("umount /proc/keys"), "refused"},
		{"cannot unmount /proc/sys", refused("umount /proc/sys"), "refused"},
		{"cannot remount /proc/sys rw", refused("mount -o remount,rw /proc/sys"), "refused"},
		{"cannot mknod", refused("mknod /tmp/sda b 8 0"), "refused"},
		{"cannot load a module", refused("echo > /proc/sys/kernel/modprobe"), "refused"},
		{"minimal /dev", "ls /dev | tr '\\n' ' '", "fd full mqueue null ptmx pts random shm stderr stdin stdout tty urandom zero "},
		{"no_new_privs", "grep NoNewPrivs /proc/self/status | awk '{print $2}'", "1"},
		{"capability bounding set", "grep CapBnd /proc/self/status | cut -f2", "checked below"},
		{"only stdio", "ls /proc/self/fd | wc -l", "4"}, // 0 1 2 and ls's own directory fd
	}
	var script strings.Builder
	for _, c := range checks {
		script.WriteString("echo \"@" + c.name + "=$( " + c.script + " )\"\n")
	}
	out, code := nestRunOut(t, sh(script.String())...)
	if code != 0 {
		t.Fatalf("nest run = %d\n%s", code, out)
	}
	got := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "@"), "="); ok && strings.HasPrefix(line, "@") {
			got[k] = strings.TrimSpace(v)
		}
	}
	bnd, err := strconv.ParseUint(got["capability bounding set"], 16, 64)
	if err != nil || bnd&(1<<21) != 0 || bnd&1 == 0 {
		t.Errorf("CapBnd = %q: want CAP_CHOWN (bit 0) and no CAP_SYS_ADMIN (bit 21)", got["capability bounding set"])
	}
	for _, c := range checks {
		if c.want == "checked below" {
			continue
		}
		if got[c.name] != strings.TrimSpace(c.want) {
			t.Errorf("%s: `%s` = %q, want %q", c.name, c.script, got[c.name], strings.TrimSpace(c.want))
		}
	}
	if t.Failed() {
		t.Logf("output:\n%s", out)
	}
}

func TestRunNetworkHost(t *testing.T) {
	host, _ := os.ReadDir("/sys/class/net")
	out, code := nestRunOut(t, append([]string{"--network", "host"}, sh("ls /sys/class/net | wc -l")...)...)
	if code != 0 || strings.TrimSpace(out) != strconv.Itoa(len(host)) {
		t.Errorf("--network host sees %q interfaces (exit %d), want the host's %d", out, code, len(host))
	}
}

// TestRunHidesParentMounts: a file system mounted under the parent's /
// (here in a private mount namespace of the test) is not in the sandbox.
func TestRunHidesParentMounts(t *testing.T) {
	// Not under /tmp or /run: the sandbox has its own.
	dir, err := os.MkdirTemp("/var/lib", "nest-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	os.Chmod(dir, 0o755)
	script := "mount -t tmpfs none " + dir + " && echo secret > " + dir + "/file && " +
		nestBin + " run -- /bin/sh -c 'ls " + dir + " | wc -l'"
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "0" {
		t.Errorf("a parent's submount seen inside: %q (%v), want an empty directory", out, err)
	}
}

// openDir is a temporary directory the sandbox's root may enter: it is an
// unprivileged uid on the host, so the 0700 of t.TempDir() keeps it out
// (as it must). mode 0777 lets it write too.
func openDir(t *testing.T, mode os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestRunBinds(t *testing.T) {
	ro, rw := openDir(t, 0o755), openDir(t, 0o777)
	if err := os.WriteFile(filepath.Join(ro, "in"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := nestRunOut(t, append([]string{"--bind", ro + ":/mnt", "--bind", rw + ":/srv:rw"},
		sh("cat /mnt/in; touch /mnt/no 2>/dev/null || echo ro-refused; echo written > /srv/out")...)...)
	if code != 0 || !strings.Contains(out, "hello") || !strings.Contains(out, "ro-refused") {
		t.Errorf("binds = %d %q", code, out)
	}
	if b, err := os.ReadFile(filepath.Join(rw, "out")); err != nil || string(b) != "written\n" {
		t.Errorf("write through the rw bind = %q, %v", b, err)
	}
}

// TestRunSymlinkedBindTarget: a bind target that is a symlink in the rootfs
// resolves inside the rootfs (CVE-2021-30465 class), never to the parent's
// path it names.
func TestRunSymlinkedBindTarget(t *testing.T) {
	rootfs := busyboxRoot(t)
	// A directory of the parent, outside /tmp (the sandbox has its own).
	victim, err := os.MkdirTemp("/var/lib", "nest-victim-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(victim)
	if err := os.Symlink("../../../../../../.."+victim, filepath.Join(rootfs, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, victim), 0o755); err != nil {
		t.Fatal(err)
	}
	src := openDir(t, 0o755)
	os.WriteFile(filepath.Join(src, "planted"), []byte("x"), 0o644)
	out, code := nestRunOut(t, append([]string{"--rootfs", rootfs, "--bind", src + ":/escape"}, sh("ls /escape")...)...)
	if code != 0 || strings.TrimSpace(out) != "planted" {
		t.Errorf("bind through a symlink = %d %q, want the bind inside the rootfs", code, out)
	}
	if entries, _ := os.ReadDir(victim); len(entries) != 0 {
		t.Errorf("the parent's %s got %d entries: the bind escaped the rootfs", victim, len(entries))
	}
}

// busyboxRoot makes a minimal rootfs: busybox-static and the directories
// a sandbox mounts on.
func busyboxRoot(t *testing.T) string {
	t.Helper()
	root := openDir(t, 0o755)
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "run", "etc"} {
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static: %v", err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, app := range []string{"sh", "ls", "cat", "echo"} {
		os.Symlink("busybox", filepath.Join(root, "bin", app))
	}
	return root
}

func TestRunNoInheritedFDs(t *testing.T) {
	f, err := os.Open("/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(nestBin, append([]string{"run"}, sh("ls /proc/self/fd | tr '\\n' ' '")...)...)
	cmd.ExtraFiles = []*os.File{f} // fd 3 of nest run: must not reach CMD
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "0 1 2 3" {
		t.Errorf("fds inside = %q (%v), want 0 1 2 and ls's own 3", out, err)
	}
}

// TestRunReleasesIDs: the sandbox's id range is leased (its slot locked
// in the pool's .oneshot file) while nest run runs, and free once it ended.
func TestRunReleasesIDs(t *testing.T) {
	cmd := exec.Command(nestBin, append([]string{"run"}, sh("cat /proc/self/uid_map; read x; true")...)...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer in.Close()
	var inside, start, size uint32
	if _, err := fmt.Fscan(out, &inside, &start, &size); err != nil {
		t.Fatalf("reading uid_map: %v", err)
	}
	held := func() bool {
		t.Helper()
		f, err := os.Open(sandbox.DefaultPoolPath + ".oneshot")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: int64((start - sandbox.FirstID) / sandbox.RangeSize), Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Fatal(err)
		}
		return lk.Type != unix.F_UNLCK
	}
	if !held() {
		t.Errorf("the range %d+%d of a running nest run is not leased", start, size)
	}
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if held() {
		t.Errorf("a finished nest run still holds its id range %d+%d", start, size)
	}
}

// TestRunKilledLeavesNothing: nest run's id lease ends with its process,
// so the sandbox must too — SIGKILL, which nest run cannot forward, ends
// CMD and everything it started, not only nest run.
func TestRunKilledLeavesNothing(t *testing.T) {
	// Nothing ends the shell but a signal: not stdin's end, not stdout's.
	cmd := exec.Command(nestBin, append([]string{"run"}, sh("sleep 300 & echo $$; exec sleep 300")...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var inner int
	if _, err := fmt.Fscan(out, &inner); err != nil {
		t.Fatalf("reading the shell's pid: %v", err)
	}
	// The sandbox's processes, seen from here: the descendants of nest run.
	procs := supervise.Descendants(cmd.Process.Pid)
	if len(procs) < 3 {
		t.Fatalf("nest run %d has descendants %v, want its init, the shell and sleep", cmd.Process.Pid, procs)
	}
	pidfds := make([]int, 0, len(procs))
	for _, p := range procs {
		fd, err := unix.PidfdOpen(p, 0)
		if err != nil {
			t.Fatalf("pidfd of %d: %v", p, err)
		}
		defer unix.Close(fd)
		pidfds = append(pidfds, fd)
	}
	cmd.Process.Kill()
	cmd.Wait()
	for i, fd := range pidfds {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 5000); n != 1 || err != nil {
			t.Errorf("process %d of the sandbox still runs 5 s after nest run was killed", procs[i])
		}
	}
}

// TestRunSymlinkedDev: /dev of the rootfs is a symlink to a directory of
// the parent. The sandbox's minimal /dev is built inside the root, through
// fds: nothing lands in the parent's directory.
func TestRunSymlinkedDev(t *testing.T) {
	rootfs := busyboxRoot(t)
	victim, err := os.MkdirTemp("/var/lib", "nest-victim-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(victim)
	os.Chmod(victim, 0o1777)
	if err := os.Remove(filepath.Join(rootfs, "dev")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, filepath.Join(rootfs, "dev")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(rootfs, victim), 0o755); err != nil {
		t.Fatal(err)
	}
	out, code := nestRunOut(t, append([]string{"--rootfs", rootfs}, sh("ls /dev | tr '\\n' ' '")...)...)
	if code != 0 || !strings.Contains(out, "null") {
		t.Errorf("nest run with /dev a symlink = %d %q, want a minimal /dev", code, out)
	}
	if entries, _ := os.ReadDir(victim); len(entries) != 0 {
		t.Errorf("the parent's %s got %d entries: /dev was built outside the rootfs", victim, len(entries))
	}
}
