//go:build vmguest

package pid1

import (
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/mounts"
	"nest/supervise"
)

// Scenario "boot" (vmtest/pid1_test.go): nest booted with boot.toml.

func TestBootMounts(t *testing.T) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	infos, err := mounts.ReadInfo(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	byTarget := map[string]mounts.Info{}
	for _, in := range infos {
		byTarget[in.Target] = in
	}
	want := map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "devtmpfs", "/dev/pts": "devpts",
		"/dev/shm": "tmpfs", "/dev/mqueue": "mqueue", "/run": "tmpfs", "/sys/fs/cgroup": "cgroup2",
	}
	for target, typ := range want {
		if in, ok := byTarget[target]; !ok || in.Type != typ {
			t.Errorf("mount %s = %+v, want type %s", target, in, typ)
		}
	}
	// / must be a real mount (not the initramfs rootfs), or no child
	// could ever pivot_root.
	if in := byTarget["/"]; in.ID == in.Parent {
		t.Errorf("/ is the kernel's rootfs (mount %d is its own parent)", in.ID)
	}
	// devpts is a new instance that anyone can open ptys on.
	if fi, err := os.Stat("/dev/pts/ptmx"); err != nil || fi.Mode().Perm() != 0o666 {
		t.Errorf("/dev/pts/ptmx mode = %v, %v, want 0666", fi.Mode().Perm(), err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs("/sys/fs/cgroup", &fs); err != nil || fs.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("/sys/fs/cgroup is not cgroup2")
	}
	opts, _ := os.ReadFile("/proc/mounts")
	if !strings.Contains(string(opts), "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate") {
		t.Errorf("cgroup2 not mounted with nsdelegate:\n%s", opts)
	}
}

func TestBootCgroups(t *testing.T) {
	if got := strings.TrimSpace(readFile(t, "/proc/1/cgroup")); got != "0::/init.scope" {
		t.Errorf("PID 1's cgroup = %q, want 0::/init.scope", got)
	}
	ctl := readFile(t, "/sys/fs/cgroup/cgroup.subtree_control")
	for _, c := range []string{"cpu", "memory", "pids", "io"} {
		if !strings.Contains(ctl, c) {
			t.Errorf("root subtree_control = %q, lacks %s", ctl, c)
		}
	}
	// Each service is born in its own cgroup.
	st := status(t, "ticker")
	if got := strings.TrimSpace(readFile(t, "/proc/"+itoa(st.Pid)+"/cgroup")); got != "0::/services/ticker" {
		t.Errorf("ticker's cgroup = %q, want 0::/services/ticker", got)
	}
	lim := readFile(t, "/proc/1/limits")
	for _, line := range strings.Split(lim, "\n") {
		if strings.HasPrefix(line, "Max open files") {
			f := strings.Fields(line)
			if n := atoi(f[3]); n < 65536 {
				t.Errorf("PID 1 RLIMIT_NOFILE = %d, want >= 65536", n)
			}
		}
	}
}

func TestBootModules(t *testing.T) {
	mods := readFile(t, "/proc/modules")
	// nest's own list with dependencies (bridge needs llc and stp), and
	// dummy from the config, shipped as dummy.ko.xz.
	for _, m := range []string{"veth", "bridge", "llc", "stp", "overlay", "squashfs", "loop", "dummy"} {
		if !strings.Contains(mods, m+" ") {
			t.Errorf("module %s not loaded; /proc/modules:\n%s", m, mods)
		}
	}
}

func TestBootHostnameAndLoopback(t *testing.T) {
	if h, _ := os.Hostname(); h != "nestvm" {
		t.Errorf("hostname = %q, want nestvm", h)
	}
	flags := strings.TrimSpace(readFile(t, "/sys/class/net/lo/flags"))
	if v, err := parseHex(flags); err != nil || v&unix.IFF_UP == 0 {
		t.Errorf("lo flags = %s, want IFF_UP", flags)
	}
	// The knob exists from Linux 6.2 (the test kernel is 6.1); where it
	// exists, nest turns TIOCSTI off.
	if b, err := os.ReadFile("/proc/sys/dev/tty/legacy_tiocsti"); err == nil && strings.TrimSpace(string(b)) != "0" {
		t.Errorf("legacy_tiocsti = %s, want 0", b)
	}
}

func TestBootAfterAndNotify(t *testing.T) {
	until(t, 10*time.Second, "web running", func() bool { return status(t, "web").State == supervise.StateRunning })
	db, web := status(t, "db"), status(t, "web")
	if db.State != supervise.StateRunning || db.Status != "serving" {
		t.Errorf("db = %s %q, want running and STATUS=serving", db.State, db.Status)
	}
	// web starts only once db said READY=1, which takes it 600 ms.
	if !web.Since.After(db.Since) {
		t.Errorf("web started at %s, before db was ready at %s", web.Since, db.Since)
	}
}

func TestBootRestartBackoff(t *testing.T) {
	seen := map[int]bool{}
	var gaps []time.Duration
	for i := range 3 {
		var st supervise.Status
		until(t, 10*time.Second, "ticker running", func() bool {
			st = status(t, "ticker")
			return st.State == supervise.StateRunning && !seen[st.Pid]
		})
		seen[st.Pid] = true
		if st.Restarts != i {
			t.Errorf("restarts = %d, want %d", st.Restarts, i)
		}
		killed := time.Now()
		if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		until(t, 10*time.Second, "ticker restarted", func() bool {
			st = status(t, "ticker")
			return st.State == supervise.StateRunning && !seen[st.Pid]
		})
		gaps = append(gaps, time.Since(killed))
	}
	for i, g := range gaps {
		if want := supervise.Backoff(i + 1); g < want {
			t.Errorf("restart %d came after %s, want >= %s", i+1, g, want)
		}
	}
	if st := status(t, "ticker"); st.LastExit != "killed by SIGKILL" {
		t.Errorf("ticker last exit = %q, want killed by SIGKILL", st.LastExit)
	}
}

// TestBootOrphans: 1,000 orphans reparented to PID 1 are reaped within a
// second, while the exit status of a supervised service stays its own.
func TestBootOrphans(t *testing.T) {
	storm := exec.Command("/bin/sh", "-c", "i=0; while [ $i -lt 1000 ]; do (sleep 0.2 &); i=$((i+1)); done")
	if err := storm.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range 10 {
			if out, code := nest(t, "restart", "exiter"); code > 1 {
				t.Errorf("nest restart exiter = %d %q", code, out)
			}
			var st supervise.Status
			until(t, 10*time.Second, "exiter done", func() bool {
				st = status(t, "exiter")
				return st.Pid == 0 && st.State == supervise.StateFailed
			})
			if st.ExitCode == nil || *st.ExitCode != 42 || st.Reason != "exit status 42" {
				t.Errorf("exiter = %+v, want its own exit status 42", st)
			}
		}
	}()
	if err := storm.Wait(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	// The orphans sleep 0.2 s and then exit; give them that, then one
	// second for PID 1 to reap every one.
	time.Sleep(200 * time.Millisecond)
	deadline := time.Now().Add(time.Second)
	for {
		z := zombies()
		if len(z) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d zombies left a second after the orphans exited: %v", len(z), z[:min(len(z), 20)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBootStatusAndLogs(t *testing.T) {
	out, code := nest(t, "status")
	if code != 0 {
		t.Fatalf("nest status = %d: %s", code, out)
	}
	for _, want := range []string{"NAME", "ticker", "db", "web", "exiter", "vmtest", "running", "failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("nest status lacks %q:\n%s", want, out)
		}
	}
	out, code = nest(t, "logs", "ticker")
	if code != 0 || strings.Count(out, "tick") < 2 {
		t.Errorf("nest logs ticker = %d %q, want a tick per run", code, out)
	}
	if b, err := os.ReadFile("/var/log/nest/ticker.log"); err != nil || !strings.Contains(string(b), "tick") {
		t.Errorf("/var/log/nest/ticker.log = %q, %v", b, err)
	}
	if out, code := nest(t, "status", "nosuch"); code != 1 || !strings.Contains(out, `no unit named "nosuch"`) {
		t.Errorf("nest status nosuch = %d %q", code, out)
	}
	if out, code := nest(t, "stop"); code != 2 {
		t.Errorf("nest stop (no name) = %d %q, want 2", code, out)
	}
	fi, err := os.Stat("/run/nest/nest.sock")
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("control socket mode = %v, %v, want 0600", fi.Mode().Perm(), err)
	}
}

// TestBootReload runs last: it changes the set of units. vmtest, db and
// exiter stay as they are.
func TestBootReload(t *testing.T) {
	const path = "/etc/nest/nest.toml"
	orig := readFile(t, path)
	dbPid := status(t, "db").Pid
	webPid := status(t, "web").Pid

	// A file that does not parse changes nothing and says why.
	if err := os.WriteFile(path, []byte(orig+"\nbogus_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, code := nest(t, "reload")
	if code != 1 || !strings.Contains(out, path+":") || !strings.Contains(out, `unknown key "bogus_key"`) {
		t.Errorf("nest reload with a bad file = %d %q, want 1 and the position", code, out)
	}
	syscall.Kill(1, syscall.SIGHUP) // the console shows the same error
	time.Sleep(200 * time.Millisecond)
	if st := status(t, "web"); st.Pid != webPid {
		t.Errorf("a bad reload restarted web")
	}

	// Remove ticker, change web, add added.
	start, end := strings.Index(orig, "# ticker-begin"), strings.Index(orig, "# ticker-end")
	next := orig[:start] + orig[end:]
	next = strings.Replace(next, "echo web up", "echo web changed", 1)
	next += "\n[[service]]\nname = \"added\"\nexec = [\"/bin/sh\", \"-c\", \"exec sleep 1000\"]\n"
	if err := os.WriteFile(path, []byte(next), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(1, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	until(t, 10*time.Second, "added running", func() bool {
		out, _ := nest(t, "status", "--json", "added")
		return strings.Contains(out, `"state": "running"`)
	})
	until(t, 10*time.Second, "web restarted", func() bool {
		st := status(t, "web")
		return st.State == supervise.StateRunning && st.Pid != webPid
	})
	if out, code := nest(t, "status", "ticker"); code != 1 || !strings.Contains(out, "no unit named") {
		t.Errorf("ticker after reload = %d %q, want removed", code, out)
	}
	if st := status(t, "db"); st.Pid != dbPid {
		t.Errorf("unchanged db restarted: pid %d, want %d", st.Pid, dbPid)
	}
}
