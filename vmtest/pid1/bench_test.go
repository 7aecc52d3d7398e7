//go:build vmguest

package pid1

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"nest/supervise"
)

// TestBenchGuest measures PID 1 from inside the VM for `make bench`
// (BenchmarkPID1 in vmtest): RSS idle with 10 services, the restart
// latency after a crash, and RSS after 500 spawns. Lines "NESTBENCH key
// value" carry the numbers out.
func TestBenchGuest(t *testing.T) {
	c := supervise.NewClient("/run/nest/nest.sock")
	ctx := context.Background()
	until(t, 30*time.Second, "10 services running", func() bool {
		units, err := c.Units(ctx)
		n := 0
		for _, u := range units {
			if strings.HasPrefix(u.Name, "svc") && u.State == supervise.StateRunning {
				n++
			}
		}
		return err == nil && n == 10
	})
	time.Sleep(3 * time.Second)
	report("rss_idle_kb", statusKB(t, 1, "VmRSS"))
	// The private part; the rest is the binary's own pages, which an
	// initramfs keeps in RAM whether PID 1 maps them or not.
	report("rss_idle_anon_kb", statusKB(t, 1, "RssAnon"))

	// Restart latency: kill -9 to the new process running. The first
	// restart waits the 100 ms backoff by design.
	st := status(t, "svc0")
	killed := time.Now()
	syscall.Kill(st.Pid, syscall.SIGKILL)
	until(t, 10*time.Second, "svc0 restarted", func() bool {
		s, err := c.Unit(ctx, "svc0")
		return err == nil && s.State == supervise.StateRunning && s.Pid != st.Pid
	})
	report("restart_ms", fmt.Sprintf("%.1f", float64(time.Since(killed).Microseconds())/1000))

	start := time.Now()
	for range 500 {
		if _, err := c.Act(ctx, "start", "spawn"); err != nil {
			t.Fatal(err)
		}
	}
	report("spawn_ms", fmt.Sprintf("%.2f", float64(time.Since(start).Microseconds())/1000/500))
	time.Sleep(2 * time.Second)
	report("rss_after_500_spawns_kb", statusKB(t, 1, "VmRSS"))
}

func report(key, value string) { fmt.Printf("NESTBENCH %s %s\n", key, value) }

func statusKB(t *testing.T, pid int, field string) string {
	for _, line := range strings.Split(readFile(t, fmt.Sprintf("/proc/%d/status", pid)), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			return strings.TrimSuffix(strings.TrimSpace(v), " kB")
		}
	}
	t.Fatalf("no %s for pid %d", field, pid)
	return ""
}
