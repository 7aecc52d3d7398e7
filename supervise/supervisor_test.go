package supervise

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
)

// helperNotify is run by the test binary itself when NEST_TEST_HELPER says
// so: it sends sd_notify messages the way a service would.
func init() {
	switch os.Getenv("NEST_TEST_HELPER") {
	case "":
		return
	case "notify":
		time.Sleep(200 * time.Millisecond)
		c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
		if err != nil {
			os.Exit(3)
		}
		c.Write([]byte("STATUS=warming up\n"))
		time.Sleep(100 * time.Millisecond)
		c.Write([]byte("READY=1\nSTATUS=serving\n"))
		time.Sleep(time.Hour)
	default:
		os.Exit(4)
	}
}

type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(sprintf(format, args...)))
}

func (l *lineLog) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func newTestSupervisor(t *testing.T) (*Supervisor, *lineLog) {
	t.Helper()
	var log lineLog
	dir := t.TempDir()
	s := New(Options{Reaper: testReaper, Logf: log.logf, LogDir: filepath.Join(dir, "log"), RunDir: filepath.Join(dir, "run")})
	t.Cleanup(s.Shutdown)
	return s, &log
}

func svc(name string, restart config.Restart, exec ...string) Spec {
	return Spec{Service: config.Service{
		Name: name, Exec: exec, Restart: restart,
		StopTimeout: 2 * time.Second, StartLimit: config.DefaultStartLimit,
	}}
}

// waitFor polls a unit until cond holds.
func waitFor(t *testing.T, s *Supervisor, name string, what string, cond func(Status) bool) Status {
	t.Helper()
	u, ok := s.Unit(name)
	if !ok {
		t.Fatalf("no unit %s", name)
	}
	deadline := time.After(15 * time.Second)
	for {
		changed := s.Changes()
		st := u.Status()
		if cond(st) {
			return st
		}
		select {
		case <-changed:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: waiting for %s; last status %+v", name, what, st)
		}
	}
}

func TestRestartAlwaysWithBackoff(t *testing.T) {
	s, log := newTestSupervisor(t)
	s.Apply([]Spec{svc("loop", config.RestartAlways, "/bin/sh", "-c", "sleep 30")})
	pids := map[int]bool{}
	var gaps []time.Duration
	for i := range 3 {
		st := waitFor(t, s, "loop", "running", func(st Status) bool {
			return st.State == StateRunning && !pids[st.Pid]
		})
		pids[st.Pid] = true
		if st.Restarts != i {
			t.Errorf("restarts = %d, want %d", st.Restarts, i)
		}
		killed := time.Now()
		testKill(t, st.Pid)
		waitFor(t, s, "loop", "restart", func(st Status) bool { return st.State == StateRunning && !pids[st.Pid] })
		gaps = append(gaps, time.Since(killed))
	}
	// 100 ms, 200 ms, 400 ms: each restart waits longer than the last.
	for i, g := range gaps {
		if min := Backoff(i + 1); g < min {
			t.Errorf("restart %d after %s, want >= %s", i+1, g, min)
		}
	}
	if !log.has("loop: killed by SIGKILL, restarting in 100ms") {
		t.Errorf("console lines %q lack the restart line", log.lines)
	}
}

func TestStartLimitMarksFailed(t *testing.T) {
	s, _ := newTestSupervisor(t)
	sp := svc("bad", config.RestartAlways, "/bin/sh", "-c", "exit 7")
	sp.StartLimit = 3
	s.Apply([]Spec{sp})
	st := waitFor(t, s, "bad", "failed", func(st Status) bool { return st.State == StateFailed })
	if st.ExitCode == nil || *st.ExitCode != 7 || !strings.Contains(st.Reason, "exit status 7, 3 times in a row") {
		t.Errorf("status = %+v, want failed with exit status 7, 3 times in a row", st)
	}
}

func TestAfterAndNotify(t *testing.T) {
	s, _ := newTestSupervisor(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	db := svc("db", config.RestartNo, exe)
	db.Notify = true
	db.Env = map[string]string{"NEST_TEST_HELPER": "notify"}
	web := svc("web", config.RestartNo, "/bin/sh", "-c", "echo web up; sleep 30")
	web.After = []string{"db"}
	s.Apply([]Spec{web, db})

	waitFor(t, s, "web", "waiting for db", func(st Status) bool {
		return st.State == StateWaiting && st.Reason == "waiting for db"
	})
	dbst := waitFor(t, s, "db", "ready", func(st Status) bool { return st.State == StateRunning })
	if dbst.Status != "serving" {
		t.Errorf("db STATUS = %q, want %q", dbst.Status, "serving")
	}
	waitFor(t, s, "web", "running", func(st Status) bool { return st.State == StateRunning })
	webU, _ := s.Unit("web")
	dbU, _ := s.Unit("db")
	if !webU.Status().Since.After(dbU.Status().Since) {
		t.Errorf("web started before db was ready")
	}
	waitFor(t, s, "web", "log", func(Status) bool {
		b, _ := webU.Log().Snapshot()
		return bytes.Contains(b, []byte("web up"))
	})
}

func TestDependencyFailed(t *testing.T) {
	s, _ := newTestSupervisor(t)
	// A notify unit that exits before READY=1 never became ready.
	bad := svc("bad", config.RestartNo, "/bin/sh", "-c", "exit 1")
	bad.Notify = true
	dep := svc("dep", config.RestartNo, "/bin/sh", "-c", "sleep 30")
	dep.After = []string{"bad"}
	s.Apply([]Spec{bad, dep})
	st := waitFor(t, s, "dep", "failed", func(st Status) bool { return st.State == StateFailed })
	if st.Reason != "dependency bad failed" || st.Pid != 0 {
		t.Errorf("dep = %+v, want failed: dependency bad failed, never started", st)
	}
}

func TestShutdownReverseOrder(t *testing.T) {
	s, _ := newTestSupervisor(t)
	stopLog := filepath.Join(t.TempDir(), "order")
	mk := func(name string, after ...string) Spec {
		sp := svc(name, config.RestartAlways, "/bin/sh", "-c",
			"trap 'sleep 0.2; echo "+name+" >> "+stopLog+"; exit 0' TERM; echo trapped; while :; do sleep 0.05; done")
		sp.After = after
		return sp
	}
	s.Apply([]Spec{mk("a"), mk("b", "a"), mk("c", "b")})
	for _, name := range []string{"a", "b", "c"} {
		u, _ := s.Unit(name)
		waitLog(t, s, u, "trapped", 1)
	}
	s.Shutdown()
	b, err := os.ReadFile(stopLog)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(b)); strings.Join(got, " ") != "c b a" {
		t.Errorf("stop order = %v, want [c b a]", got)
	}
	for _, name := range []string{"a", "b", "c"} {
		if u, _ := s.Unit(name); u.Status().State != StateStopped {
			t.Errorf("%s = %s after Shutdown, want stopped", name, u.Status().State)
		}
	}
}

func TestStopTimeoutKills(t *testing.T) {
	s, log := newTestSupervisor(t)
	sp := svc("stubborn", config.RestartAlways, "/bin/sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.05; done")
	sp.StopTimeout = 300 * time.Millisecond
	s.Apply([]Spec{sp})
	u, _ := s.Unit("stubborn")
	waitLog(t, s, u, "trapped", 1)
	start := time.Now()
	<-s.Stop(u)
	if d := time.Since(start); d < 300*time.Millisecond || d > 5*time.Second {
		t.Errorf("stop took %s, want about the 300ms stop_timeout", d)
	}
	if st := u.Status(); st.State != StateStopped || st.LastExit != "killed by SIGKILL" {
		t.Errorf("status = %+v, want stopped after SIGKILL", st)
	}
	if !log.has("did not stop within 300ms, killing") {
		t.Errorf("console lines %q lack the kill line", log.lines)
	}
}

func TestApplyReload(t *testing.T) {
	s, _ := newTestSupervisor(t)
	keep := svc("keep", config.RestartNo, "/bin/sh", "-c", "sleep 30")
	change := svc("change", config.RestartNo, "/bin/sh", "-c", "sleep 30")
	gone := svc("gone", config.RestartNo, "/bin/sh", "-c", "sleep 30")
	s.Apply([]Spec{keep, change, gone})
	keepPid := waitFor(t, s, "keep", "running", func(st Status) bool { return st.State == StateRunning }).Pid
	changePid := waitFor(t, s, "change", "running", func(st Status) bool { return st.State == StateRunning }).Pid
	waitFor(t, s, "gone", "running", func(st Status) bool { return st.State == StateRunning })

	change.Exec = []string{"/bin/sh", "-c", "sleep 31"}
	added := svc("added", config.RestartNo, "/bin/sh", "-c", "sleep 30")
	s.Apply([]Spec{keep, change, added})
	if st := waitFor(t, s, "keep", "running", func(st Status) bool { return st.State == StateRunning }); st.Pid != keepPid {
		t.Errorf("unchanged unit restarted: pid %d, want %d", st.Pid, keepPid)
	}
	if st := waitFor(t, s, "change", "running", func(st Status) bool { return st.State == StateRunning }); st.Pid == changePid {
		t.Errorf("changed unit kept pid %d", st.Pid)
	}
	waitFor(t, s, "added", "running", func(st Status) bool { return st.State == StateRunning })
	if _, ok := s.Unit("gone"); ok {
		t.Error("removed unit still there")
	}
	var names []string
	for _, u := range s.Units() {
		names = append(names, u.Name())
	}
	if got := strings.Join(names, " "); got != "keep change added" {
		t.Errorf("Units() after reload = %q, want config order", got)
	}
}

func TestControlSocket(t *testing.T) {
	s, _ := newTestSupervisor(t)
	s.Apply([]Spec{svc("echo", config.RestartAlways, "/bin/sh", "-c", "echo hello from echo; sleep 30")})
	sock := filepath.Join(t.TempDir(), "nest.sock")
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	var powered []string
	srv := &Control{Sup: s, Version: "test", Power: func(a string) error {
		powered = append(powered, a)
		return nil
	}}
	go srv.Serve(l)
	defer srv.Close()

	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, %v, want 0600", fi.Mode().Perm(), err)
	}
	if _, err := ListenControl(sock); err == nil || !strings.Contains(err.Error(), "a nest already runs here") {
		t.Errorf("second ListenControl = %v, want 'a nest already runs here'", err)
	}

	ctx := context.Background()
	c := NewClient(sock)
	echo, _ := s.Unit("echo")
	waitLog(t, s, echo, "hello from echo", 1)
	list, err := c.Units(ctx)
	if err != nil || len(list) != 1 || list[0].Name != "echo" || list[0].State != StateRunning {
		t.Fatalf("Units() = %+v, %v", list, err)
	}
	if _, err := c.Unit(ctx, "nope"); err == nil || err.Error() != `no unit named "nope"` {
		t.Errorf("Unit(nope) = %v", err)
	}
	st, err := c.Act(ctx, "stop", "echo")
	if err != nil || st.State != StateStopped {
		t.Errorf("stop = %+v, %v, want stopped", st, err)
	}
	st, err = c.Act(ctx, "start", "echo")
	if err != nil || st.State != StateRunning {
		t.Errorf("start = %+v, %v, want running", st, err)
	}
	waitLog(t, s, echo, "hello from echo", 2)
	old := st.Pid
	st, err = c.Act(ctx, "restart", "echo")
	if err != nil || st.State != StateRunning || st.Pid == old {
		t.Errorf("restart = %+v, %v, want running with a new pid", st, err)
	}
	waitLog(t, s, echo, "hello from echo", 3)
	var got bytes.Buffer
	if err := c.Logs(ctx, "echo", false, &got); err != nil || strings.Count(got.String(), "hello from echo") != 3 {
		t.Errorf("Logs = %q, %v, want 3 runs' lines", got.String(), err)
	}

	// Follow sees new output as it comes.
	fctx, cancel := context.WithCancel(ctx)
	var followed syncBuffer
	done := make(chan error, 1)
	go func() { done <- c.Logs(fctx, "echo", true, &followed) }()
	time.Sleep(100 * time.Millisecond)
	c.Act(ctx, "restart", "echo")
	waitFor(t, s, "echo", "followed output", func(Status) bool {
		return strings.Count(followed.String(), "hello from echo") >= 4
	})
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Logs follow = %v", err)
	}

	if err := c.Power(ctx, "reboot"); err != nil || len(powered) != 1 || powered[0] != "reboot" {
		t.Errorf("Power(reboot) = %v, calls %v", err, powered)
	}
	if err := c.Reload(ctx); err == nil {
		t.Error("Reload without a reload function = nil, want an error")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func sprintf(format string, args ...any) string { return fmt.Sprintf(format, args...) }

func testKill(t *testing.T, pid int) {
	t.Helper()
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until u's log holds n copies of line.
func waitLog(t *testing.T, s *Supervisor, u *Unit, line string, n int) {
	t.Helper()
	waitFor(t, s, u.Name(), fmt.Sprintf("%d× %q in the log", n, line), func(Status) bool {
		b, _ := u.Log().Snapshot()
		return bytes.Count(b, []byte(line)) >= n
	})
}
