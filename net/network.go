package net

import (
	"errors"
	"fmt"
	"hash/fnv"
	stdnet "net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultBridge is the bridge every init makes for its veth children.
const DefaultBridge = "nest0"

// ContainerLink is the name of a container's end of its veth pair.
const ContainerLink = "eth0"

// Options is what a Network is made of.
type Options struct {
	// Subnet is this init's prefix (a /24 from the root's pool): the
	// bridge takes its first address, containers lease the others.
	Subnet netip.Prefix
	// Bridge is the bridge's name; "" means DefaultBridge.
	Bridge string
	// Leases is the file of the address leases; "" keeps them in memory.
	Leases string
	// NetNS is the namespace to act in; nil means the caller's. Open
	// keeps no reference to it after Close.
	NetNS *os.File
}

// A Network is one init's bridge, the veth pairs of its containers on it,
// their addresses and their nftables rules. Its methods are safe for
// concurrent use.
type Network struct {
	opts    Options
	h       *netlink.Handle
	bridge  netlink.Link
	gateway netip.Addr
	addrs   *Pool
	nat     *nat
	nft     *nftables.Conn

	mu       sync.Mutex
	attached map[string]*Attachment
}

// A KeyError is an error of Attach caused by one of the container's
// settings: "publish" (a port taken) or "address" (a pinned address that
// cannot be had).
type KeyError struct {
	Key string
	Err error
}

func (e *KeyError) Error() string { return e.Err.Error() }
func (e *KeyError) Unwrap() error { return e.Err }

// An Endpoint is a container to attach.
type Endpoint struct {
	Name    string     // the container's name: its lease and its rules
	NetNS   *os.File   // the container's network namespace
	Address netip.Addr // pinned address; the zero Addr leases one
	NAT     bool       // masquerade what it sends beyond the bridge
	Publish []Port
}

// An Attachment is an attached container.
type Attachment struct {
	Name     string
	Address  netip.Prefix // its address with the bridge's prefix length
	Gateway  netip.Addr   // the bridge's address: its default route
	HostLink string       // the parent's end of the veth pair
	Publish  []Port
}

// Open sets up the bridge of an init in its namespace: the bridge with
// the first address of Subnet, up, forwarding on, route_localnet on the
// bridge, and a fresh nftables table. A bridge of the same name left by an
// earlier run is replaced; a route of another link that overlaps Subnet
// is an error.
func Open(opts Options) (*Network, error) {
	if opts.Bridge == "" {
		opts.Bridge = DefaultBridge
	}
	s := opts.Subnet
	if !s.IsValid() || !s.Addr().Is4() || s.Masked() != s || s.Bits() > 30 {
		return nil, fmt.Errorf("network %s: want an IPv4 network prefix of /30 or larger", s)
	}
	h, err := handleAt(opts.NetNS)
	if err != nil {
		return nil, fmt.Errorf("network %s: netlink: %w", s, err)
	}
	n := &Network{
		opts:     opts,
		h:        h,
		gateway:  s.Addr().Next(),
		attached: make(map[string]*Attachment),
	}
	n.addrs = &Pool{
		Prefix: s, Bits: 32, Path: opts.Leases,
		Reserved: []netip.Prefix{
			netip.PrefixFrom(s.Addr(), 32),
			netip.PrefixFrom(n.gateway, 32),
			netip.PrefixFrom(lastAddr(s), 32),
		},
	}
	if err := n.open(); err != nil {
		n.Close()
		return nil, fmt.Errorf("network %s on %s: %w", s, opts.Bridge, err)
	}
	return n, nil
}

func (n *Network) open() error {
	// Published ports answer on loopback too.
	if lo, err := n.h.LinkByName("lo"); err == nil {
		if err := n.h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("lo up: %w", err)
		}
	}
	if old, err := n.h.LinkByName(n.opts.Bridge); err == nil {
		if err := n.h.LinkDel(old); err != nil {
			return fmt.Errorf("remove the old bridge: %w", err)
		}
	}
	if err := n.checkOverlap(); err != nil {
		return err
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.opts.Bridge, Flags: stdnet.FlagUp}}
	if err := n.h.LinkAdd(br); err != nil {
		return fmt.Errorf("create the bridge: %w", err)
	}
	n.bridge = br
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.gateway, n.opts.Subnet.Bits()))}
	if err := n.h.AddrAdd(br, addr); err != nil {
		return fmt.Errorf("bridge address %s: %w", n.gateway, err)
	}
	if err := setDevconf(n.opts.NetNS, br.Index, map[int]uint32{devconfForwarding: 1, devconfRouteLocalnet: 1}); err != nil {
		return fmt.Errorf("forwarding and route_localnet on the bridge: %w", err)
	}
	if err := enableForwarding(n.opts.NetNS, n.h); err != nil {
		return err
	}
	conn, err := nftablesConn(n.opts.NetNS)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	n.nft = conn
	n.nat, err = newNAT(conn, n.opts.Bridge, n.opts.Subnet)
	return err
}

// nftablesConn returns a netlink connection to nf_tables in ns (nil: the
// caller's), kept open until CloseLasting.
func nftablesConn(ns *os.File) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if ns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(ns.Fd())))
	}
	return nftables.New(opts...)
}

// checkOverlap refuses a subnet that a route of another link covers or
// falls in (in the main table, or a range of local addresses as lo can
// have): containers would shadow those addresses, or be shadowed.
func (n *Network) checkOverlap() error {
	all := &netlink.Route{Table: unix.RT_TABLE_UNSPEC}
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return n.h.RouteListFiltered(unix.AF_INET, all, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("routes: %w", err)
	}
	for _, r := range routes {
		main := r.Table == unix.RT_TABLE_MAIN
		localRange := r.Table == unix.RT_TABLE_LOCAL && r.Type == unix.RTN_LOCAL && r.Dst != nil && !r.Dst.IP.IsLoopback()
		if r.Dst == nil || !main && !localRange {
			continue // the default route, a broadcast route, other tables
		}
		dst, ok := netipPrefix(r.Dst)
		if !ok || dst.Bits() == 0 || !dst.Overlaps(n.opts.Subnet) {
			continue
		}
		dev := fmt.Sprintf("link %d", r.LinkIndex)
		if l, err := n.h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		return fmt.Errorf("overlaps the route to %s on %s; set subnet to a range nothing here uses", dst, dev)
	}
	return nil
}

// Gateway is the bridge's address, the containers' default route.
func (n *Network) Gateway() netip.Addr { return n.gateway }

// Attach gives the container e.Name its veth pair: eth0 made directly in
// its namespace with its leased (or pinned) address, up, with lo up and a
// default route through the bridge; the parent's end on the bridge; its
// NAT and published ports. A published port that another container here
// publishes, or that a socket of this namespace holds, is an error. On
// error nothing of it is left but its lease.
func (n *Network) Attach(e Endpoint) (*Attachment, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.attached[e.Name]; ok {
		return nil, fmt.Errorf("%s is attached already", e.Name)
	}
	if err := n.checkPorts(e.Name, e.Publish); err != nil {
		return nil, &KeyError{"publish", err}
	}
	var want netip.Prefix
	if e.Address.IsValid() {
		want = netip.PrefixFrom(e.Address, 32)
	}
	lease, err := n.addrs.Acquire(e.Name, want)
	if err != nil && want.IsValid() && !errors.Is(err, ErrExhausted) {
		return nil, &KeyError{"address", err}
	}
	if err != nil {
		return nil, err
	}
	a := &Attachment{
		Name:     e.Name,
		Address:  netip.PrefixFrom(lease.Addr(), n.opts.Subnet.Bits()),
		Gateway:  n.gateway,
		HostLink: hostLinkName(e.Name),
		Publish:  slices.Clone(e.Publish),
	}
	if err := n.attach(a, e); err != nil {
		n.removeLink(a.HostLink)
		n.nat.remove(e.Name)
		return nil, fmt.Errorf("%s: %w", e.Name, err)
	}
	n.attached[e.Name] = a
	return a, nil
}

func (n *Network) attach(a *Attachment, e Endpoint) error {
	if old, err := n.h.LinkByName(a.HostLink); err == nil {
		// Left by a run whose namespace still lives; nothing here uses it.
		if err := n.h.LinkDel(old); err != nil {
			return fmt.Errorf("remove the old %s: %w", a.HostLink, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: a.HostLink, MasterIndex: n.bridge.Attrs().Index, Flags: stdnet.FlagUp},
		PeerName:      ContainerLink,
		PeerNamespace: netlink.NsFd(e.NetNS.Fd()),
	}
	if err := n.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth pair %s/%s: %w", a.HostLink, ContainerLink, err)
	}
	if err := configureInside(e.NetNS, a); err != nil {
		return err
	}
	if err := n.nat.add(e.Name, a.Address.Addr(), e.NAT, e.Publish); err != nil {
		return err
	}
	return nil
}

// configureInside sets up the container's side in its namespace: lo and
// eth0 up, eth0's address, the default route through the bridge.
func configureInside(ns *os.File, a *Attachment) error {
	h, err := handleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in the container: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err == nil {
		err = h.LinkSetUp(lo)
	}
	if err != nil {
		return fmt.Errorf("lo up in the container: %w", err)
	}
	eth, err := h.LinkByName(ContainerLink)
	if err != nil {
		return fmt.Errorf("%s in the container: %w", ContainerLink, err)
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(a.Address)}); err != nil {
		return fmt.Errorf("address %s in the container: %w", a.Address, err)
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("%s up in the container: %w", ContainerLink, err)
	}
	route := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: a.Gateway.AsSlice()}
	if err := h.RouteAdd(route); err != nil {
		return fmt.Errorf("default route via %s in the container: %w", a.Gateway, err)
	}
	return nil
}

// checkPorts refuses a host port that another attached container
// publishes, or that a socket of this namespace is bound to (connections
// to it would go to the container, not to that socket).
func (n *Network) checkPorts(name string, ports []Port) error {
	for i, p := range ports {
		for _, q := range ports[:i] {
			if p.Host == q.Host && p.Proto == q.Proto {
				return fmt.Errorf("publish %s: port %d/%s is published twice", p, p.Host, p.Proto)
			}
		}
		for _, a := range n.attached {
			for _, q := range a.Publish {
				if p.Host == q.Host && p.Proto == q.Proto && a.Name != name {
					return fmt.Errorf("publish %s: port %d/%s is published by %s", p, p.Host, p.Proto, a.Name)
				}
			}
		}
		if err := inNetNS(n.opts.NetNS, func() error { return portFree(p) }); err != nil {
			return fmt.Errorf("publish %s: port %d/%s is taken here: %w", p, p.Host, p.Proto, err)
		}
	}
	return nil
}

// portFree reports whether a socket could bind the port on every address.
func portFree(p Port) error {
	typ := unix.SOCK_STREAM
	if p.Proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Bind(fd, &unix.SockaddrInet4{Port: int(p.Host)})
}

// Detach removes the container's veth pair and its rules. Its lease
// stays: the next Attach of the same name gets the same address. Detaching
// a container that is not attached removes whatever a failed run left.
func (n *Network) Detach(name string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.attached, name)
	errLink := n.removeLink(hostLinkName(name))
	errRules := n.nat.remove(name)
	return errors.Join(errLink, errRules)
}

// Release gives back the container's address (nest rm, or gone from the
// config).
func (n *Network) Release(name string) error { return n.addrs.Release(name) }

// removeLink deletes a host-side veth, if it is there; its peer goes with
// it.
func (n *Network) removeLink(name string) error {
	l, err := n.h.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err == nil {
		err = n.h.LinkDel(l)
	}
	if err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("remove %s: %w", name, err)
	}
	return nil
}

// Attached returns the attached containers, by name.
func (n *Network) Attached() []Attachment {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]Attachment, 0, len(n.attached))
	for _, a := range n.attached {
		out = append(out, *a)
	}
	slices.SortFunc(out, func(a, b Attachment) int { return a.Address.Addr().Compare(b.Address.Addr()) })
	return out
}

// Close removes the bridge and the nftables table: an init that goes
// away (nest up) leaves nothing behind. Containers still attached lose
// their network. Leases stay in their file.
func (n *Network) Close() error {
	var errs []error
	if n.nat != nil {
		errs = append(errs, n.nat.close())
		n.nat = nil
	}
	if n.nft != nil {
		n.nft.CloseLasting()
		n.nft = nil
	}
	if n.h != nil {
		n.mu.Lock()
		for name, a := range n.attached {
			errs = append(errs, n.removeLink(a.HostLink))
			delete(n.attached, name)
		}
		n.mu.Unlock()
		if n.bridge != nil {
			if err := n.h.LinkDel(n.bridge); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", n.opts.Bridge, err))
			}
			n.bridge = nil
		}
		n.h.Close()
		n.h = nil
	}
	return errors.Join(errs...)
}

// hostLinkName is the parent's end of a container's veth pair: "nv-" and
// the name when it fits Linux's 15 bytes, else its first 7 bytes and a
// hash of the whole.
func hostLinkName(name string) string {
	if len(name) <= 12 {
		return "nv-" + name
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	return fmt.Sprintf("nv-%s-%04x", name[:7], h.Sum32()&0xffff)
}

// StateFile is the lease file of a network's addresses in dir.
func StateFile(dir string) string { return filepath.Join(dir, "addresses") }

func ipNet(p netip.Prefix) *stdnet.IPNet {
	return &stdnet.IPNet{IP: p.Addr().AsSlice(), Mask: stdnet.CIDRMask(p.Bits(), 32)}
}

func netipPrefix(n *stdnet.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	return uintAddr(addrUint(p.Addr()) | ^uint32(0)>>p.Bits())
}
