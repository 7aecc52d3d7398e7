package sandbox

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unicode"

	"golang.org/x/sys/unix"

	"nest/statefile"
)

const (
	// RangeSize is how many uids (and as many gids) each range holds: a
	// whole 16-bit id space, so a distribution's nobody (65534) fits.
	RangeSize = 65536
	// FirstID is where the first range starts; the next ones follow at
	// FirstID + k*RangeSize. The ids below stay the host's own.
	FirstID = 100000
	// DefaultPoolPath is the pool of the root init.
	DefaultPoolPath = "/var/lib/nest/idmap"

	// maxEnd is one past the last id a range may hold: (uid_t)-1 is no id
	// (setuid(-1) means "unchanged"), so a range ends at 2^32-1 at most.
	maxEnd = math.MaxUint32
	// tempPrefix starts the owner name of a one-shot range.
	tempPrefix = "run:"
)

// A Range is a block of host ids given to one owner, mapped to ids 0..Size-1
// inside the owner's user namespace.
type Range struct {
	Owner       string
	Start, Size uint32
}

// UidMappings maps uid 0..Size-1 in the new user namespace to the range.
func (r Range) UidMappings() []syscall.SysProcIDMap {
	return []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(r.Start), Size: int(r.Size)}}
}

// GidMappings maps gid 0..Size-1 in the new user namespace to the range.
func (r Range) GidMappings() []syscall.SysProcIDMap { return r.UidMappings() }

func (r Range) end() uint64 { return uint64(r.Start) + uint64(r.Size) }

// A Pool hands out id ranges, one per owner, persisted in the file Path:
// one line per lease, "START SIZE OWNER", sorted by start, e.g.
//
//	100000 65536 alice
//	165536 65536 run:1234:987654
//
// A one-shot lease (AcquireTemp) records the process's pid and its start
// time, in clock ticks after boot as /proc/PID/stat field 22 says, so that
// a new process that gets the same pid does not keep the lease alive.
//
// Every change happens under an exclusive flock(2) of Path+".lock" and is
// written atomically (a temp file in the same directory, fsync, rename,
// fsync of the directory), so processes that share the file (the root init
// and every `nest run`) never hand out one range twice. All users of a
// pool must see one pid namespace: that is where a one-shot owner's pid is
// looked up. Lines starting with '#' are comments; a rewrite keeps only
// the header nest writes.
//
// One-shot leases live in a second file, RunPath, on /run: they die with
// their process, so they need no fsync (a `nest run` would otherwise pay
// two disk syncs, 3 ms measured), and a reboot empties /run exactly when
// their processes are gone. Both files change under the one lock.
type Pool struct {
	// Path is the pool file; empty means DefaultPoolPath.
	Path string
	// RunPath holds the one-shot leases; empty means DefaultRunPath for
	// the default Path, and Path+".run" otherwise.
	RunPath string
}

// DefaultRunPath is where the default pool keeps one-shot leases.
const DefaultRunPath = "/run/nest/idmap.run"

func (p Pool) paths() (path, runPath string) {
	path, runPath = p.Path, p.RunPath
	if path == "" {
		path = DefaultPoolPath
		if runPath == "" {
			runPath = DefaultRunPath
		}
	}
	if runPath == "" {
		runPath = path + ".run"
	}
	return path, runPath
}

// lease is one line of the pool file.
type lease struct {
	Range
	started uint64 // for a one-shot owner "run:PID": the process start time
}

// Acquire returns the range that name owns, allocating the lowest free one
// the first time; the same name gets the same range until Release. Names
// are what the caller uses for its children (no spaces, no control
// characters); "run:" is reserved for AcquireTemp. Leases of one-shot
// sandboxes whose process is gone are reclaimed first.
func (p Pool) Acquire(name string) (Range, error) {
	if err := checkOwner(name); err != nil {
		return Range{}, fmt.Errorf("id range for %q: %w", name, err)
	}
	return p.acquire(name, 0)
}

// AcquireTemp allocates a range for a one-shot sandbox of this process
// (`nest run`): its owner is "run:PID", and it is reclaimed by the next
// Acquire or AcquireTemp after this process has exited, or by Release. A
// second call in the same process returns the same range.
func (p Pool) AcquireTemp() (Range, error) {
	pid := os.Getpid()
	started, err := procStart(pid)
	if err != nil {
		return Range{}, fmt.Errorf("id range for a one-shot sandbox: %w", err)
	}
	return p.acquire(tempPrefix+strconv.Itoa(pid), started)
}

// Release gives back the range of name ("run:PID" for a one-shot range).
// Releasing a name that owns no range does nothing.
func (p Pool) Release(name string) error {
	err := p.update(func(ls []lease) ([]lease, error) {
		return slices.DeleteFunc(ls, func(l lease) bool { return l.Owner == name }), nil
	})
	if err != nil {
		return fmt.Errorf("release the id range of %q: %w", name, err)
	}
	return nil
}

func (p Pool) acquire(owner string, started uint64) (Range, error) {
	var got Range
	err := p.update(func(ls []lease) ([]lease, error) {
		ls = reclaim(ls)
		for _, l := range ls {
			if l.Owner == owner {
				got = l.Range
				return ls, nil
			}
		}
		start, err := lowestFree(ls)
		if err != nil {
			return nil, err
		}
		got = Range{Owner: owner, Start: start, Size: RangeSize}
		return append(ls, lease{got, started}), nil
	})
	if err != nil {
		return Range{}, fmt.Errorf("id range for %q: %w", owner, err)
	}
	return got, nil
}

// lowestFree returns the start of the lowest slot FirstID + k*RangeSize
// that no lease overlaps.
func lowestFree(ls []lease) (uint32, error) {
	sorted := slices.Clone(ls)
	sortByStart(sorted)
	cand := uint64(FirstID)
	for _, l := range sorted {
		if l.end() <= cand {
			continue
		}
		if uint64(l.Start) >= cand+RangeSize {
			break
		}
		// l overlaps the candidate: try the first slot after it.
		cand = FirstID + (l.end()-FirstID+RangeSize-1)/RangeSize*RangeSize
	}
	if cand+RangeSize > maxEnd {
		return 0, errors.New("id ranges exhausted")
	}
	return uint32(cand), nil
}

func sortByStart(ls []lease) {
	slices.SortFunc(ls, func(a, b lease) int { return cmp.Compare(a.Start, b.Start) })
}

// reclaim drops the one-shot leases whose process is gone.
func reclaim(ls []lease) []lease {
	return slices.DeleteFunc(ls, func(l lease) bool {
		pid, ok := tempPid(l.Owner)
		if !ok {
			return false
		}
		started, err := procStart(pid)
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ESRCH) {
			return true
		}
		// Unreadable for another reason: keep the lease rather than risk
		// handing a live sandbox's ids to someone else.
		return err == nil && started != l.started
	})
}

// tempPid returns PID of an owner "run:PID".
func tempPid(owner string) (int, bool) {
	s, ok := strings.CutPrefix(owner, tempPrefix)
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(s)
	return pid, err == nil && pid > 0
}

// procStart returns the start time of process pid, field 22 of
// /proc/PID/stat, in clock ticks after boot.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// Field 2, the command name, is in parentheses and may hold spaces and
	// parentheses itself: count fields from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:])) // f[0] is field 3
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields, want at least 22", pid, len(f)+2)
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: start time: %w", pid, err)
	}
	return n, nil
}

// checkOwner checks a name given to Acquire: the file has one lease per
// line with the owner last, so it must be one word.
func checkOwner(name string) error {
	switch {
	case name == "":
		return errors.New("empty owner name")
	case len(name) > 255:
		return errors.New("owner name longer than 255 bytes")
	case strings.HasPrefix(name, tempPrefix):
		return errors.New(`owner names starting with "run:" are reserved for one-shot sandboxes`)
	case strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return errors.New("owner name with a space or a control character")
	}
	return nil
}

// update runs change on the leases under the pool's lock and writes the
// result back if it differs.
func (p Pool) update(change func([]lease) ([]lease, error)) error {
	path, runPath := p.paths()
	for _, dir := range []string{filepath.Dir(path), filepath.Dir(runPath)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("id pool: %w", err)
		}
	}
	unlock, err := statefile.Lock(path + ".lock")
	if err != nil {
		return fmt.Errorf("id pool: %w", err)
	}
	defer unlock()
	kept, err := readLeases(path)
	if err != nil {
		return err
	}
	temp, err := readLeases(runPath)
	if err != nil {
		return err
	}
	ls, err := change(append(slices.Clone(kept), temp...))
	if err != nil {
		return err
	}
	newKept, newTemp := splitLeases(ls)
	if !sameLeases(newKept, kept) {
		if err := writeLeases(path, newKept, true); err != nil {
			return err
		}
	}
	if !sameLeases(newTemp, temp) {
		return writeLeases(runPath, newTemp, false)
	}
	return nil
}

// splitLeases separates persistent leases from one-shot ones.
func splitLeases(ls []lease) (kept, temp []lease) {
	for _, l := range ls {
		if _, ok := tempPid(l.Owner); ok {
			temp = append(temp, l)
		} else {
			kept = append(kept, l)
		}
	}
	return kept, temp
}

func sameLeases(a, b []lease) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sortByStart(a)
	sortByStart(b)
	return slices.Equal(a, b)
}

// readLeases reads the pool file; a missing file is an empty pool. Any
// line it cannot read is an error naming FILE:LINE: dropping a lease would
// give its ids to a second owner.
func readLeases(path string) ([]lease, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("id pool: %w", err)
	}
	var ls []lease
	lines := map[string]int{} // owner -> line
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		l, err := parseLease(line)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if prev, ok := lines[l.Owner]; ok {
			return nil, fmt.Errorf("%s:%d: %s already owns a range on line %d", path, n, l.Owner, prev)
		}
		lines[l.Owner] = n
		ls = append(ls, l)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("id pool %s: %w", path, err)
	}
	sorted := slices.Clone(ls)
	sortByStart(sorted)
	for i := 1; i < len(sorted); i++ {
		a, b := sorted[i-1], sorted[i]
		if uint64(b.Start) < a.end() {
			if lines[a.Owner] > lines[b.Owner] {
				a, b = b, a
			}
			return nil, fmt.Errorf("%s:%d: range %d+%d of %s overlaps %d+%d of %s on line %d",
				path, lines[b.Owner], b.Start, b.Size, b.Owner, a.Start, a.Size, a.Owner, lines[a.Owner])
		}
	}
	return ls, nil
}

// parseLease parses "START SIZE OWNER".
func parseLease(line string) (lease, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return lease{}, fmt.Errorf("%q: want START SIZE OWNER", line)
	}
	start, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return lease{}, fmt.Errorf("start %q: want a number below 2^32", f[0])
	}
	size, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil || size == 0 {
		return lease{}, fmt.Errorf("size %q: want a number from 1 to 2^32-1", f[1])
	}
	if start+size > maxEnd {
		return lease{}, fmt.Errorf("range %d+%d goes past id 2^32-2", start, size)
	}
	l := lease{Range: Range{Owner: f[2], Start: uint32(start), Size: uint32(size)}}
	if rest, ok := strings.CutPrefix(f[2], tempPrefix); ok {
		pid, started, ok := strings.Cut(rest, ":")
		l.Owner = tempPrefix + pid
		n, err := strconv.ParseUint(started, 10, 64)
		if _, isPid := tempPid(l.Owner); !ok || err != nil || !isPid {
			return lease{}, fmt.Errorf("owner %q: want run:PID:STARTTIME", f[2])
		}
		l.started = n
	} else if err := checkOwner(f[2]); err != nil {
		return lease{}, err
	}
	return l, nil
}

// writeLeases replaces the pool file atomically; durable makes it survive
// a crash too (fsync of the file and of its directory).
func writeLeases(path string, ls []lease, durable bool) error {
	sortByStart(ls)
	var b bytes.Buffer
	b.WriteString("# nest id ranges: START SIZE OWNER (run:PID:STARTTIME is a one-shot sandbox)\n")
	for _, l := range ls {
		owner := l.Owner
		if _, ok := tempPid(owner); ok {
			owner += ":" + strconv.FormatUint(l.started, 10)
		}
		fmt.Fprintf(&b, "%d %d %s\n", l.Start, l.Size, owner)
	}
	if err := statefile.Write(path, b.Bytes(), durable); err != nil {
		return fmt.Errorf("id pool: %w", err)
	}
	return nil
}
