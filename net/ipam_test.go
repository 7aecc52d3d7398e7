package net

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func addrPool(path string) *Pool {
	s := netip.MustParsePrefix("10.88.0.0/24")
	return &Pool{Prefix: s, Bits: 32, Path: path, Reserved: []netip.Prefix{
		netip.MustParsePrefix("10.88.0.0/32"), netip.MustParsePrefix("10.88.0.1/32"), netip.MustParsePrefix("10.88.0.255/32"),
	}}
}

func mustAcquire(t *testing.T, p *Pool, owner, want string) string {
	t.Helper()
	var w netip.Prefix
	if want != "" {
		w = netip.MustParsePrefix(want)
	}
	got, err := p.Acquire(owner, w)
	if err != nil {
		t.Fatalf("Acquire(%s, %q) = %v", owner, want, err)
	}
	return show(got)
}

func TestPoolAcquire(t *testing.T) {
	for _, path := range []string{"", "file"} {
		t.Run(fmt.Sprintf("path=%q", path), func(t *testing.T) {
			if path != "" {
				path = filepath.Join(t.TempDir(), "addresses")
			}
			p := addrPool(path)
			steps := []struct {
				owner, want, got, err string
			}{
				{"web", "", "10.88.0.2", ""},
				{"db", "", "10.88.0.3", ""},
				{"web", "", "10.88.0.2", ""}, // the same owner, the same address
				{"pin", "10.88.0.7/32", "10.88.0.7", ""},
				{"x", "10.88.0.7/32", "", "10.88.0.7 is leased to pin"},
				{"x", "10.88.0.1/32", "", "10.88.0.1 is reserved"},
				{"x", "10.88.0.255/32", "", "10.88.0.255 is reserved"},
				{"x", "10.89.0.5/32", "", "10.89.0.5 is outside 10.88.0.0/24"},
				{"x", "10.88.0.0/30", "", "want a /32 block"},
				{"db", "10.88.0.9/32", "10.88.0.9", ""}, // moves
				{"y", "", "10.88.0.3", ""},              // db's old address is free again
				{"bad name", "", "", "space or a control character"},
			}
			for _, s := range steps {
				var want netip.Prefix
				if s.want != "" {
					want = netip.MustParsePrefix(s.want)
				}
				got, err := p.Acquire(s.owner, want)
				switch {
				case s.err != "" && (err == nil || !strings.Contains(err.Error(), s.err)):
					t.Errorf("Acquire(%s, %q) = %v, %v; want an error with %q", s.owner, s.want, got, err, s.err)
				case s.err == "" && (err != nil || show(got) != s.got):
					t.Errorf("Acquire(%s, %q) = %v, %v; want %s", s.owner, s.want, got, err, s.got)
				}
			}
			if err := p.Release("web"); err != nil {
				t.Fatal(err)
			}
			if got := mustAcquire(t, p, "z", ""); got != "10.88.0.2" {
				t.Errorf("after releasing web, Acquire(z) = %s, want 10.88.0.2", got)
			}
			if path == "" {
				return
			}
			// Another Pool on the same file sees the same leases.
			q := addrPool(path)
			if got := mustAcquire(t, q, "pin", ""); got != "10.88.0.7" {
				t.Errorf("a second pool on the file: Acquire(pin) = %s, want 10.88.0.7", got)
			}
			b, _ := os.ReadFile(path)
			if !strings.Contains(string(b), "10.88.0.7 pin\n") || !strings.HasPrefix(string(b), "#") {
				t.Errorf("lease file:\n%s", b)
			}
		})
	}
}

func TestPoolExhausted(t *testing.T) {
	p := &Pool{Prefix: netip.MustParsePrefix("10.88.0.0/29"), Bits: 32, Reserved: []netip.Prefix{
		netip.MustParsePrefix("10.88.0.0/32"), netip.MustParsePrefix("10.88.0.1/32"), netip.MustParsePrefix("10.88.0.7/32"),
	}}
	if p.Size() != 5 {
		t.Fatalf("Size() = %d, want 5", p.Size())
	}
	for i := range 5 {
		mustAcquire(t, p, fmt.Sprint("c", i), "")
	}
	_, err := p.Acquire("c5", netip.Prefix{})
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "all 5 blocks") {
		t.Errorf("Acquire past the end = %v, want ErrExhausted naming 5 blocks", err)
	}
}

func TestPoolSubnets(t *testing.T) {
	p := &Pool{Prefix: netip.MustParsePrefix("10.88.0.0/16"), Bits: 24, Path: filepath.Join(t.TempDir(), "subnets"),
		Reserved: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/24")}}
	if got := mustAcquire(t, p, "alice", ""); got != "10.88.1.0/24" {
		t.Errorf("first subnet = %s, want 10.88.1.0/24", got)
	}
	if got := mustAcquire(t, p, "alice/dev", ""); got != "10.88.2.0/24" {
		t.Errorf("second subnet = %s, want 10.88.2.0/24", got)
	}
	// Leases of another pool in the same file stay as they are.
	other := &Pool{Prefix: netip.MustParsePrefix("10.77.0.0/16"), Bits: 24, Path: p.Path}
	mustAcquire(t, other, "alice", "")
	ls, err := p.Leases()
	if err != nil || len(ls) != 2 {
		t.Errorf("Leases() = %v, %v; want alice and alice/dev of 10.88.0.0/16", ls, err)
	}
}

// TestPoolTree: a subtree's leases have a quota and go back together.
func TestPoolTree(t *testing.T) {
	p := &Pool{Prefix: netip.MustParsePrefix("10.88.0.0/16"), Bits: 24, Path: filepath.Join(t.TempDir(), "subnets"),
		Reserved: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/24")}}
	for _, owner := range []string{"alice", "alice/dev", "alice/dev/x", "alicex", "bob"} {
		mustAcquire(t, p, owner, "")
	}
	if _, err := p.AcquireUnder("alice/web", "alice", 3); err == nil || !strings.Contains(err.Error(), "alice and the containers under it hold 3 blocks") {
		t.Errorf("AcquireUnder past the quota = %v", err)
	}
	if got, err := p.AcquireUnder("alice/dev", "alice", 3); err != nil || show(got) != "10.88.2.0/24" {
		t.Errorf("AcquireUnder of a lease held = %v, %v; want 10.88.2.0/24 again", got, err)
	}
	if got, err := p.AcquireUnder("bob/x", "bob", 3); err != nil || show(got) != "10.88.6.0/24" {
		t.Errorf("AcquireUnder within the quota = %v, %v; want 10.88.6.0/24", got, err)
	}
	if err := p.ReleaseTree("alice/dev"); err != nil {
		t.Fatal(err)
	}
	var owners []string
	ls, _ := p.Leases()
	for _, l := range ls {
		owners = append(owners, l.Owner)
	}
	if got := strings.Join(owners, " "); got != "alice alicex bob bob/x" {
		t.Errorf("after ReleaseTree(alice/dev): %s, want alice alicex bob bob/x", got)
	}
	p.ReleaseTree("alice")
	if got := mustAcquire(t, p, "carol", ""); got != "10.88.1.0/24" {
		t.Errorf("after ReleaseTree(alice) the lowest free = %s, want alice's 10.88.1.0/24", got)
	}
}

func TestPoolBadFile(t *testing.T) {
	for _, tc := range []struct{ content, err string }{
		{"10.88.0.2 web\n10.88.0.2 db\n", ":2: 10.88.0.2 of db overlaps 10.88.0.2 of web"},
		{"10.88.0.2\n", `:1: "10.88.0.2": want PREFIX OWNER`},
		{"# c\n10.88.0.300 web\n", `:2: "10.88.0.300": want an IPv4 address`},
		{"10.88.0.1/16 web\n", "want an IPv4 address or network prefix"},
	} {
		path := filepath.Join(t.TempDir(), "addresses")
		os.WriteFile(path, []byte(tc.content), 0o600)
		_, err := addrPool(path).Acquire("x", netip.Prefix{})
		if err == nil || !strings.Contains(err.Error(), path+tc.err) && !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Acquire with file %q = %v, want an error with %q", tc.content, err, tc.err)
		}
	}
}

// TestPoolConcurrent: pools of several processes share one file under its
// lock; each Pool value here stands for one.
func TestPoolConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "addresses")
	var wg sync.WaitGroup
	got := make([]string, 40)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := addrPool(path).Acquire(fmt.Sprint("c", i), netip.Prefix{})
			if err != nil {
				t.Error(err)
			}
			got[i] = show(a)
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, a := range got {
		if seen[a] {
			t.Errorf("%s leased twice", a)
		}
		seen[a] = true
	}
}
