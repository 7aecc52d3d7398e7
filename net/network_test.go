package net

import (
	"errors"
	"fmt"
	"io"
	stdnet "net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The tests below run as root in network namespaces they make; nothing
// they do reaches the host's own.

func needRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("needs root: network namespaces, links and nftables")
	}
}

// newNetNS makes a network namespace that lives as long as the test.
func newNetNS(t testing.TB) *os.File {
	t.Helper()
	var ns *os.File
	err := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in the new namespace
		if e := unix.Unshare(unix.CLONE_NEWNET); e != nil {
			err <- e
			return
		}
		f, e := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		ns = f
		err <- e
	}()
	if e := <-err; e != nil {
		t.Fatalf("new network namespace: %v", e)
	}
	t.Cleanup(func() { ns.Close() })
	if err := inNetNS(ns, LoopbackUp); err != nil {
		t.Fatal(err)
	}
	return ns
}

// listen makes a listener of network in ns.
func listen(t testing.TB, ns *os.File, network, addr string) io.Closer {
	t.Helper()
	var c io.Closer
	err := inNetNS(ns, func() error {
		var err error
		if network == "udp" {
			c, err = stdnet.ListenPacket("udp4", addr)
		} else {
			c, err = stdnet.Listen("tcp4", addr)
		}
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serveTCP answers every connection with the peer address it sees.
func serveTCP(t testing.TB, ns *os.File, addr string) {
	l := listen(t, ns, "tcp", addr).(stdnet.Listener)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*stdnet.TCPAddr).IP)
			c.Close()
		}
	}()
}

// serveUDP answers every datagram with the peer address it sees.
func serveUDP(t testing.TB, ns *os.File, addr string) {
	c := listen(t, ns, "udp", addr).(stdnet.PacketConn)
	go func() {
		b := make([]byte, 64)
		for {
			_, from, err := c.ReadFrom(b)
			if err != nil {
				return
			}
			c.WriteTo([]byte(from.(*stdnet.UDPAddr).IP.String()+"\n"), from)
		}
	}()
}

// ask connects from ns to addr and returns what the server says: the
// address it saw us come from.
func ask(ns *os.File, network, addr string) (string, error) {
	var out string
	err := inNetNS(ns, func() error {
		c, err := stdnet.DialTimeout(network+"4", addr, 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if network == "udp" {
			c.Write([]byte("hi"))
		}
		b := make([]byte, 64)
		n, err := c.Read(b)
		out = strings.TrimSpace(string(b[:n]))
		return err
	})
	return out, err
}

func mustAsk(t *testing.T, ns *os.File, network, addr, want string) {
	t.Helper()
	got, err := ask(ns, network, addr)
	if err != nil || got != want {
		t.Errorf("%s to %s: %q, %v; want the server to see %s", network, addr, got, err, want)
	}
}

// openTest opens a Network in a fresh namespace.
func openTest(t *testing.T, subnet string) (*Network, *os.File) {
	t.Helper()
	parent := newNetNS(t)
	n, err := Open(Options{Subnet: netip.MustParsePrefix(subnet), Leases: filepath.Join(t.TempDir(), "addresses"), NetNS: parent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, parent
}

// linkNames lists the links of ns.
func linkNames(t testing.TB, ns *os.File) []string {
	t.Helper()
	h, err := handleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	links, err := retryDump(h.LinkList)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

func TestNetwork(t *testing.T) {
	needRoot(t)
	n, parent := openTest(t, "10.99.0.0/24")
	web, db := newNetNS(t), newNetNS(t)

	// An "outside" namespace beyond the parent, as the world is beyond a
	// host: 192.0.2.1 on the parent's side, .2 on its own.
	outside := newNetNS(t)
	ph, _ := handleAt(parent)
	defer ph.Close()
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", Flags: stdnet.FlagUp}, PeerName: "down0", PeerNamespace: netlink.NsFd(outside.Fd())}
	if err := ph.LinkAdd(up); err != nil {
		t.Fatal(err)
	}
	ph.AddrAdd(up, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.0.2.1/24"))})
	oh, _ := handleAt(outside)
	defer oh.Close()
	down, _ := oh.LinkByName("down0")
	oh.AddrAdd(down, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("192.0.2.2/24"))})
	oh.LinkSetUp(down)
	// Only db's address is routed back: web must be masqueraded to be
	// answered at all.
	oh.RouteAdd(&netlink.Route{Dst: ipNet(netip.MustParsePrefix("10.99.0.7/32")), Gw: stdnet.ParseIP("192.0.2.1"), LinkIndex: down.Attrs().Index})
	serveTCP(t, outside, "192.0.2.2:7000")

	a, err := n.Attach(Endpoint{Name: "web", NetNS: web, NAT: true, Publish: []Port{{8080, 80, "tcp"}, {5353, 53, "udp"}}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Address.String() != "10.99.0.2/24" || a.Gateway.String() != "10.99.0.1" || a.HostLink != "nv-web" {
		t.Errorf("Attach(web) = %+v", a)
	}
	if _, err := n.Attach(Endpoint{Name: "db", NetNS: db, Address: netip.MustParseAddr("10.99.0.7")}); err != nil {
		t.Fatal(err)
	}
	serveTCP(t, web, "10.99.0.2:80")
	serveUDP(t, web, "10.99.0.2:53")
	serveTCP(t, db, "0.0.0.0:9000")

	// Inside: eth0 with the address, lo up, the default route.
	wh, _ := handleAt(web)
	defer wh.Close()
	eth, err := wh.LinkByName("eth0")
	if err != nil || eth.Attrs().Flags&stdnet.FlagUp == 0 {
		t.Fatalf("eth0 in web: %v, %v", eth, err)
	}
	routes, _ := wh.RouteList(eth, unix.AF_INET)
	var gw string
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			gw = r.Gw.String()
		}
	}
	if gw != "10.99.0.1" {
		t.Errorf("web's default route via %q, want 10.99.0.1 (%v)", gw, routes)
	}

	// Over the bridge, containers see each other as they are.
	mustAsk(t, web, "tcp", "10.99.0.7:9000", "10.99.0.2")
	// Published ports: from the parent's loopback (route_localnet and
	// masquerade: the container sees the bridge's address), from its
	// address on the bridge, and from another container (hairpin).
	mustAsk(t, parent, "tcp", "127.0.0.1:8080", "10.99.0.1")
	mustAsk(t, parent, "tcp", "10.99.0.1:8080", "10.99.0.1")
	mustAsk(t, parent, "udp", "127.0.0.1:5353", "10.99.0.1")
	mustAsk(t, db, "tcp", "10.99.0.1:8080", "10.99.0.1")
	// From outside, to the parent's outside address: the client is seen
	// as it is.
	mustAsk(t, outside, "tcp", "192.0.2.1:8080", "192.0.2.2")
	// Out through NAT: web is masqueraded, db (nat off) is not.
	mustAsk(t, web, "tcp", "192.0.2.2:7000", "192.0.2.1")
	mustAsk(t, db, "tcp", "192.0.2.2:7000", "10.99.0.7")

	// A published port is one container's.
	other := newNetNS(t)
	if _, err := n.Attach(Endpoint{Name: "other", NetNS: other, Publish: []Port{{8080, 8080, "tcp"}}}); err == nil || !strings.Contains(err.Error(), "published by web") {
		t.Errorf("publishing web's port again = %v, want an error naming web", err)
	}
	listen(t, parent, "tcp", "0.0.0.0:9090")
	if _, err := n.Attach(Endpoint{Name: "other", NetNS: other, Publish: []Port{{9090, 80, "tcp"}}}); err == nil || !strings.Contains(err.Error(), "9090/tcp is taken here") {
		t.Errorf("publishing a port a socket holds = %v, want an error", err)
	}
	if got := linkNames(t, other); len(got) != 1 {
		t.Errorf("after failed attaches, other has links %v, want only lo", got)
	}

	// Detach takes the pair and the rules; the lease stays.
	if err := n.Detach("web"); err != nil {
		t.Fatal(err)
	}
	if got := linkNames(t, web); len(got) != 1 {
		t.Errorf("after Detach, web has links %v, want only lo", got)
	}
	if c, _ := n.nat.count("web"); c != 0 {
		t.Errorf("after Detach, %d rules of web are left", c)
	}
	if _, err := ask(parent, "tcp", "127.0.0.1:8080"); err == nil {
		t.Errorf("the published port still answers after Detach")
	}
	a, err = n.Attach(Endpoint{Name: "web", NetNS: web, NAT: true})
	if err != nil || a.Address.Addr().String() != "10.99.0.2" {
		t.Errorf("Attach(web) again = %v, %v; want its leased 10.99.0.2", a, err)
	}
	if got := n.Attached(); len(got) != 2 || got[0].Name != "web" || got[1].Name != "db" {
		t.Errorf("Attached() = %+v, want web and db", got)
	}

	// Close leaves nothing: no bridge, no veth, no table.
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	for _, l := range linkNames(t, parent) {
		if l == DefaultBridge || strings.HasPrefix(l, "nv-") {
			t.Errorf("after Close, link %s is left", l)
		}
	}
	if tables := nftTables(t, parent); len(tables) != 0 {
		t.Errorf("after Close, tables %v are left", tables)
	}
}

func TestNetworkOverlap(t *testing.T) {
	needRoot(t)
	parent := newNetNS(t)
	h, _ := handleAt(parent)
	defer h.Close()
	d := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "lan0", Flags: stdnet.FlagUp}}
	if err := h.LinkAdd(d); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(d, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.98.0.1/16"))}); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Options{Subnet: netip.MustParsePrefix("10.98.5.0/24"), NetNS: parent})
	if err == nil || !strings.Contains(err.Error(), "overlaps the route to 10.98.0.0/16 on lan0") {
		t.Errorf("Open on a used range = %v, want an error naming the route", err)
	}
	if got := linkNames(t, parent); strings.Contains(strings.Join(got, " "), DefaultBridge) {
		t.Errorf("a failed Open left %v", got)
	}
	// So does a range of local addresses, as lo can have.
	lo, _ := h.LinkByName("lo")
	if err := h.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(netip.MustParsePrefix("10.93.0.1/16"))}); err != nil {
		t.Fatal(err)
	}
	_, err = Open(Options{Subnet: netip.MustParsePrefix("10.93.7.0/24"), NetNS: parent})
	if err == nil || !strings.Contains(err.Error(), "overlaps the route to 10.93.0.0/16 on lo") {
		t.Errorf("Open on a local range = %v, want an error naming the route", err)
	}
	// A stale bridge of an earlier run is replaced.
	n, err := Open(Options{Subnet: netip.MustParsePrefix("10.97.0.0/24"), NetNS: parent})
	if err != nil {
		t.Fatal(err)
	}
	n.h.Close()
	n.h = nil // as if the process had died: the bridge stays
	n, err = Open(Options{Subnet: netip.MustParsePrefix("10.97.0.0/24"), NetNS: parent})
	if err != nil {
		t.Fatalf("Open over a stale bridge: %v", err)
	}
	n.Close()
}

func TestNetworkExhausted(t *testing.T) {
	needRoot(t)
	n, _ := openTest(t, "10.96.0.0/29")
	for i := range 5 {
		if _, err := n.Attach(Endpoint{Name: fmt.Sprint("c", i), NetNS: newNetNS(t)}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := n.Attach(Endpoint{Name: "c5", NetNS: newNetNS(t)})
	if !errors.Is(err, ErrExhausted) {
		t.Errorf("the sixth Attach in a /29 = %v, want ErrExhausted", err)
	}
}

// TestNetworkCycles: 100 attach/detach cycles leave no link, rule or
// route behind.
func TestNetworkCycles(t *testing.T) {
	needRoot(t)
	n, parent := openTest(t, "10.95.0.0/24")
	before := state(t, n, parent)
	for i := range 100 {
		ns := newNetNS(t)
		if _, err := n.Attach(Endpoint{Name: "c", NetNS: ns, NAT: true, Publish: []Port{{8080, 80, "tcp"}}}); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if err := n.Detach("c"); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		ns.Close()
	}
	if after := state(t, n, parent); after != before {
		t.Errorf("after 100 cycles:\n%s\nbefore:\n%s", after, before)
	}
}

// state describes the links, routes and rules of ns.
func state(t *testing.T, n *Network, ns *os.File) string {
	rules, err := n.nat.count("")
	if err != nil {
		t.Fatal(err)
	}
	h, _ := handleAt(ns)
	defer h.Close()
	routes, _ := h.RouteList(nil, unix.AF_INET)
	return fmt.Sprintf("links %v\nroutes %d\nrules %d", linkNames(t, ns), len(routes), rules)
}

func nftTables(t *testing.T, ns *os.File) []string {
	t.Helper()
	conn, err := nftablesConn(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseLasting()
	tables, err := conn.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return names
}
