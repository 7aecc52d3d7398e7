package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const header = "# nest id ranges: START SIZE OWNER (run:PID:STARTTIME is a one-shot sandbox)\n"

func testPool(t *testing.T) Pool {
	return Pool{Path: filepath.Join(t.TempDir(), "state", "idmap")}
}

// readPool returns the pool as one file would hold it: the persistent
// leases and the one-shot leases (kept in p.Path+".run"), sorted by start.
func readPool(t *testing.T, p Pool) string {
	t.Helper()
	var leases []string
	for _, path := range []string{p.Path, p.Path + ".run"} {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			if line != "" && !strings.HasPrefix(line, "#") {
				leases = append(leases, line)
			}
		}
	}
	sort.Slice(leases, func(i, j int) bool {
		a, _ := strconv.Atoi(strings.Fields(leases[i])[0])
		b, _ := strconv.Atoi(strings.Fields(leases[j])[0])
		return a < b
	})
	out := header
	for _, l := range leases {
		out += l + "\n"
	}
	return out
}

func writePool(t *testing.T, p Pool, s string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p.Path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.Path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}

func slot(k uint32) uint32 { return FirstID + k*RangeSize }

func TestAcquireRelease(t *testing.T) {
	p := testPool(t)
	steps := []struct {
		op, name string
		want     uint32 // start of the range
	}{
		{"acquire", "alice", slot(0)},
		{"acquire", "web", slot(1)},
		{"acquire", "alice", slot(0)}, // same name, same range
		{"acquire", "db", slot(2)},
		{"release", "web", 0},
		{"release", "web", 0}, // releasing twice does nothing
		{"release", "nobody", 0},
		{"acquire", "bob", slot(1)}, // the lowest free one
		{"acquire", "carol", slot(3)},
		{"acquire", "db", slot(2)},
	}
	for _, s := range steps {
		if s.op == "release" {
			if err := p.Release(s.name); err != nil {
				t.Fatalf("Release(%q) = %v", s.name, err)
			}
			continue
		}
		r, err := p.Acquire(s.name)
		if err != nil {
			t.Fatalf("Acquire(%q) = %v", s.name, err)
		}
		if want := (Range{Owner: s.name, Start: s.want, Size: RangeSize}); r != want {
			t.Fatalf("Acquire(%q) = %+v, want %+v", s.name, r, want)
		}
	}
	want := header + "100000 65536 alice\n165536 65536 bob\n231072 65536 db\n296608 65536 carol\n"
	if got := readPool(t, p); got != want {
		t.Errorf("pool file = %q, want %q", got, want)
	}
	for _, path := range []string{filepath.Dir(p.Path), p.Path, p.Path + ".lock"} {
		want := os.FileMode(0o600)
		if path == filepath.Dir(p.Path) {
			want = os.ModeDir | 0o700
		}
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("mode of %s = %v (%v), want %v", path, fi.Mode(), err, want)
		}
	}
	ents, _ := os.ReadDir(filepath.Dir(p.Path))
	if len(ents) != 2 {
		t.Errorf("pool directory holds %v, want idmap and idmap.lock only", ents)
	}
}

func TestAcquireBadName(t *testing.T) {
	p := testPool(t)
	for _, name := range []string{"", "two words", "tab\there", "new\nline", "run:1234", strings.Repeat("a", 256)} {
		if r, err := p.Acquire(name); err == nil {
			t.Errorf("Acquire(%q) = %+v, want an error", name, r)
		}
	}
	if _, err := os.Stat(p.Path); err == nil {
		t.Errorf("pool file written after bad names only")
	}
}

func TestRangeMappings(t *testing.T) {
	r := Range{Owner: "alice", Start: 165536, Size: RangeSize}
	want := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 165536, Size: 65536}}
	if got := r.UidMappings(); !slices.Equal(got, want) {
		t.Errorf("UidMappings() = %v, want %v", got, want)
	}
	if got := r.GidMappings(); !slices.Equal(got, want) {
		t.Errorf("GidMappings() = %v, want %v", got, want)
	}
}

// TestAcquireConcurrent acquires distinct names from goroutines of this
// process and from other processes at once: the flock must keep every range
// apart.
func TestAcquireConcurrent(t *testing.T) {
	const goroutines, procs = 10, 10
	p := testPool(t)
	var (
		mu  sync.Mutex
		got = map[string]Range{}
		wg  sync.WaitGroup
	)
	add := func(name string, r Range, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Errorf("Acquire(%q) = %v", name, err)
			return
		}
		got[name] = r
	}
	var cmds []*exec.Cmd
	for i := range procs {
		cmds = append(cmds, helperCommand(t, "acquire", p.Path, fmt.Sprintf("proc%d", i)))
	}
	for i, cmd := range cmds {
		wg.Go(func() {
			name := fmt.Sprintf("proc%d", i)
			out, err := cmd.Output()
			if err != nil {
				add(name, Range{}, fmt.Errorf("%v: %s", err, errOutput(err)))
				return
			}
			var r Range
			_, err = fmt.Sscanf(string(out), "%d %d %s", &r.Start, &r.Size, &r.Owner)
			add(name, r, err)
		})
	}
	for i := range goroutines {
		wg.Go(func() {
			name := fmt.Sprintf("goroutine%d", i)
			r, err := p.Acquire(name)
			add(name, r, err)
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	var starts []uint32
	for name, r := range got {
		if r.Owner != name || r.Size != RangeSize || (r.Start-FirstID)%RangeSize != 0 {
			t.Errorf("Acquire(%q) = %+v, want an aligned range of %d owned by %q", name, r, RangeSize, name)
		}
		starts = append(starts, r.Start)
	}
	slices.Sort(starts)
	for i, s := range starts {
		// Distinct aligned ranges are apart; the lowest free slot is
		// taken each time, so together they fill the first 20 slots.
		if s != slot(uint32(i)) {
			t.Fatalf("starts = %v, want the first %d slots once each", starts, goroutines+procs)
		}
	}
	// Every lease was written: asking again gives the same range.
	for name, r := range got {
		if again, err := p.Acquire(name); err != nil || again != r {
			t.Errorf("Acquire(%q) again = %+v, %v, want %+v", name, again, err, r)
		}
	}
}

func errOutput(err error) []byte {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.Stderr
	}
	return nil
}

// helperAcquire acquires the range of name in the pool at path and prints
// "START SIZE OWNER".
func helperAcquire(args ...string) int {
	r, err := Pool{Path: args[0]}.Acquire(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %d %s\n", r.Start, r.Size, r.Owner)
	return 0
}

// helperTemp takes a one-shot range in the pool at path, prints
// "START OWNER" and exits without releasing it.
func helperTemp(args ...string) int {
	r, err := Pool{Path: args[0]}.AcquireTemp()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %s\n", r.Start, r.Owner)
	return 0
}

func TestAcquireTemp(t *testing.T) {
	p := testPool(t)
	// A one-shot sandbox of a process that has exited since.
	out, err := helperCommand(t, "temp", p.Path).Output()
	if err != nil {
		t.Fatalf("temp helper: %v: %s", err, errOutput(err))
	}
	var start uint32
	var owner string
	if _, err := fmt.Sscanf(string(out), "%d %s", &start, &owner); err != nil {
		t.Fatalf("temp helper printed %q: %v", out, err)
	}
	if start != slot(0) || !strings.HasPrefix(owner, "run:") {
		t.Fatalf("AcquireTemp() in a helper = %d %s, want %d run:PID", start, owner, slot(0))
	}
	if f := readPool(t, p); !strings.Contains(f, fmt.Sprintf("100000 65536 %s:", owner)) {
		t.Fatalf("pool file = %q, want a lease of %s with its start time", f, owner)
	}
	// The helper is gone: its range is the lowest free one again.
	r, err := p.Acquire("alice")
	if err != nil || r.Start != slot(0) {
		t.Fatalf("Acquire(alice) after the one-shot owner exited = %+v, %v, want start %d", r, err, slot(0))
	}

	self := fmt.Sprintf("run:%d", os.Getpid())
	r, err = p.AcquireTemp()
	if want := (Range{Owner: self, Start: slot(1), Size: RangeSize}); err != nil || r != want {
		t.Fatalf("AcquireTemp() = %+v, %v, want %+v", r, err, want)
	}
	if again, err := p.AcquireTemp(); err != nil || again != r {
		t.Errorf("AcquireTemp() again = %+v, %v, want %+v", again, err, r)
	}
	if err := p.Release(self); err != nil {
		t.Fatal(err)
	}
	if got, want := readPool(t, p), header+"100000 65536 alice\n"; got != want {
		t.Errorf("pool file after Release(%s) = %q, want %q", self, got, want)
	}
}

// TestAcquireTempReclaim checks that a one-shot lease lives exactly as long
// as the process that holds it, pid reuse included.
func TestAcquireTempReclaim(t *testing.T) {
	sleep := exec.Command("sleep", "60")
	if err := sleep.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	t.Cleanup(func() { sleep.Process.Kill(); sleep.Wait() })
	started, err := procStart(sleep.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	me := os.Getpid()
	myStart, err := procStart(me)
	if err != nil {
		t.Fatal(err)
	}
	p := testPool(t)
	writePool(t, p, fmt.Sprintf(`100000 65536 run:%d:%d
165536 65536 run:%d:%d
231072 65536 run:%d:1
296608 65536 alice
`, sleep.Process.Pid, started, // alive: kept
		me, myStart+1, // this pid, but another process's start time: reclaimed
		math.MaxInt32)) // no such pid: reclaimed
	r, err := p.AcquireTemp()
	want := Range{Owner: "run:" + strconv.Itoa(me), Start: slot(1), Size: RangeSize}
	if err != nil || r != want {
		t.Fatalf("AcquireTemp() = %+v, %v, want %+v", r, err, want)
	}
	wantFile := header + fmt.Sprintf("100000 65536 run:%d:%d\n165536 65536 run:%d:%d\n296608 65536 alice\n",
		sleep.Process.Pid, started, me, myStart)
	if got := readPool(t, p); got != wantFile {
		t.Errorf("pool file = %q, want %q", got, wantFile)
	}

	// The sleeper's lease goes with it, at the next Acquire.
	sleep.Process.Kill()
	sleep.Wait()
	if r, err := p.Acquire("bob"); err != nil || r.Start != slot(0) {
		t.Errorf("Acquire(bob) after the sleeper died = %+v, %v, want start %d", r, err, slot(0))
	}
}

func TestAcquireExhausted(t *testing.T) {
	// The last slot whose ids all stay below 2^32-1.
	const last = 4294870688
	if last != slot((math.MaxUint32-RangeSize-FirstID)/RangeSize) || last+RangeSize > math.MaxUint32 {
		t.Fatalf("test arithmetic: last slot %d", last)
	}
	p := testPool(t)
	writePool(t, p, fmt.Sprintf("%d %d big\n", FirstID, last-FirstID))
	r, err := p.Acquire("a")
	if want := (Range{Owner: "a", Start: last, Size: RangeSize}); err != nil || r != want {
		t.Fatalf("Acquire(a) = %+v, %v, want %+v", r, err, want)
	}
	_, err = p.Acquire("b")
	if err == nil || !strings.Contains(err.Error(), "id ranges exhausted") {
		t.Fatalf("Acquire(b) with every range taken = %v, want id ranges exhausted", err)
	}
}

func TestAcquireAroundHandEdits(t *testing.T) {
	p := testPool(t)
	// A hand-made lease that does not fit the slots blocks each slot it
	// touches; comments and blank lines are read.
	writePool(t, p, "# mine\n\n170000 20000 odd\n")
	for _, want := range []uint32{slot(0), slot(2)} {
		if r, err := p.Acquire(fmt.Sprint(want)); err != nil || r.Start != want {
			t.Errorf("Acquire = %+v, %v, want start %d", r, err, want)
		}
	}
}

func TestPoolCorrupt(t *testing.T) {
	tests := []struct {
		name, file string
		line       int
		msg        string
	}{
		{"fields", "100000 65536 a\n165536 65536\n", 2, "want START SIZE OWNER"},
		{"extra field", "100000 65536 a b\n", 1, "want START SIZE OWNER"},
		{"start", "x 65536 a\n", 1, `start "x"`},
		{"start too big", "4294967296 1 a\n", 1, "start"},
		{"zero size", "100000 0 a\n", 1, `size "0"`},
		{"past the end", "4294967295 1 a\n", 1, "goes past"},
		{"overlap", "100000 65536 a\n# c\n150000 10 b\n", 3, "overlaps 100000+65536 of a on line 1"},
		{"overlap reversed", "150000 10 b\n100000 65536 a\n", 2, "overlaps 150000+10 of b on line 1"},
		{"duplicate", "100000 65536 a\n165536 65536 a\n", 2, "a already owns a range on line 1"},
		{"run without start time", "100000 65536 run:12\n", 1, "want run:PID:STARTTIME"},
		{"run bad pid", "100000 65536 run:x:12\n", 1, "want run:PID:STARTTIME"},
		{"run bad start time", "100000 65536 run:12:x\n", 1, "want run:PID:STARTTIME"},
		{"control character", "100000 65536 a\x01\n", 1, "control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := testPool(t)
			writePool(t, p, tt.file)
			want := fmt.Sprintf("%s:%d: ", p.Path, tt.line)
			for _, op := range []func() error{
				func() error { _, err := p.Acquire("new"); return err },
				func() error { _, err := p.AcquireTemp(); return err },
				func() error { return p.Release("a") },
			} {
				err := op()
				if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), tt.msg) {
					t.Errorf("error = %v, want %q ... %q", err, want, tt.msg)
				}
			}
			if got, _ := os.ReadFile(p.Path); string(got) != tt.file {
				t.Errorf("pool file changed to %q", got)
			}
		})
	}
}

func TestProcStart(t *testing.T) {
	a, err := procStart(os.Getpid())
	if err != nil || a == 0 {
		t.Fatalf("procStart(self) = %d, %v", a, err)
	}
	b, err := procStart(1)
	if err != nil || b > a {
		t.Errorf("procStart(1) = %d, %v, want at most %d (pid 1 started first)", b, err, a)
	}
	if _, err := procStart(math.MaxInt32); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("procStart(no such pid) = %v, want not exist", err)
	}
}

// BenchmarkAcquireExisting is the cost on the start path of a child whose
// name already owns a range: lock, read, no write.
func BenchmarkAcquireExisting(b *testing.B) {
	p := Pool{Path: filepath.Join(b.TempDir(), "idmap")}
	for i := range 100 {
		if _, err := p.Acquire(fmt.Sprint("c", i)); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		if _, err := p.Acquire("c50"); err != nil {
			b.Fatal(err)
		}
	}
}

// TestTempLeasesKeepThePoolFile: one-shot leases never rewrite the
// persistent file (no disk sync on the nest run path).
func TestTempLeasesKeepThePoolFile(t *testing.T) {
	p := testPool(t)
	if _, err := p.Acquire("alice"); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	r, err := p.AcquireTemp()
	if err != nil {
		t.Fatal(err)
	}
	if r.Start != slot(1) {
		t.Errorf("AcquireTemp() start = %d, want %d (alice holds slot 0)", r.Start, slot(1))
	}
	if err := p.Release(r.Owner); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(p.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || !before.ModTime().Equal(after.ModTime()) {
		t.Errorf("a one-shot lease rewrote %s", p.Path)
	}
}
