//go:build vmguest

package pid1

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/supervise"
)

// Scenario "containers" (vmtest/pid1_test.go): daemon containers started
// by the root init.

// probe runs inside a daemon container as its root (helper "probe") and
// prints one line per escape attempt: "PROBE name ok" when the attempt
// failed as it must, "PROBE name ESCAPED detail" otherwise.
func probe() int {
	escapeProbes()
	fmt.Println("PROBE done")
	for {
		time.Sleep(time.Hour)
	}
}

// escapeProbes makes every escape attempt of the list.
func escapeProbes() {
	check := func(name string, escaped bool, detail string) {
		verdict := "ok"
		if escaped {
			verdict = "ESCAPED " + detail
		}
		fmt.Printf("PROBE %s %s\n", name, verdict)
	}
	// Processes of the parent: only this pid namespace is visible.
	entries, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	check("parent-processes", n > 10, fmt.Sprintf("%d processes visible", n))
	err := os.WriteFile("/proc/sys/kernel/core_pattern", []byte("|/tmp/x"), 0)
	check("core-pattern", err == nil, "written")
	err = os.WriteFile("/proc/sysrq-trigger", []byte("h"), 0)
	sysrqDevNull := true
	var st unix.Stat_t
	if unix.Stat("/proc/sysrq-trigger", &st) == nil && st.Rdev != unix.Mkdev(1, 3) {
		sysrqDevNull = false
	}
	check("sysrq-trigger", err == nil && !sysrqDevNull, "written")
	err = unix.Unmount("/proc/keys", unix.MNT_DETACH)
	check("unmount-mask", err == nil, "unmounted")
	err = unix.Mount("", "/proc/sys", "", unix.MS_REMOUNT|unix.MS_BIND, "")
	check("remount-proc-sys-rw", err == nil, "remounted")
	err = unix.FinitModule(0, "", 0)
	check("load-module", err != unix.EPERM && err != unix.EBADF, fmt.Sprint(err))
	err = unix.Mknod("/tmp/sda", unix.S_IFBLK|0o600, int(unix.Mkdev(8, 0)))
	check("mknod-block", err == nil, "made")
	// The parent's control socket is not here: /run is the container's own.
	units := controlUnits("/run/nest/nest.sock")
	check("parent-control-socket", strings.Contains(units, `"vmtest"`), units)
	// Beyond stdio, this Go program holds only its runtime's own fds
	// (epoll, eventfd, cpu.max) and the directory being read; anything a
	// parent could leak (a socket, a pipe, a pidfd, a namespace or mount
	// fd, a directory) is an escape.
	fds, _ := os.ReadDir("/proc/self/fd")
	var leaked []string
	for _, fd := range fds {
		n, _ := strconv.Atoi(fd.Name())
		target, _ := os.Readlink("/proc/self/fd/" + fd.Name())
		own := n <= 2 || target == "" || target == "anon_inode:[eventpoll]" ||
			target == "anon_inode:[eventfd]" || strings.HasSuffix(target, "/cpu.max")
		if !own {
			leaked = append(leaked, fd.Name()+"="+target)
		}
	}
	check("inherited-fds", len(leaked) > 0, strings.Join(leaked, " "))
	f, err := os.OpenFile("/proc/1/exe", os.O_WRONLY, 0)
	if err == nil {
		f.Close()
	}
	check("write-nest-binary", err == nil, "opened for writing")
	f, err = os.OpenFile("/init", os.O_WRONLY, 0)
	if err == nil {
		f.Close()
	}
	check("write-parent-init", err == nil, "opened for writing")
	// reboot(2) would end only this pid namespace; without CAP_SYS_BOOT it
	// is refused outright. Either way the machine stays up.
	err = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	check("reboot", err != unix.EPERM, fmt.Sprint(err))
	uid := os.Getuid()
	check("root-inside", uid != 0, fmt.Sprint("uid ", uid))
}

// controlUnits asks a control socket for its units, raw.
func controlUnits(path string) string {
	c, err := net.Dial("unix", path)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/units HTTP/1.1\r\n\r\n")
	b := make([]byte, 8192)
	n, _ := c.Read(b)
	return string(b[:n])
}

func TestContainersDaemon(t *testing.T) {
	until(t, 30*time.Second, "web running", func() bool { return status(t, "web").State == supervise.StateRunning })
	st := status(t, "web")
	if st.Kind != "daemon" {
		t.Errorf("web kind = %q, want daemon", st.Kind)
	}
	until(t, 10*time.Second, "web's output in its log", func() bool {
		out, _ := nest(t, "logs", "web")
		return strings.Contains(out, "hello from web")
	})
	// The container's init is the root of its own namespaces, mapped to an
	// unprivileged range of the host.
	s := readFile(t, fmt.Sprintf("/proc/%d/status", st.Pid))
	for _, line := range strings.Split(s, "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" && atoi(f[1]) < 100000 {
			t.Errorf("web's init runs as host uid %s, want a mapped range >= 100000", f[1])
		}
	}
	if !strings.Contains(s, "NSpid:\t"+itoa(st.Pid)+"\t1") {
		t.Errorf("web's init is not PID 1 of its own pid namespace:\n%s", s)
	}
	if got := strings.TrimSpace(readFile(t, "/sys/fs/cgroup/containers/web/memory.max")); got != "67108864" {
		t.Errorf("web memory.max = %s, want 67108864 (64M)", got)
	}
	if got := strings.TrimSpace(readFile(t, "/sys/fs/cgroup/containers/web/pids.max")); got != "64" {
		t.Errorf("web pids.max = %s, want 64", got)
	}
}

func TestContainersEscapes(t *testing.T) {
	var out string
	until(t, 30*time.Second, "the probe's report", func() bool {
		out, _ = nest(t, "logs", "probe")
		return strings.Contains(out, "PROBE done")
	})
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "PROBE ") && strings.Contains(line, "ESCAPED") {
			t.Errorf("from inside a daemon container: %s", line)
		}
	}
	if n := strings.Count(out, " ok\n"); n < 12 {
		t.Errorf("only %d probes passed:\n%s", n, out)
	}
}

func TestContainersForkBomb(t *testing.T) {
	// On 6.1 pids.events counts in the leaf cgroup where the fork failed,
	// so watch the container's total instead: it saturates at pids.max.
	until(t, 30*time.Second, "the bomb to reach pids.max", func() bool {
		b, err := os.ReadFile("/sys/fs/cgroup/containers/bomb/pids.current")
		return err == nil && atoi(strings.TrimSpace(string(b))) >= 30
	})
	time.Sleep(time.Second)
	// The root and its other units keep running.
	if st := status(t, "web"); st.State != supervise.StateRunning {
		t.Errorf("web = %s while the bomb runs", st.State)
	}
	cur := atoi(strings.TrimSpace(readFile(t, "/sys/fs/cgroup/containers/bomb/pids.current")))
	if cur > 32 {
		t.Errorf("bomb pids.current = %d, want <= 32", cur)
	}
	if out, code := nest(t, "stop", "bomb"); code != 0 {
		t.Errorf("nest stop bomb = %d %s", code, out)
	}
	if _, err := os.Stat("/sys/fs/cgroup/containers/bomb"); err == nil {
		t.Errorf("bomb's cgroup is left after stop")
	}
}

func TestContainersOOM(t *testing.T) {
	// The hog may be killed, and its cgroup gone with it, before this test
	// looks: memory.events is hierarchical, so its parent's counts it too.
	// (Only the hog has a memory limit it can reach.)
	until(t, 60*time.Second, "the hog's OOM kill", func() bool {
		for _, dir := range []string{"/sys/fs/cgroup/containers/hog", "/sys/fs/cgroup/containers"} {
			ev, err := os.ReadFile(dir + "/memory.events")
			if err == nil && !strings.Contains(string(ev), "oom_kill 0") {
				return true
			}
		}
		return false
	})
	if st := status(t, "web"); st.State != supervise.StateRunning {
		t.Errorf("web = %s after the hog's OOM", st.State)
	}
}

// TestContainersLs: nest ls --tree reaches each container's own unit
// through its link, with the memory of the container's cgroup and of the
// unit's cgroup inside it, and status, stop and start take a unit path.
func TestContainersLs(t *testing.T) {
	find := func(list []supervise.Status, name string) *supervise.Status {
		for i := range list {
			if list[i].Name == name {
				return &list[i]
			}
		}
		return nil
	}
	var list []supervise.Status
	until(t, 30*time.Second, "web and probe with their units in nest ls --tree --json", func() bool {
		out, code := nest(t, "ls", "--tree", "--json")
		list = nil
		if code != 0 || json.Unmarshal([]byte(out), &list) != nil {
			return false
		}
		for _, name := range []string{"web", "probe"} {
			c := find(list, name)
			if c == nil || c.State != supervise.StateRunning || len(c.Children) != 1 ||
				c.Children[0].State != supervise.StateRunning {
				return false
			}
		}
		return true
	})
	for _, name := range []string{"web", "probe"} {
		c := find(list, name)
		if c.Kind != "daemon" || c.Memory == 0 || c.Incomplete != "" {
			t.Errorf("%s in the tree: kind %q, memory %d, incomplete %q; want a daemon with its memory", name, c.Kind, c.Memory, c.Incomplete)
		}
		u := c.Children[0]
		if u.Name != name || u.Kind != "service" || u.Pid == 0 || u.Memory == 0 {
			t.Errorf("%s/%s in the tree: %+v; want a running service with a pid and memory", name, u.Name, u)
		}
		if u.Memory > c.Memory {
			t.Errorf("%s/%s uses %d bytes, more than its whole container's %d", name, u.Name, u.Memory, c.Memory)
		}
	}

	out, code := nest(t, "ls", "--tree")
	if code != 0 || !strings.HasPrefix(out, "NAME") || !strings.Contains(out, "MEMORY") ||
		!strings.Contains(out, "\n  web/web ") || !strings.Contains(out, "\n  probe/probe ") {
		t.Errorf("nest ls --tree = %d:\n%s", code, out)
	}
	t.Logf("nest ls --tree:\n%s", out)
	if out, code := nest(t, "ls"); code != 0 || strings.Contains(out, "web/web") || !strings.Contains(out, "\nweb ") {
		t.Errorf("nest ls = %d:\n%s", code, out)
	}

	st := status(t, "web/web")
	if st.Name != "web/web" || st.State != supervise.StateRunning || st.Memory == 0 {
		t.Errorf("nest status web/web = %+v", st)
	}
	if out, code := nest(t, "status", "web"); code != 0 || !strings.Contains(out, "memory:") {
		t.Errorf("nest status web = %d %s, want its memory", code, out)
	}
	if out, code := nest(t, "status", "web/nope"); code != 1 || !strings.Contains(out, `no unit named "nope"`) {
		t.Errorf("nest status web/nope = %d %s, want 1", code, out)
	}
	if out, code := nest(t, "ls", "--tree", "web"); code != 2 {
		t.Errorf("nest ls --tree web = %d %s, want 2", code, out)
	}
}

func TestContainersRestartKilledInit(t *testing.T) {
	old := status(t, "web")
	if err := syscall.Kill(old.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var st supervise.Status
	until(t, 30*time.Second, "web restarted", func() bool {
		st = status(t, "web")
		return st.State == supervise.StateRunning && st.Pid != old.Pid
	})
	if st.Restarts != old.Restarts+1 {
		t.Errorf("restarts = %d, want %d", st.Restarts, old.Restarts+1)
	}
}

func TestContainersStopLeavesNothing(t *testing.T) {
	st := status(t, "web")
	if out, code := nest(t, "stop", "web"); code != 0 {
		t.Fatalf("nest stop web = %d %s", code, out)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", st.Pid)); err == nil {
		t.Errorf("web's init %d still exists after stop", st.Pid)
	}
	if _, err := os.Stat("/sys/fs/cgroup/containers/web"); err == nil {
		t.Errorf("web's cgroup is left after stop")
	}
	if out, code := nest(t, "start", "web"); code != 0 || !strings.Contains(out, "running") {
		t.Errorf("nest start web = %d %s", code, out)
	}
}
