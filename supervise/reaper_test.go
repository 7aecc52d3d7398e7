package supervise

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The supervise tests run as a subreaper, so orphans come back to the test
// binary exactly as they come back to PID 1, and one goroutine plays the
// init's SIGCHLD loop.
var testReaper = NewReaper()

func TestMain(m *testing.M) {
	// The test binary is the escalation broker its supervisors start.
	if len(os.Args) > 1 && os.Args[1] == BrokerMode {
		os.Exit(RunBroker(os.Args[2:]))
	}
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "subreaper:", err)
		os.Exit(1)
	}
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				testReaper.Reap()
			case <-stop:
				return
			}
		}
	}()
	code := m.Run()
	close(stop)
	os.Exit(code)
}

func startSh(t testing.TB, script string) *Process {
	t.Helper()
	p, err := testReaper.Start([]string{"/bin/sh", "-c", script}, &syscall.ProcAttr{Files: []uintptr{0, 1, 2}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wait(t testing.TB, p *Process) ExitStatus {
	t.Helper()
	select {
	case st := <-p.Done():
		p.Close()
		return st
	case <-time.After(10 * time.Second):
		t.Fatalf("pid %d did not exit", p.Pid)
		return ExitStatus{}
	}
}

// TestReaperStatusesUnderOrphans is the measured bug of a wait4(-1) reaper
// beside exec.Cmd.Wait: every supervised process must get its own status
// while orphans are being reaped at the same time.
func TestReaperStatusesUnderOrphans(t *testing.T) {
	orphansBefore := testReaper.Orphans()
	var wg sync.WaitGroup
	errs := make(chan error, 300)
	for i := range 300 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			code := i % 256
			// Each run also leaves an orphan behind.
			p := startSh(t, fmt.Sprintf("(exit 3) & exit %d", code))
			if st := wait(t, p); st.Code != code || st.Signal != 0 {
				errs <- fmt.Errorf("run %d: status %v, want exit status %d", i, st, code)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testReaper.Orphans()-orphansBefore < 300 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := testReaper.Orphans() - orphansBefore; n < 300 {
		t.Errorf("orphans reaped = %d, want >= 300", n)
	}
}

func TestExitStatus(t *testing.T) {
	tests := []struct {
		script string
		want   ExitStatus
		shell  int
		text   string
	}{
		{"exit 0", ExitStatus{}, 0, "exit status 0"},
		{"exit 255", ExitStatus{Code: 255}, 255, "exit status 255"},
		{"kill -TERM $$", ExitStatus{Signal: unix.SIGTERM}, 143, "killed by SIGTERM"},
		{"kill -KILL $$", ExitStatus{Signal: unix.SIGKILL}, 137, "killed by SIGKILL"},
	}
	for _, tt := range tests {
		st := wait(t, startSh(t, tt.script))
		if st != tt.want || st.ShellCode() != tt.shell || st.String() != tt.text {
			t.Errorf("%q: status %#v (%d, %q), want %#v (%d, %q)", tt.script, st, st.ShellCode(), st.String(), tt.want, tt.shell, tt.text)
		}
	}
}

func TestProcessSignalThroughPidfd(t *testing.T) {
	p := startSh(t, "sleep 30")
	if err := p.Signal(unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	if st := wait(t, p); st.Signal != unix.SIGUSR1 {
		t.Errorf("status = %v, want killed by SIGUSR1", st)
	}
}

func TestKillDescendants(t *testing.T) {
	// A grandchild that ignores SIGTERM must be killed after the grace.
	p := startSh(t, "trap '' TERM; (trap '' TERM; sleep 30) & sleep 30")
	time.Sleep(100 * time.Millisecond)
	if n := len(Descendants(os.Getpid())); n < 2 {
		t.Fatalf("Descendants = %d processes, want >= 2", n)
	}
	start := time.Now()
	if !testReaper.KillDescendants(300 * time.Millisecond) {
		t.Errorf("KillDescendants = false, want true (SIGTERM was ignored)")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("KillDescendants took %s", d)
	}
	if st := wait(t, p); st.Signal != unix.SIGKILL {
		t.Errorf("status = %v, want killed by SIGKILL", st)
	}
	if n := len(Descendants(os.Getpid())); n != 0 {
		t.Errorf("Descendants after kill = %d, want 0", n)
	}
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		n    int
		want time.Duration
	}{
		{1, 100 * time.Millisecond}, {2, 200 * time.Millisecond}, {3, 400 * time.Millisecond},
		{9, 25600 * time.Millisecond}, {10, 30 * time.Second}, {50, 30 * time.Second},
	}
	for _, tt := range tests {
		if got := Backoff(tt.n); got != tt.want {
			t.Errorf("Backoff(%d) = %s, want %s", tt.n, got, tt.want)
		}
	}
}
