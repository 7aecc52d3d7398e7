package net

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"unicode"

	"nest/statefile"
)

// DefaultStateDir is where the root init keeps its leases.
const DefaultStateDir = "/var/lib/nest/net"

// ErrExhausted is wrapped by Acquire when every block of the pool is taken.
var ErrExhausted = errors.New("pool exhausted")

// A Pool leases blocks of one size (a /32 address from an init's /24, or a
// /24 subnet from the root's pool) to owners by name: the same owner gets
// the same block until Release, across restarts of the init when the pool
// has a file.
//
// The file has one lease per line, "PREFIX OWNER" (an address alone for a
// /32), and lines starting with '#' are comments. Leases of other pools in
// the same file (a subnet that was changed in the config) are kept as
// they are, so changing it back gives the old addresses back. Every change
// happens under an exclusive flock(2) of Path+".lock" and is written
// atomically (temp file, fsync, rename, fsync of the directory).
type Pool struct {
	Prefix   netip.Prefix   // the IPv4 prefix blocks come from
	Bits     int            // prefix length of one block: 32 for addresses
	Reserved []netip.Prefix // never leased: network, gateway, broadcast, the init's own /24
	// Path is the lease file; "" keeps the leases in memory (an init
	// whose file system cannot hold them).
	Path string

	mu  sync.Mutex
	mem []Lease
}

// A Lease is one block and its owner.
type Lease struct {
	Prefix netip.Prefix
	Owner  string
}

func (l Lease) String() string {
	if l.Prefix.IsSingleIP() {
		return l.Prefix.Addr().String() + " " + l.Owner
	}
	return l.Prefix.String() + " " + l.Owner
}

// Acquire returns the block owner holds, leasing one the first time: want
// when it is valid (a pinned address), else the lowest free block. A
// wanted block that another owner holds, or that is outside the pool or
// reserved, is an error that says so; an owner that held another block
// moves to the wanted one.
func (p *Pool) Acquire(owner string, want netip.Prefix) (netip.Prefix, error) {
	return p.acquire(owner, want, nil)
}

// AcquireUnder is Acquire of the lowest free block, with a quota: a new
// block is leased only while group and the owners under it ("group/…")
// hold fewer than most. An owner that holds a block keeps it.
func (p *Pool) AcquireUnder(owner, group string, most int) (netip.Prefix, error) {
	return p.acquire(owner, netip.Prefix{}, func(ls []Lease) error {
		n := 0
		for _, l := range ls {
			if p.Prefix.Overlaps(l.Prefix) && InTree(l.Owner, group) {
				n++
			}
		}
		if n >= most {
			return fmt.Errorf("%s and the containers under it hold %d blocks, the most they may", group, n)
		}
		return nil
	})
}

// InTree reports whether owner is root or below it ("root/…").
func InTree(owner, root string) bool {
	return owner == root || strings.HasPrefix(owner, root+"/")
}

// acquire is Acquire; admit, when set, may refuse a new lease.
func (p *Pool) acquire(owner string, want netip.Prefix, admit func([]Lease) error) (netip.Prefix, error) {
	if err := checkOwner(owner); err != nil {
		return netip.Prefix{}, err
	}
	if err := p.check(); err != nil {
		return netip.Prefix{}, err
	}
	var got netip.Prefix
	err := p.update(func(ls []Lease) ([]Lease, error) {
		mine := slices.IndexFunc(ls, func(l Lease) bool { return l.Owner == owner && p.Prefix.Overlaps(l.Prefix) })
		if want.IsValid() {
			if err := p.usable(want); err != nil {
				return nil, err
			}
			for _, l := range ls {
				if l.Owner != owner && l.Prefix.Overlaps(want) {
					return nil, fmt.Errorf("%s is leased to %s", show(want), l.Owner)
				}
			}
			got = want
			if mine >= 0 {
				ls[mine].Prefix = want
				return ls, nil
			}
			return append(ls, Lease{want, owner}), nil
		}
		if mine >= 0 {
			got = ls[mine].Prefix
			return ls, nil
		}
		if admit != nil {
			if err := admit(ls); err != nil {
				return nil, err
			}
		}
		free, err := p.lowestFree(ls)
		if err != nil {
			return nil, err
		}
		got = free
		return append(ls, Lease{free, owner}), nil
	})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("lease for %s in %s: %w", owner, p.Prefix, err)
	}
	return got, nil
}

// Release gives back what owner holds in this pool. Releasing an owner
// that holds nothing does nothing.
func (p *Pool) Release(owner string) error {
	err := p.update(func(ls []Lease) ([]Lease, error) {
		return slices.DeleteFunc(ls, func(l Lease) bool { return l.Owner == owner && p.Prefix.Overlaps(l.Prefix) }), nil
	})
	if err != nil {
		return fmt.Errorf("release the lease of %s in %s: %w", owner, p.Prefix, err)
	}
	return nil
}

// ReleaseTree gives back what root and every owner under it ("root/…")
// hold in this pool: a container's subnet and its descendants'.
func (p *Pool) ReleaseTree(root string) error {
	err := p.update(func(ls []Lease) ([]Lease, error) {
		return slices.DeleteFunc(ls, func(l Lease) bool { return InTree(l.Owner, root) && p.Prefix.Overlaps(l.Prefix) }), nil
	})
	if err != nil {
		return fmt.Errorf("release the leases of %s and below in %s: %w", root, p.Prefix, err)
	}
	return nil
}

// Leases returns the leases of this pool.
func (p *Pool) Leases() ([]Lease, error) {
	var out []Lease
	err := p.update(func(ls []Lease) ([]Lease, error) {
		for _, l := range ls {
			if p.Prefix.Overlaps(l.Prefix) {
				out = append(out, l)
			}
		}
		return ls, nil
	})
	return out, err
}

// Size is how many blocks the pool can lease.
func (p *Pool) Size() int {
	n := 0
	p.blocks(func(b netip.Prefix) bool {
		if !p.reserved(b) {
			n++
		}
		return true
	})
	return n
}

func (p *Pool) check() error {
	switch {
	case !p.Prefix.IsValid() || !p.Prefix.Addr().Is4():
		return fmt.Errorf("pool %s: want an IPv4 prefix", p.Prefix)
	case p.Prefix.Masked() != p.Prefix:
		return fmt.Errorf("pool %s: not a network prefix (want %s)", p.Prefix, p.Prefix.Masked())
	case p.Bits < p.Prefix.Bits() || p.Bits > 32 || p.Bits-p.Prefix.Bits() > 16:
		return fmt.Errorf("pool %s: cannot hand out /%d blocks", p.Prefix, p.Bits)
	}
	return nil
}

// usable says why want cannot be leased from this pool, or nil.
func (p *Pool) usable(want netip.Prefix) error {
	switch {
	case !want.Addr().Is4() || want.Bits() != p.Bits || want.Masked() != want:
		return fmt.Errorf("%s: want a /%d block", want, p.Bits)
	case !p.Prefix.Contains(want.Addr()):
		return fmt.Errorf("%s is outside %s", show(want), p.Prefix)
	case p.reserved(want):
		return fmt.Errorf("%s is reserved (the network, its gateway or its broadcast address)", show(want))
	}
	return nil
}

func (p *Pool) reserved(b netip.Prefix) bool {
	return slices.ContainsFunc(p.Reserved, b.Overlaps)
}

// blocks calls f with every block of the pool in order until f returns
// false.
func (p *Pool) blocks(f func(netip.Prefix) bool) {
	step := uint32(1) << (32 - p.Bits)
	n := uint32(1) << (p.Bits - p.Prefix.Bits())
	base := addrUint(p.Prefix.Addr())
	for i := uint32(0); i < n; i++ {
		if !f(netip.PrefixFrom(uintAddr(base+i*step), p.Bits)) {
			return
		}
	}
}

func (p *Pool) lowestFree(ls []Lease) (netip.Prefix, error) {
	var free netip.Prefix
	p.blocks(func(b netip.Prefix) bool {
		if p.reserved(b) || slices.ContainsFunc(ls, func(l Lease) bool { return l.Prefix.Overlaps(b) }) {
			return true
		}
		free = b
		return false
	})
	if !free.IsValid() {
		return netip.Prefix{}, fmt.Errorf("%w: all %d blocks of /%d are leased; remove a container (nest rm) or set a larger subnet", ErrExhausted, p.Size(), p.Bits)
	}
	return free, nil
}

// update runs change on every lease of the file (or memory) under the
// lock and writes the result back if it differs.
func (p *Pool) update(change func([]Lease) ([]Lease, error)) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Path == "" {
		ls, err := change(slices.Clone(p.mem))
		if err == nil {
			p.mem = ls
		}
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.Path), 0o700); err != nil {
		return err
	}
	unlock, err := statefile.Lock(p.Path + ".lock")
	if err != nil {
		return err
	}
	defer unlock()
	old, err := readLeases(p.Path)
	if err != nil {
		return err
	}
	ls, err := change(slices.Clone(old))
	if err != nil || slices.Equal(ls, old) {
		return err
	}
	return writeLeases(p.Path, ls)
}

// checkOwner refuses names that would break the one-line format.
func checkOwner(name string) error {
	switch {
	case name == "":
		return errors.New("lease: empty owner name")
	case len(name) > 255:
		return errors.New("lease: owner name longer than 255 bytes")
	case strings.ContainsFunc(name, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return fmt.Errorf("lease: owner name %q has a space or a control character", name)
	}
	return nil
}

// readLeases reads a lease file; a missing file holds none. A line it
// cannot read is an error naming FILE:LINE: dropping a lease would give
// its block to a second owner.
func readLeases(path string) ([]Lease, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ls []Lease
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("%s:%d: %q: want PREFIX OWNER", path, n, line)
		}
		pfx, err := parseBlock(f[0])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		if err := checkOwner(f[1]); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		for _, l := range ls {
			if l.Prefix.Overlaps(pfx) {
				return nil, fmt.Errorf("%s:%d: %s of %s overlaps %s of %s", path, n, show(pfx), f[1], show(l.Prefix), l.Owner)
			}
		}
		ls = append(ls, Lease{pfx, f[1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return ls, nil
}

// parseBlock reads "10.88.0.5" (a /32) or "10.88.1.0/24".
func parseBlock(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Prefix{}, fmt.Errorf("%q: want an IPv4 address or prefix", s)
		}
		return netip.PrefixFrom(a, 32), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() || p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("%q: want an IPv4 address or network prefix", s)
	}
	return p, nil
}

// show writes a block as the lease file does: an address alone for a /32.
func show(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
}

func writeLeases(path string, ls []Lease) error {
	slices.SortFunc(ls, func(a, b Lease) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	var b bytes.Buffer
	b.WriteString("# nest network leases: ADDRESS OWNER or PREFIX OWNER\n")
	for _, l := range ls {
		b.WriteString(l.String() + "\n")
	}
	return statefile.Write(path, b.Bytes(), true)
}

func addrUint(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func uintAddr(n uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
