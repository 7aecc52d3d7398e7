package sandbox

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"100", 100},
		{"1024K", 1 << 20},
		{"1k", 1024},
		{"512M", 512 << 20},
		{"512m", 512 << 20},
		{"2G", 2 << 30},
		{"1T", 1 << 40},
		{"0G", 0},
		{"007M", 7 << 20},
		{"9223372036854775807", math.MaxInt64},
		{"8388607T", 8388607 << 40},
	}
	for _, tt := range tests {
		if got, err := ParseSize(tt.in); err != nil || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v, want %d", tt.in, got, err, tt.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"", "want a whole number of bytes with an optional unit K, M, G or T (binary: 1K = 1024), e.g. 512M"},
		{"M", "want a whole number"},
		{"1.5G", "want a whole number"},
		{"-1", "want a whole number"},
		{"+1", "want a whole number"},
		{"1 G", "want a whole number"},
		{" 1G", "want a whole number"},
		{"1GB", "want a whole number"},
		{"1GiB", "want a whole number"},
		{"1P", "want a whole number"},
		{"1e9", "want a whole number"},
		{"0x10", "want a whole number"},
		{"8388608T", "too large"},
		{"9223372036854775808", "too large"},
	}
	for _, tt := range bad {
		_, err := ParseSize(tt.in)
		if err == nil || !strings.Contains(err.Error(), tt.msg) || !strings.Contains(err.Error(), `"`+tt.in+`"`) {
			t.Errorf("ParseSize(%q) = %v, want an error naming it and saying %q", tt.in, err, tt.msg)
		}
	}
}

func TestFormatSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{0, "0"},
		{100, "100"},
		{1536, "1536"}, // 1.5K: no whole unit
		{2048, "2K"},
		{512 << 20, "512M"},
		{1536 << 20, "1536M"},
		{2 << 30, "2G"},
		{3 << 40, "3T"},
		{1<<40 + 1, "1099511627777"},
	}
	for _, tt := range tests {
		got := formatSize(tt.in)
		if got != tt.want {
			t.Errorf("formatSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
		if back, err := ParseSize(got); err != nil || back != tt.in {
			t.Errorf("ParseSize(formatSize(%d) = %q) = %d, %v", tt.in, got, back, err)
		}
	}
}

func TestCPUMax(t *testing.T) {
	tests := []struct {
		cpus float64
		want string
	}{
		{0.5, "50000 100000"},
		{2, "200000 100000"},
		{1, "100000 100000"},
		{0.01, "1000 100000"},
		{1.5, "150000 100000"},
		{0.333333, "33333 100000"},
		{64, "6400000 100000"},
	}
	for _, tt := range tests {
		if got, err := cpuMax(tt.cpus); err != nil || got != tt.want {
			t.Errorf("cpuMax(%v) = %q, %v, want %q", tt.cpus, got, err, tt.want)
		}
	}
	for _, cpus := range []float64{0.001, 0.0099, -1, math.NaN(), math.Inf(1), 2e6} {
		if got, err := cpuMax(cpus); err == nil {
			t.Errorf("cpuMax(%v) = %q, want an error", cpus, got)
		}
	}
}

// fakeCgroup makes a directory that looks like a cgroup v2 child: its
// parent enables the controllers in subtree_control, and it has the
// control files of those controllers, empty.
func fakeCgroup(t testing.TB, controllers ...string) string {
	t.Helper()
	parent := t.TempDir()
	dir := filepath.Join(parent, "x")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(path, s string) {
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	list := strings.Join(controllers, " ") + "\n"
	write(filepath.Join(parent, "cgroup.controllers"), "cpuset cpu io memory hugetlb pids rdma misc\n")
	write(filepath.Join(parent, "cgroup.subtree_control"), list)
	write(filepath.Join(dir, "cgroup.controllers"), list)
	write(filepath.Join(dir, "cgroup.subtree_control"), "")
	files := map[string][]string{"memory": {"memory.max", "memory.high"}, "pids": {"pids.max"}, "cpu": {"cpu.max"}}
	for _, c := range controllers {
		for _, f := range files[c] {
			write(filepath.Join(dir, f), "")
		}
	}
	return dir
}

// controlFiles returns the non-empty control files of dir.
func controlFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	got := map[string]string{}
	for _, f := range []string{"memory.max", "memory.high", "pids.max", "cpu.max"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil && len(b) > 0 {
			got[f] = string(b)
		}
	}
	return got
}

func TestApply(t *testing.T) {
	all := []string{"cpu", "memory", "pids"}
	tests := []struct {
		name        string
		l           Limits
		controllers []string
		want        map[string]string
	}{
		{"all", Limits{Memory: 512 << 20, MemoryHigh: 384 << 20, Pids: 4096, CPU: 0.5}, all, map[string]string{
			"memory.max": "536870912", "memory.high": "402653184", "pids.max": "4096", "cpu.max": "50000 100000",
		}},
		{"memory only", Limits{Memory: 2 << 30}, []string{"memory"}, map[string]string{"memory.max": "2147483648"}},
		{"cpu only", Limits{CPU: 2}, []string{"cpu"}, map[string]string{"cpu.max": "200000 100000"}},
		{"pids only", Limits{Pids: 1}, []string{"pids"}, map[string]string{"pids.max": "1"}},
		{"none", Limits{}, all, map[string]string{}},
		// No limit needs no controller.
		{"none without controllers", Limits{}, nil, map[string]string{}},
		{"pids without memory", Limits{Pids: 10}, []string{"pids"}, map[string]string{"pids.max": "10"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fakeCgroup(t, tt.controllers...)
			if err := tt.l.Apply(dir); err != nil {
				t.Fatalf("%+v.Apply(%s) = %v", tt.l, dir, err)
			}
			got := controlFiles(t, dir)
			if len(got) != len(tt.want) {
				t.Errorf("%+v.Apply wrote %q, want %q", tt.l, got, tt.want)
			}
			for f, want := range tt.want {
				if got[f] != want {
					t.Errorf("%+v.Apply: %s = %q, want %q", tt.l, f, got[f], want)
				}
			}
		})
	}
	// Nothing to do needs no cgroup at all.
	if err := (Limits{}).Apply(filepath.Join(t.TempDir(), "none", "x")); err != nil {
		t.Errorf("Limits{}.Apply(no such dir) = %v, want nil", err)
	}
}

func TestApplyErrors(t *testing.T) {
	tests := []struct {
		name        string
		l           Limits
		controllers []string
		want        []string // lines of the error; DIR is the cgroup
	}{
		{"no memory controller", Limits{Memory: 512 << 20}, []string{"cpu", "pids"},
			[]string{"memory = 512M: the memory controller is not available in DIR"}},
		{"no memory controller for memory_high", Limits{MemoryHigh: 1536 << 20}, []string{"pids"},
			[]string{"memory_high = 1536M: the memory controller is not available in DIR"}},
		{"no pids controller", Limits{Pids: 100}, []string{"memory"},
			[]string{"pids = 100: the pids controller is not available in DIR"}},
		{"no cpu controller", Limits{CPU: 1.5}, []string{"memory", "pids"},
			[]string{"cpu = 1.5: the cpu controller is not available in DIR"}},
		{"none enabled", Limits{Memory: 1000, Pids: 5, CPU: 0.25}, nil, []string{
			"memory = 1000: the memory controller is not available in DIR",
			"pids = 5: the pids controller is not available in DIR",
			"cpu = 0.25: the cpu controller is not available in DIR",
		}},
		{"negative memory", Limits{Memory: -1}, []string{"memory"},
			[]string{"cgroup DIR: memory = -1: want a size of 0 (no limit) or more"}},
		{"negative pids", Limits{Pids: -2}, []string{"pids"},
			[]string{"cgroup DIR: pids = -2: want 0 (no limit) or more"}},
		{"tiny cpu", Limits{CPU: 0.001}, []string{"cpu"},
			[]string{"cgroup DIR: cpu = 0.001: want a number of CPUs from 0.01 to 1000000, or 0 for no limit"}},
		{"high above max", Limits{Memory: 1 << 30, MemoryHigh: 2 << 30}, []string{"memory"},
			[]string{"cgroup DIR: memory_high = 2G is above memory = 1G: the hard limit would be hit first"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fakeCgroup(t, tt.controllers...)
			err := tt.l.Apply(dir)
			want := strings.ReplaceAll(strings.Join(tt.want, "\n"), "DIR", dir)
			if err == nil || err.Error() != want {
				t.Errorf("%+v.Apply(%s) = %v, want %s", tt.l, dir, err, want)
			}
			if got := controlFiles(t, dir); len(got) > 0 {
				t.Errorf("%+v.Apply failed but wrote %q", tt.l, got)
			}
		})
	}

	// A directory that is no cgroup: the control file is missing, and
	// Apply says which limit it could not write rather than creating it.
	dir := fakeCgroup(t, "pids")
	if err := os.Remove(filepath.Join(dir, "pids.max")); err != nil {
		t.Fatal(err)
	}
	err := Limits{Pids: 7}.Apply(dir)
	if err == nil || !strings.HasPrefix(err.Error(), "pids = 7: open "+filepath.Join(dir, "pids.max")) {
		t.Errorf("Apply without pids.max = %v, want pids = 7: open ...", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "pids.max")); err == nil {
		t.Error("Apply created pids.max")
	}
	// No parent controller list: not a cgroup v2 tree.
	err = Limits{Pids: 7}.Apply(filepath.Join(t.TempDir(), "x"))
	if err == nil || !strings.Contains(err.Error(), "which controllers are enabled") {
		t.Errorf("Apply outside cgroup2 = %v, want which controllers are enabled", err)
	}
}

func BenchmarkApply(b *testing.B) {
	dir := fakeCgroup(b, "cpu", "memory", "pids")
	l := Limits{Memory: 512 << 20, MemoryHigh: 384 << 20, Pids: 4096, CPU: 0.5}
	for b.Loop() {
		if err := l.Apply(dir); err != nil {
			b.Fatal(err)
		}
	}
}
