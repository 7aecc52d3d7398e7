package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/supervise"
)

func TestPrintList(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	list := []supervise.Status{
		{Name: "syslog", Kind: "service", State: supervise.StateRunning, Pid: 12, Memory: 1536 << 10, Since: now.Add(-42 * time.Second)},
		{Name: "alice", Kind: "user", State: supervise.StateRunning, Pid: 40, Memory: 300 << 20, Since: now.Add(-3*time.Hour - 4*time.Minute), Address: "10.88.0.2/24",
			Children: []supervise.Status{
				{Name: "sshd", Kind: "service", State: supervise.StateRunning, Pid: 7, Since: now.Add(-5*time.Minute - 12*time.Second)},
				{Name: "dev", Kind: "user", State: supervise.StateRunning, Pid: 9, Memory: 20 << 30, Since: now.Add(-50 * time.Hour), Address: "10.88.1.2/24",
					Children:   []supervise.Status{{Name: "app", Kind: "service", State: supervise.StateFailed, Since: now}},
					Incomplete: "no answer in time"},
			}},
		{Name: "web", Kind: "daemon", State: supervise.StateStopped, Since: now.Add(-time.Hour)},
		{Name: "evil\x1b[2J", Kind: "service", State: "unknown", Since: now},
	}
	var b bytes.Buffer
	printList(&b, list, now)
	want := `NAME               KIND     STATE                          PID  MEMORY  UPTIME  ADDRESS
syslog             service  running                        12   1.5M    42s     -
alice              user     running                        40   300M    3h4m    10.88.0.2/24
  alice/sshd       service  running                        7    -       5m12s   -
  alice/dev        user     running                        9    20G     2d2h    10.88.1.2/24
    alice/dev/app  service  failed                         -    -       -       -
    alice/dev/…    -        incomplete: no answer in time  -    -       -       -
web                daemon   stopped                        -    -       -       -
evil?[2J           service  unknown                        -    -       -       -
`
	if b.String() != want {
		t.Errorf("printList:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[uint64]string{
		0: "0B", 1023: "1023B", 1024: "1.0K", 1536: "1.5K", 10 << 10: "10K", 512 << 20: "512M",
		2 << 30: "2.0G", 1<<40 + 1<<39: "1.5T",
	} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestUptime(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 59 * time.Second: "59s", 61 * time.Second: "1m1s",
		time.Hour + 30*time.Minute + 10*time.Second: "1h30m", 49 * time.Hour: "2d1h",
	} {
		if got := uptime(d); got != want {
			t.Errorf("uptime(%s) = %s, want %s", d, got, want)
		}
	}
}

// TestCLIUsage: what is wrong with the command line is exit status 2,
// before any socket is asked.
func TestCLIUsage(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{
		{"ls", "web"}, {"status", "--tree"}, {"stop", "--tree", "web"}, {"ls", "--bogus"}, {"start"}, {"stop", "a", "b"},
	} {
		var out, errOut bytes.Buffer
		if code := cli(append([]string{"--socket", sock}, args...), &out, &errOut); code != 2 {
			t.Errorf("nest %s = %d, want 2 (%s)", strings.Join(args, " "), code, errOut.String())
		}
	}
	var out, errOut bytes.Buffer
	if code := cli([]string{"--socket", sock, "ls", "--tree"}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "no nest answers") {
		t.Errorf("nest ls --tree with no init = %d %q, want 1", code, errOut.String())
	}
}

// TestUpContainerTree: under nest up on this host, a daemon container's
// unit shows in `nest ls --tree` through the container's link, and
// status, stop and start reach it by its path.
func TestUpContainerTree(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("containers need root")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newServicesFixture(t)
	// The name is fixed: its id range persists in /var/lib/nest/idmap.
	const name = "web"
	logFile := filepath.Join(logDir, name+".log")
	if _, err := os.Stat(logFile); errors.Is(err, os.ErrNotExist) {
		t.Cleanup(func() {
			os.Remove(logFile)
			os.Remove(logFile + ".1")
		})
	}
	svc := f.name("svc")
	f.write(t, service{name: svc, script: "exec sleep 1000"})
	conf, err := os.ReadFile(f.conf)
	if err != nil {
		t.Fatal(err)
	}
	conf = append(conf, fmt.Sprintf("\n[container.%s]\nkind = \"daemon\"\nexec = [\"/bin/sleep\", \"1000\"]\n", name)...)
	if err := os.WriteFile(f.conf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	r := startNest(t, ctx, upModes[0], "up", "-c", f.conf, "--socket", f.sock)
	cliOK := func(args ...string) string {
		t.Helper()
		out, errOut, code := nestCLI(ctx, append([]string{"--socket", f.sock}, args...)...)
		if code != 0 {
			t.Fatalf("nest %s = %d: %s%s\n%s", strings.Join(args, " "), code, out, errOut, r.describe())
		}
		return out
	}

	var tree string
	for {
		tree, _, _ = nestCLI(ctx, "--socket", f.sock, "ls", "--tree")
		if strings.Contains(tree, "\n"+name+" ") && strings.Contains(tree, "\n  "+name+"/"+name+" ") &&
			strings.Count(tree, " running ") == 3 {
			break
		}
		if r.exited() {
			t.Fatalf("nest up exited: %s", r.describe())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nest ls --tree = %q, want %s, %s and %s/%s running\n%s", tree, svc, name, name, name, r.describe())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if lines := strings.Split(tree, "\n"); !strings.HasPrefix(lines[0], "NAME") || !strings.Contains(lines[0], "MEMORY") {
		t.Errorf("nest ls --tree header: %q", lines[0])
	}
	if flat := cliOK("ls"); strings.Contains(flat, name+"/"+name) {
		t.Errorf("nest ls without --tree shows the container's units:\n%s", flat)
	}

	var list []supervise.Status
	if err := json.Unmarshal([]byte(cliOK("ls", "--tree", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[1].Name != name || len(list[1].Children) != 1 || list[1].Children[0].Name != name ||
		list[1].Children[0].Kind != "service" || list[1].Children[0].Pid == 0 {
		t.Errorf("nest ls --tree --json = %+v", list)
	}

	path := name + "/" + name
	if out := cliOK("status", path); !strings.HasPrefix(out, path+": running (pid ") || !strings.Contains(out, "/bin/sleep 1000") {
		t.Errorf("nest status %s = %q", path, out)
	}
	// A daemon container's service writes to the container's log.
	if out, errOut, code := nestCLI(ctx, "--socket", f.sock, "logs", path); code != 1 || !strings.Contains(errOut, "writes to its container's own log") {
		t.Errorf("nest logs %s = %d %q %q, want a pointer to the container's log", path, code, out, errOut)
	}
	if out := cliOK("stop", path); out != path+": stopped\n" {
		t.Errorf("nest stop %s = %q", path, out)
	}
	// A daemon container is its one service: stopping that powers the
	// container off (no restart), and starting the container brings both.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(cliOK("status", name), "powered off from inside") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if out := cliOK("status", name); !strings.Contains(out, "stopped") || !strings.Contains(out, "powered off from inside") {
		t.Errorf("nest status %s after stopping its service = %q, want stopped: powered off from inside", name, out)
	}
	if out := cliOK("start", name); !strings.HasPrefix(out, name+": running (pid ") {
		t.Errorf("nest start %s = %q", name, out)
	}
	if out := cliOK("status", path); !strings.HasPrefix(out, path+": running (pid ") {
		t.Errorf("nest status %s after the restart = %q", path, out)
	}
	for _, args := range [][]string{{"status", name + "/nope"}, {"status", svc + "/x"}, {"logs", name + "/nope"}, {"status", "Web/x"}} {
		if out, errOut, code := nestCLI(ctx, append([]string{"--socket", f.sock}, args...)...); code != 1 {
			t.Errorf("nest %s = %d %q %q, want 1", strings.Join(args, " "), code, out, errOut)
		}
	}

	if err := r.signal(ctx, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, ok := r.waitExit(10 * time.Second); !ok || code != 0 {
		t.Errorf("nest up after SIGTERM = %d, %v; want 0\n%s", code, ok, r.describe())
	}
}
