package sandbox

// cgroup v2 (4.5) with the memory and pids controllers (4.5) and the cpu
// controller (4.15); a child is born in its cgroup by CLONE_INTO_CGROUP
// (5.7), so the limits hold from its first instruction when Apply runs
// before the start.

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// cpuPeriod is the cpu.max period in microseconds, the kernel's default.
const cpuPeriod = 100000

// Limits are the cgroup v2 limits of one container. A zero field is no
// limit.
type Limits struct {
	Memory     int64   // bytes: memory.max
	MemoryHigh int64   // bytes: memory.high, where reclaim and throttling start
	Pids       int64   // pids.max
	CPU        float64 // number of CPUs: cpu.max "CPU*100000 100000"
}

// limitFile is one value Apply writes.
type limitFile struct {
	key        string // the config key, for messages
	shown      string // the value as the config would say it
	controller string
	file       string
	value      string
}

// files returns what l asks to be written, or an error for a value no
// cgroup can take.
func (l Limits) files() ([]limitFile, error) {
	var writes []limitFile
	var errs []error
	size := func(key, file string, n int64) {
		switch {
		case n < 0:
			errs = append(errs, fmt.Errorf("%s = %d: want a size of 0 (no limit) or more", key, n))
		case n > 0:
			writes = append(writes, limitFile{key, formatSize(n), "memory", file, strconv.FormatInt(n, 10)})
		}
	}
	size("memory", "memory.max", l.Memory)
	size("memory_high", "memory.high", l.MemoryHigh)
	if l.Memory > 0 && l.MemoryHigh > l.Memory {
		errs = append(errs, fmt.Errorf("memory_high = %s is above memory = %s: the hard limit would be hit first",
			formatSize(l.MemoryHigh), formatSize(l.Memory)))
	}
	switch {
	case l.Pids < 0:
		errs = append(errs, fmt.Errorf("pids = %d: want 0 (no limit) or more", l.Pids))
	case l.Pids > 0:
		writes = append(writes, limitFile{"pids", strconv.FormatInt(l.Pids, 10), "pids", "pids.max", strconv.FormatInt(l.Pids, 10)})
	}
	if l.CPU != 0 {
		v, err := cpuMax(l.CPU)
		if err != nil {
			errs = append(errs, err)
		} else {
			writes = append(writes, limitFile{"cpu", strconv.FormatFloat(l.CPU, 'g', -1, 64), "cpu", "cpu.max", v})
		}
	}
	return writes, errors.Join(errs...)
}

// cpuMax formats a number of CPUs as cpu.max: "QUOTA PERIOD" in
// microseconds, 0.5 -> "50000 100000".
func cpuMax(cpus float64) (string, error) {
	// The kernel takes quotas from 1ms to about 2^44µs; past 1e6 CPUs the
	// float is no longer the number someone wrote anyway.
	if math.IsNaN(cpus) || cpus < 0.01 || cpus > 1e6 {
		return "", fmt.Errorf("cpu = %v: want a number of CPUs from 0.01 to 1000000, or 0 for no limit", cpus)
	}
	quota := int64(math.Round(cpus * cpuPeriod))
	return strconv.FormatInt(quota, 10) + " " + strconv.Itoa(cpuPeriod), nil
}

// Apply writes the limits into the cgroup v2 directory dir. A limit whose
// controller is not enabled for dir (listed in the cgroup.subtree_control
// of dir's parent) is an error naming both, e.g. "memory = 512M: the memory
// controller is not available in /sys/fs/cgroup/x"; nothing is written
// then. Zero limits write nothing and need no controller: Apply is meant
// for a fresh cgroup, where every limit starts at "max".
func (l Limits) Apply(dir string) error {
	writes, err := l.files()
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	if len(writes) == 0 {
		return nil
	}
	parent := filepath.Join(filepath.Dir(dir), "cgroup.subtree_control")
	b, err := os.ReadFile(parent)
	if err != nil {
		return fmt.Errorf("cgroup %s: which controllers are enabled: %w", dir, err)
	}
	enabled := strings.Fields(string(b))
	var errs []error
	for _, f := range writes {
		if !slices.Contains(enabled, f.controller) {
			errs = append(errs, fmt.Errorf("%s = %s: the %s controller is not available in %s",
				f.key, f.shown, f.controller, dir))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	for _, f := range writes {
		if err := writeControl(filepath.Join(dir, f.file), f.value); err != nil {
			return fmt.Errorf("%s = %s: %w", f.key, f.shown, err)
		}
	}
	return nil
}

// writeControl writes one value into an existing control file. It never
// creates a file: a missing one means dir is no cgroup, which must show.
func writeControl(path, value string) error {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte(value)); err != nil {
		// The kernel checks the value here: EINVAL for one it refuses.
		return &os.PathError{Op: "write " + strconv.Quote(value) + " to", Path: path, Err: err}
	}
	return nil
}

var sizeUnits = []struct {
	suffix byte
	shift  uint
}{{'K', 10}, {'M', 20}, {'G', 30}, {'T', 40}}

// ParseSize parses a size in bytes with an optional binary unit: "100",
// "1024K", "512M", "2G", "1T" (K = 1024, M = 1024K, ...; lower case too).
func ParseSize(s string) (int64, error) {
	digits, shift := s, uint(0)
	if n := len(s); n > 0 {
		for _, u := range sizeUnits {
			if s[n-1] == u.suffix || s[n-1] == u.suffix+'a'-'A' {
				digits, shift = s[:n-1], u.shift
			}
		}
	}
	bad := fmt.Errorf("size %q: want a whole number of bytes with an optional unit K, M, G or T (binary: 1K = 1024), e.g. 512M", s)
	if digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, bad
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q: too large", s)
	}
	return n << shift, nil
}

// formatSize is the inverse of ParseSize, with the largest exact unit.
func formatSize(n int64) string {
	for i := len(sizeUnits) - 1; i >= 0; i-- {
		u := sizeUnits[i]
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + string(u.suffix)
		}
	}
	return strconv.FormatInt(n, 10)
}
