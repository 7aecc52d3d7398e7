package sandbox

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io"
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
//	165536 65536 web
//
// Every change happens under an exclusive flock(2) of Path+".lock" and is
// written atomically (a temp file in the same directory, fsync, rename,
// fsync of the directory), so processes that share the file (the root init
// and every `nest run`) never hand out one range twice. Lines starting
// with '#' are comments; a rewrite keeps only the header nest writes.
//
// One-shot leases (AcquireTemp, for `nest run`) are never written: each is
// a read lock (an open file description lock, F_OFD_SETLK) on the byte of
// its slot in Path+".oneshot", taken under the pool's flock and held
// through an open file. It lasts exactly as long as that file stays open,
// so it ends with its process however that process ends, and a `nest run`
// costs no file write at all (two renames were 0.7 ms of each run on this
// ext4 host). Acquire skips the slots that such a lock holds.
type Pool struct {
	// Path is the pool file; empty means DefaultPoolPath.
	Path string
}

func (p Pool) path() string {
	if p.Path == "" {
		return DefaultPoolPath
	}
	return p.Path
}

// Acquire returns the range that name owns, allocating the lowest free one
// the first time; the same name gets the same range until Release. Names
// are what the caller uses for its children (no spaces, no control
// characters); "run:" is reserved for the one-shot leases of AcquireTemp.
func (p Pool) Acquire(name string) (Range, error) {
	if err := checkOwner(name); err != nil {
		return Range{}, fmt.Errorf("id range for %q: %w", name, err)
	}
	var got Range
	err := p.update(func(ls []Range, busy func(slot uint64) (bool, error)) ([]Range, error) {
		for _, l := range ls {
			if l.Owner == name {
				got = l
				return ls, nil
			}
		}
		start, err := lowestFree(ls, busy)
		if err != nil {
			return nil, err
		}
		got = Range{Owner: name, Start: start, Size: RangeSize}
		return append(ls, got), nil
	})
	if err != nil {
		return Range{}, fmt.Errorf("id range for %q: %w", name, err)
	}
	return got, nil
}

// A TempLease is a one-shot range from AcquireTemp. It is held by a lock
// on an open file (close-on-exec, so no child inherits it) and ends at
// Close or when the process exits.
type TempLease struct {
	Range
	fd int
}

// Close ends the lease; its range is free for the next Acquire or
// AcquireTemp.
func (l *TempLease) Close() error {
	if l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	return err
}

// AcquireTemp allocates the lowest range that no lease and no other
// one-shot lease holds, for a one-shot sandbox of this process (`nest
// run`). Its owner is "run:PID"; each call is a lease of its own.
func (p Pool) AcquireTemp() (*TempLease, error) {
	owner := tempPrefix + strconv.Itoa(os.Getpid())
	l := &TempLease{fd: -1}
	err := p.update(func(ls []Range, busy func(slot uint64) (bool, error)) ([]Range, error) {
		fd, err := openOneShot(p.path(), unix.O_RDONLY)
		if err != nil {
			return nil, err
		}
		start, err := lowestFree(ls, busy)
		if err != nil {
			unix.Close(fd)
			return nil, err
		}
		// Under the pool's flock nobody else takes a slot, and busy just
		// found this one free.
		lk := slotLock(unix.F_RDLCK, uint64(start))
		if err := unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, &lk); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("id pool: lock %s.oneshot: %w", p.path(), err)
		}
		l.Range, l.fd = Range{Owner: owner, Start: start, Size: RangeSize}, fd
		return ls, nil
	})
	if err != nil {
		return nil, fmt.Errorf("id range for a one-shot sandbox: %w", err)
	}
	return l, nil
}

// Release gives back the range of name. Releasing a name that owns no
// range does nothing.
func (p Pool) Release(name string) error {
	err := p.update(func(ls []Range, _ func(uint64) (bool, error)) ([]Range, error) {
		return slices.DeleteFunc(ls, func(l Range) bool { return l.Owner == name }), nil
	})
	if err != nil {
		return fmt.Errorf("release the id range of %q: %w", name, err)
	}
	return nil
}

// lowestFree returns the start of the lowest slot FirstID + k*RangeSize
// that no lease overlaps and busy does not report held by a one-shot
// lease.
func lowestFree(ls []Range, busy func(start uint64) (bool, error)) (uint32, error) {
	sorted := slices.Clone(ls)
	sortByStart(sorted)
	cand := uint64(FirstID)
	for {
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
		held, err := busy(cand)
		if err != nil {
			return 0, err
		}
		if !held {
			return uint32(cand), nil
		}
		cand += RangeSize
	}
}

func sortByStart(ls []Range) {
	slices.SortFunc(ls, func(a, b Range) int { return cmp.Compare(a.Start, b.Start) })
}

// slotLock is the lock of the one-shot slot starting at start: its byte
// in the .oneshot file.
func slotLock(typ int16, start uint64) unix.Flock_t {
	return unix.Flock_t{Type: typ, Whence: io.SeekStart, Start: int64((start - FirstID) / RangeSize), Len: 1}
}

// openOneShot opens the file whose byte locks are the one-shot leases of
// the pool at path. Nothing is ever written to it.
func openOneShot(path string, mode int) (int, error) {
	name := path + ".oneshot"
	fd, err := unix.Open(name, mode|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return -1, fmt.Errorf("id pool: %w", &os.PathError{Op: "open", Path: name, Err: err})
	}
	return fd, nil
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
// result back if it differs. busy, given to change, reports whether a
// one-shot lease holds the slot that starts at start.
func (p Pool) update(change func(ls []Range, busy func(start uint64) (bool, error)) ([]Range, error)) error {
	path := p.path()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("id pool: %w", err)
	}
	unlock, err := statefile.Lock(path + ".lock")
	if err != nil {
		return fmt.Errorf("id pool: %w", err)
	}
	defer unlock()
	ls, err := readLeases(path)
	if err != nil {
		return err
	}
	oneShot := -1
	defer func() {
		if oneShot >= 0 {
			unix.Close(oneShot)
		}
	}()
	busy := func(start uint64) (bool, error) {
		if oneShot < 0 {
			fd, err := openOneShot(path, unix.O_RDONLY)
			if err != nil {
				return false, err
			}
			oneShot = fd
		}
		// Would a write lock conflict? Only with another description's
		// read lock: a one-shot lease.
		lk := slotLock(unix.F_WRLCK, start)
		if err := unix.FcntlFlock(uintptr(oneShot), unix.F_OFD_GETLK, &lk); err != nil {
			return false, fmt.Errorf("id pool: %s.oneshot: %w", path, err)
		}
		return lk.Type != unix.F_UNLCK, nil
	}
	changed, err := change(slices.Clone(ls), busy)
	if err != nil {
		return err
	}
	if sameLeases(changed, ls) {
		return nil
	}
	return writeLeases(path, changed)
}

func sameLeases(a, b []Range) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	sortByStart(a)
	sortByStart(b)
	return slices.Equal(a, b)
}

// readLeases reads the pool file; a missing file is an empty pool. Any
// line it cannot read is an error naming FILE:LINE: dropping a lease would
// give its ids to a second owner.
func readLeases(path string) ([]Range, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("id pool: %w", err)
	}
	var ls []Range
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
func parseLease(line string) (Range, error) {
	f := strings.Fields(line)
	if len(f) != 3 {
		return Range{}, fmt.Errorf("%q: want START SIZE OWNER", line)
	}
	start, err := strconv.ParseUint(f[0], 10, 32)
	if err != nil {
		return Range{}, fmt.Errorf("start %q: want a number below 2^32", f[0])
	}
	size, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil || size == 0 {
		return Range{}, fmt.Errorf("size %q: want a number from 1 to 2^32-1", f[1])
	}
	if start+size > maxEnd {
		return Range{}, fmt.Errorf("range %d+%d goes past id 2^32-2", start, size)
	}
	if err := checkOwner(f[2]); err != nil {
		return Range{}, err
	}
	return Range{Owner: f[2], Start: uint32(start), Size: uint32(size)}, nil
}

// writeLeases replaces the pool file atomically and durably (fsync of the
// file and of its directory).
func writeLeases(path string, ls []Range) error {
	sortByStart(ls)
	var b bytes.Buffer
	b.WriteString("# nest id ranges: START SIZE OWNER\n")
	for _, l := range ls {
		fmt.Fprintf(&b, "%d %d %s\n", l.Start, l.Size, l.Owner)
	}
	if err := statefile.Write(path, b.Bytes(), true); err != nil {
		return fmt.Errorf("id pool: %w", err)
	}
	return nil
}
