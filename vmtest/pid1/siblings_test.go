//go:build vmguest

package pid1

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"nest/supervise"
)

// TestSiblingsGuest measures NEST_SIBLINGS sibling daemon containers
// (BenchmarkSiblings in vmtest): the time from PID 1's exec to all of them
// running, PID 1's memory then, and the memory of one idle child init —
// its unique set (USS: Private_Clean + Private_Dirty of smaps_rollup),
// what stopping it would give back. Lines "NESTBENCH key value" carry the
// numbers out.
func TestSiblingsGuest(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("NEST_SIBLINGS"))
	if err != nil || n < 1 {
		t.Fatalf("NEST_SIBLINGS=%q: want a positive count", os.Getenv("NEST_SIBLINGS"))
	}
	c := supervise.NewClient("/run/nest/nest.sock")
	ctx := context.Background()
	var units []supervise.Status
	running := func() int {
		var err error
		if units, err = c.Units(ctx); err != nil {
			return 0
		}
		k := 0
		for _, u := range units {
			if u.Kind == "daemon" && u.State == supervise.StateRunning {
				k++
			}
		}
		return k
	}
	deadline := time.Now().Add(40 * time.Minute)
	for running() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d containers running after 40 minutes", running(), n)
		}
		// Each poll is all N statuses from PID 1: not too often.
		time.Sleep(500 * time.Millisecond)
	}
	report("siblings_all_running_ms", fmt.Sprint(sinceStartMS(t, 1)))

	// Idle: let the inits finish starting and the runtime return what it
	// does not use.
	time.Sleep(5 * time.Second)
	report("pid1_rss_kb", statusKB(t, 1, "VmRSS"))
	report("pid1_uss_kb", fmt.Sprint(uss(t, 1)))
	var child supervise.Status
	for _, u := range units {
		if u.Kind == "daemon" && u.Pid > 0 {
			child = u
			break
		}
	}
	if child.Pid == 0 {
		t.Fatal("no running container with a pid")
	}
	report("child_init_rss_kb", statusKB(t, child.Pid, "VmRSS"))
	report("child_init_pss_kb", fmt.Sprint(rollup(t, child.Pid)["Pss"]))
	report("child_init_uss_kb", fmt.Sprint(uss(t, child.Pid)))
	var total, avail int
	for _, line := range strings.Split(readFile(t, "/proc/meminfo"), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "MemTotal:" {
			total, _ = strconv.Atoi(f[1])
		}
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			avail, _ = strconv.Atoi(f[1])
		}
	}
	report("mem_used_mb", fmt.Sprint((total-avail)/1024))
}

// sinceStartMS returns how long ago process pid was started, in ms (its
// start time is in clock ticks after boot, 100 a second).
func sinceStartMS(t *testing.T, pid int) int {
	stat := readFile(t, fmt.Sprintf("/proc/%d/stat", pid))
	f := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	ticks, err := strconv.Atoi(f[19])
	if err != nil {
		t.Fatalf("/proc/%d/stat: start time %q", pid, f[19])
	}
	up := strings.Fields(readFile(t, "/proc/uptime"))
	secs, err := strconv.ParseFloat(up[0], 64)
	if err != nil {
		t.Fatalf("/proc/uptime: %q", up)
	}
	return int(secs*1000) - ticks*10
}

// rollup returns the kB fields of /proc/PID/smaps_rollup.
func rollup(t *testing.T, pid int) map[string]int {
	out := map[string]int{}
	for _, line := range strings.Split(readFile(t, fmt.Sprintf("/proc/%d/smaps_rollup", pid)), "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[2] == "kB" {
			v, _ := strconv.Atoi(f[1])
			out[strings.TrimSuffix(f[0], ":")] = v
		}
	}
	return out
}

// uss is the unique set size of pid in kB: its private pages, clean and
// dirty.
func uss(t *testing.T, pid int) int {
	r := rollup(t, pid)
	return r["Private_Clean"] + r["Private_Dirty"]
}
