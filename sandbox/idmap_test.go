package sandbox

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

const header = "# nest id ranges: START SIZE OWNER\n"

func testPool(t *testing.T) Pool {
	return Pool{Path: filepath.Join(t.TempDir(), "state", "idmap")}
}

// readPool returns the pool file, or "" if there is none.
func readPool(t *testing.T, p Pool) string {
	t.Helper()
	b, err := os.ReadFile(p.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
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
	if len(ents) != 3 {
		t.Errorf("pool directory holds %v, want idmap, idmap.lock and idmap.oneshot only", ents)
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
// "START OWNER", and holds it until its stdin ends.
func helperTemp(args ...string) int {
	l, err := Pool{Path: args[0]}.AcquireTemp()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %s\n", l.Start, l.Owner)
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// startTemp starts helperTemp on the pool and returns the start of its
// lease and a function that makes it exit (without Close: the lease must
// end with the process).
func startTemp(t *testing.T, p Pool) (uint32, func()) {
	t.Helper()
	cmd := helperCommand(t, "temp", p.Path)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var start uint32
	var owner string
	if _, err := fmt.Fscanf(out, "%d %s\n", &start, &owner); err != nil {
		in.Close()
		cmd.Wait()
		t.Fatalf("temp helper: %v", err)
	}
	if want := fmt.Sprintf("run:%d", cmd.Process.Pid); owner != want {
		t.Errorf("AcquireTemp() in a helper: owner %q, want %q", owner, want)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			in.Close()
			cmd.Wait()
		}
	}
	t.Cleanup(stop)
	return start, stop
}

// TestAcquireTemp checks that a one-shot lease lives exactly as long as
// its file stays open — Close, or the end of its process — and that
// nothing is written for it.
func TestAcquireTemp(t *testing.T) {
	p := testPool(t)
	if _, err := p.Acquire("alice"); err != nil {
		t.Fatal(err)
	}

	// Another process holds a one-shot lease: the lowest free slot.
	other, stopOther := startTemp(t, p)
	if other != slot(1) {
		t.Fatalf("AcquireTemp() in a helper = %d, want %d (alice holds slot 0)", other, slot(1))
	}
	// Acquire and AcquireTemp skip it; each AcquireTemp is a lease of its own.
	a, err := p.AcquireTemp()
	if want := (Range{Owner: fmt.Sprintf("run:%d", os.Getpid()), Start: slot(2), Size: RangeSize}); err != nil || a.Range != want {
		t.Fatalf("AcquireTemp() = %+v, %v, want %+v", a, err, want)
	}
	b, err := p.AcquireTemp()
	if err != nil || b.Start != slot(3) {
		t.Fatalf("AcquireTemp() again = %+v, %v, want start %d", b, err, slot(3))
	}
	if r, err := p.Acquire("bob"); err != nil || r.Start != slot(4) {
		t.Fatalf("Acquire(bob) = %+v, %v, want start %d", r, err, slot(4))
	}

	// Close ends a lease, and so does the end of the process.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("Close() twice = %v", err)
	}
	stopOther()
	if r, err := p.Acquire("carol"); err != nil || r.Start != slot(1) {
		t.Errorf("Acquire(carol) after the helper exited = %+v, %v, want start %d", r, err, slot(1))
	}
	if r, err := p.Acquire("dave"); err != nil || r.Start != slot(2) {
		t.Errorf("Acquire(dave) after Close = %+v, %v, want start %d", r, err, slot(2))
	}
	if got, want := readPool(t, p), header+"100000 65536 alice\n165536 65536 carol\n231072 65536 dave\n362144 65536 bob\n"; got != want {
		t.Errorf("pool file = %q, want %q", got, want)
	}
	b.Close()

	// One-shot leases alone never write the pool file (no disk sync on
	// the nest run path).
	q := testPool(t)
	for range 3 {
		l, err := q.AcquireTemp()
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
	if _, err := os.Stat(q.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("one-shot leases wrote %s: %v", q.Path, err)
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
		{"one-shot owner", "100000 65536 run:12\n", 1, "reserved for one-shot sandboxes"},
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
