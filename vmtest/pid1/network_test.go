//go:build vmguest

package pid1

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"nest/statefile"
	"nest/supervise"
)

// Scenario "network" (vmtest/network_test.go): veth, none and host
// containers of the root.

// get fetches url from this (the root's) network namespace.
func get(url string) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	r, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	return string(b), err
}

// dumpLogs shows the logs of containers when the test failed.
func dumpLogs(t *testing.T, names ...string) {
	if !t.Failed() {
		return
	}
	for _, n := range names {
		out, _ := nest(t, "logs", n)
		t.Logf("nest logs %s:\n%s", n, out)
	}
}

func logHas(t *testing.T, name, want string) func() bool {
	deadline := time.Now().Add(50 * time.Second)
	return func() bool {
		out, _ := nest(t, "logs", name)
		if time.Now().After(deadline) {
			t.Logf("nest logs %s:\n%s", name, out)
			deadline = time.Now().Add(time.Hour)
		}
		return strings.Contains(out, want)
	}
}

func TestNetworkByName(t *testing.T) {
	defer dumpLogs(t, "web", "client", "pinned")
	until(t, 60*time.Second, "client to fetch from web by name", logHas(t, "client", "hello from web"))
	out, _ := nest(t, "logs", "client")
	web := status(t, "web")
	if !strings.Contains(out, strings.TrimSuffix(web.Address, "/24")+"\tweb\n") || !strings.Contains(out, "\tclient\n") {
		t.Errorf("client's /etc/hosts lacks web at %s or itself:\n%s", web.Address, out)
	}
	if !strings.Contains(out, "nameserver 192.0.2.53") {
		t.Errorf("client's /etc/resolv.conf lacks the root's nameserver:\n%s", out)
	}
	until(t, 30*time.Second, "web's hosts to name client", logHas(t, "web", "hosts name client"))
}

func TestNetworkPublish(t *testing.T) {
	until(t, 60*time.Second, "web running", func() bool { return status(t, "web").State == supervise.StateRunning })
	for _, url := range []string{"http://127.0.0.1:8080/", "http://10.88.0.1:8080/"} {
		var body string
		var err error
		until(t, 30*time.Second, "web's published port at "+url, func() bool {
			body, err = get(url)
			return err == nil
		})
		if !strings.Contains(body, "hello from web") {
			t.Errorf("GET %s = %q, %v", url, body, err)
		}
	}
}

func TestNetworkNone(t *testing.T) {
	until(t, 30*time.Second, "isolated's links", logHas(t, "isolated", "LINKS"))
	out, _ := nest(t, "logs", "isolated")
	if !strings.Contains(out, "LINKS lo\n") {
		t.Errorf("a none container's links, want only lo:\n%s", out)
	}
}

func TestNetworkHost(t *testing.T) {
	until(t, 30*time.Second, "shared's links", logHas(t, "shared", "LINKS"))
	out, _ := nest(t, "logs", "shared")
	if !strings.Contains(out, "nest0") || !strings.Contains(out, "nv-web") {
		t.Errorf("a host container does not see the root's links:\n%s", out)
	}
}

// TestNetworkNAT: a container reaches a namespace beyond the root, which
// has no route back to the bridge: only masquerade makes that work.
func TestNetworkNAT(t *testing.T) {
	ns, cleanup := outside(t)
	defer cleanup()
	l := listenIn(t, ns, "tcp4", "192.0.2.2:7000")
	defer l.Close()
	seen := map[string]chan string{"/deep": make(chan string, 1), "/leaf": make(chan string, 1)}
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "seen from %s\n", host)
		if c := seen[r.URL.Path]; c != nil {
			select {
			case c <- host:
			default:
			}
		}
	}))
	until(t, 60*time.Second, "natted to reach the outside", logHas(t, "natted", "seen from"))
	if out, _ := nest(t, "logs", "natted"); !strings.Contains(out, "seen from 192.0.2.1") {
		t.Errorf("the outside saw natted as\n%s\nwant the root's 192.0.2.1", out)
	}
	// A grandchild, mid/deep, on mid's own bridge: through mid's NAT and
	// the root's, the outside sees the root. mid/dev/leaf, on dev's
	// bridge, goes through three.
	for _, c := range []struct{ path, who, nats string }{
		{"/deep", "mid/deep", "two"}, {"/leaf", "mid/dev/leaf", "three"},
	} {
		select {
		case host := <-seen[c.path]:
			if host != "192.0.2.1" {
				t.Errorf("the outside saw %s as %s, want the root's 192.0.2.1", c.who, host)
			}
		case <-time.After(90 * time.Second):
			out, _ := nest(t, "ls", "--tree")
			t.Errorf("%s never reached the outside through %s NATs; nest ls --tree:\n%s", c.who, c.nats, out)
		}
	}
}

// tryStatus is status for a container that may be restarting.
func tryStatus(t *testing.T, path string) supervise.Status {
	out, code := nest(t, "status", "--json", path)
	var st supervise.Status
	if code == 0 {
		json.Unmarshal([]byte(out), &st)
	}
	return st
}

// TestNetworkLevels: each level has a /24 of its own from the root's
// pool, leased under the container's path; a veth daemon three levels
// down keeps its address over a restart of its parent container, whose
// /24 its parent gets again from the root.
func TestNetworkLevels(t *testing.T) {
	defer dumpLogs(t, "mid") // nest logs reads only the root's children
	var leaf supervise.Status
	until(t, 90*time.Second, "mid/dev/leaf running with an address", func() bool {
		leaf = tryStatus(t, "mid/dev/leaf")
		return leaf.State == supervise.StateRunning && leaf.Address != ""
	})
	subnets := map[string]netip.Prefix{"": netip.MustParsePrefix("10.88.0.0/24")}
	for _, line := range strings.Split(readFile(t, "/var/lib/nest/net/subnets"), "\n") {
		if f := strings.Fields(line); len(f) == 2 && !strings.HasPrefix(f[0], "#") {
			subnets[f[1]] = netip.MustParsePrefix(f[0])
		}
	}
	root, mid, dev := subnets[""], subnets["mid"], subnets["mid/dev"]
	if !mid.IsValid() || !dev.IsValid() || mid == dev || mid.Overlaps(root) || dev.Overlaps(root) {
		t.Fatalf("the root's subnet leases: %v; want mid's and mid/dev's, apart and beside the root's", subnets)
	}
	addr := netip.MustParsePrefix(leaf.Address)
	if !dev.Contains(addr.Addr()) {
		t.Errorf("mid/dev/leaf's address %s is not in mid/dev's %s", addr, dev)
	}
	if st := tryStatus(t, "mid/dev"); !mid.Contains(netip.MustParsePrefix(st.Address).Addr()) {
		t.Errorf("mid/dev's address %s is not in mid's %s", st.Address, mid)
	}
	if out, code := nest(t, "restart", "mid/dev"); code != 0 {
		t.Fatalf("nest restart mid/dev = %d %s", code, out)
	}
	var again supervise.Status
	until(t, 90*time.Second, "mid/dev/leaf running again after mid/dev's restart", func() bool {
		again = tryStatus(t, "mid/dev/leaf")
		return again.State == supervise.StateRunning && again.Address != "" && again.Since.After(leaf.Since)
	})
	if again.Address != leaf.Address {
		t.Errorf("mid/dev/leaf's address after mid/dev's restart = %s, want %s", again.Address, leaf.Address)
	}
	if got := readFile(t, "/var/lib/nest/net/subnets"); !strings.Contains(got, dev.String()+" mid/dev\n") {
		t.Errorf("mid/dev's lease after its restart:\n%s\nwant %s", got, dev)
	}
}

// outside makes a network namespace with 192.0.2.2 beyond the root's
// 192.0.2.1, as the world is beyond a host.
func outside(t *testing.T) (*os.File, func()) {
	t.Helper()
	sh := exec.Command("/bin/busybox", "unshare", "-n", "/bin/sleep", "1000")
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	var ns *os.File
	var err error
	until(t, 5*time.Second, "the outside namespace", func() bool {
		ns, err = os.Open(fmt.Sprintf("/proc/%d/ns/net", sh.Process.Pid))
		if err != nil {
			return false
		}
		self, _ := os.Readlink("/proc/self/ns/net")
		other, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", sh.Process.Pid))
		if self == other { // unshare has not unshared yet
			ns.Close()
			return false
		}
		return true
	})
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", Flags: net.FlagUp}, PeerName: "down0", PeerNamespace: netlink.NsFd(ns.Fd())}
	must := func(err error) {
		if err != nil {
			t.Helper()
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(up))
	must(netlink.AddrAdd(up, mustAddr("192.0.2.1/24")))
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	must(err)
	defer h.Close()
	down, err := h.LinkByName("down0")
	must(err)
	must(h.AddrAdd(down, mustAddr("192.0.2.2/24")))
	must(h.LinkSetUp(down))
	return ns, func() {
		netlink.LinkDel(up)
		sh.Process.Kill()
		sh.Wait()
		ns.Close()
	}
}

func mustAddr(s string) *netlink.Addr {
	a, err := netlink.ParseAddr(s)
	if err != nil {
		panic(err)
	}
	return a
}

// listenIn makes a listener in ns: a socket belongs to the namespace of
// the thread that made it, for good.
func listenIn(t *testing.T, ns *os.File, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in ns
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		var err error
		l, err = net.Listen(network, addr)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return l
}

// TestNetworkLease: a stopped container keeps its address; a pinned one
// has its own.
func TestNetworkLease(t *testing.T) {
	until(t, 60*time.Second, "client running", func() bool { return status(t, "client").State == supervise.StateRunning })
	before := status(t, "client").Address
	if st := status(t, "pinned"); st.Address != "10.88.0.99/24" {
		t.Errorf("pinned's address = %q, want 10.88.0.99/24", st.Address)
	}
	if out, code := nest(t, "stop", "client"); code != 0 {
		t.Fatalf("nest stop client = %d %s", code, out)
	}
	if st := status(t, "client"); st.Address != "" {
		t.Errorf("a stopped client shows address %q", st.Address)
	}
	if leases := readFile(t, "/var/lib/nest/net/addresses"); !strings.Contains(leases, strings.TrimSuffix(before, "/24")+" client\n") {
		t.Errorf("the lease file lacks client's %s:\n%s", before, leases)
	}
	if out, code := nest(t, "start", "client"); code != 0 {
		t.Fatalf("nest start client = %d %s", code, out)
	}
	if after := status(t, "client").Address; after != before {
		t.Errorf("client's address %s after a stop and start, want %s", after, before)
	}
	if out, code := nest(t, "ls"); code != 0 || !strings.Contains(out, "ADDRESS") || !strings.Contains(out, before) {
		t.Errorf("nest ls = %d:\n%s", code, out)
	}
}

// TestNetworkTakenPort: a container whose published port a process of the
// root holds fails to start, with the place of its publish key.
func TestNetworkTakenPort(t *testing.T) {
	var st supervise.Status
	until(t, 60*time.Second, "taken to fail", func() bool {
		st = status(t, "taken")
		return st.State == supervise.StateFailed
	})
	if !strings.Contains(st.Reason, `/etc/nest/nest.toml:`) || !strings.Contains(st.Reason, `container "taken": publish`) ||
		!strings.Contains(st.Reason, "port 9090/tcp is taken here") {
		t.Errorf("taken failed with %q, want its publish key's place and the port", st.Reason)
	}
}

// TestNetworkBadConfig: a reload with a bad network key is refused with
// the key's place, and nothing changes.
func TestNetworkBadConfig(t *testing.T) {
	orig := readFile(t, "/etc/nest/nest.toml")
	defer os.WriteFile("/etc/nest/nest.toml", []byte(orig), 0o644)
	for _, tc := range []struct{ key, want string }{
		{`network = "bridged"`, `network = "bridged": want "none"`},
		{`publish = ["8080:80"]`, `port 8080/tcp is already published by container "web"`},
		{`address = "10.88.0.99"`, `already the address of container "pinned"`},
	} {
		cfg := orig + "\n[container.bad]\nkind = \"daemon\"\nexec = [\"/x\"]\n"
		if !strings.HasPrefix(tc.key, "network") {
			cfg += "network = \"veth\"\n"
		}
		line := strings.Count(cfg, "\n") + 1
		cfg += tc.key + "\n"
		if err := os.WriteFile("/etc/nest/nest.toml", []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		out, code := nest(t, "reload")
		if code == 0 || !strings.Contains(out, tc.want) || !strings.Contains(out, fmt.Sprintf("/etc/nest/nest.toml:%d:", line)) {
			t.Errorf("nest reload with %s = %d %s, want an error at line %d with %q", tc.key, code, out, line, tc.want)
		}
	}
}

// TestNetworkOverlap: nest up in a namespace where the subnet is taken
// reports it at the subnet key.
func TestNetworkOverlap(t *testing.T) {
	conf := "console = \"none\"\nsubnet = \"10.66.0.0/16\"\n[container.x]\nkind = \"daemon\"\nexec = [\"/bin/sleep\", \"1000\"]\nnetwork = \"veth\"\nrestart = \"no\"\nstart_limit = 1\n"
	if err := os.WriteFile("/tmp/overlap.toml", []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	up := exec.Command("/bin/busybox", "unshare", "-n", "/bin/sh", "-c",
		"ip link set lo up && ip addr add 10.66.0.1/16 dev lo && exec nest up -c /tmp/overlap.toml --socket /tmp/overlap.sock")
	var upOut strings.Builder
	up.Stdout, up.Stderr = &upOut, &upOut
	defer func() {
		if t.Failed() {
			t.Logf("nest up:\n%s", upOut.String())
		}
	}()
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		up.Process.Signal(unix.SIGTERM)
		up.Wait()
	}()
	var out string
	until(t, 30*time.Second, "x to fail under nest up", func() bool {
		out, _ = nest(t, "--socket", "/tmp/overlap.sock", "status", "x")
		return strings.Contains(out, "failed")
	})
	if !strings.Contains(out, `/tmp/overlap.toml:2:10: subnet = "10.66.0.0/16"`) || !strings.Contains(out, "overlaps the route to 10.66.0.0/16 on lo") {
		t.Errorf("nest status x under nest up:\n%s\nwant the overlap at subnet's place", out)
	}
}

// TestNetworkCycles: 100 starts and stops of a veth container with a
// published port leave no link, route or rule behind.
func TestNetworkCycles(t *testing.T) {
	until(t, 60*time.Second, "cycler running", func() bool { return status(t, "cycler").State == supervise.StateRunning })
	if out, code := nest(t, "stop", "cycler"); code != 0 {
		t.Fatalf("nest stop cycler = %d %s", code, out)
	}
	before := netState(t)
	// Straight to the control socket: a CLI process per step would cost
	// more than the step under TCG.
	c := supervise.NewClient("/run/nest/nest.sock")
	act := func(i int, action string) {
		st, err := c.Act(context.Background(), action, "cycler")
		want := map[string]supervise.State{"start": supervise.StateRunning, "stop": supervise.StateStopped}[action]
		if err != nil || st.State != want {
			t.Fatalf("cycle %d: %s: %+v, %v; want %s", i, action, st, err, want)
		}
	}
	start := time.Now()
	for i := range 100 {
		act(i, "start")
		act(i, "stop")
	}
	t.Logf("100 cycles in %s", time.Since(start).Round(time.Millisecond))
	if after := netState(t); after != before {
		t.Errorf("after 100 cycles:\n%s\nbefore:\n%s", after, before)
	}
}

// netState describes the root's links, routes and nftables rules.
func netState(t *testing.T) string {
	t.Helper()
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	routes, err := netlink.RouteList(nil, unix.AF_INET)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chains, err := conn.ListChains()
	if err != nil {
		t.Fatal(err)
	}
	rules := 0
	for _, c := range chains {
		rs, err := conn.GetRules(c.Table, c)
		if err != nil {
			t.Fatal(err)
		}
		rules += len(rs)
	}
	return fmt.Sprintf("links %v\nroutes %d\nchains %d, rules %d", names, len(routes), len(chains), rules)
}

// TestNetworkReboot runs last in the scenario, which boots twice on one
// state disk (TestPID1Network). On the first boot it writes down the
// addresses of web, client and mid/dev/leaf (three levels down, on a /24
// the root leased under mid/dev) on that disk; on the second, where only
// it runs, each container must have its address back: the leases outlive
// the root.
func TestNetworkReboot(t *testing.T) {
	const record = "/var/lib/nest/vmtest-addresses.json"
	now := map[string]string{}
	for _, n := range []string{"web", "client", "mid/dev/leaf"} {
		until(t, 90*time.Second, n+" running with an address", func() bool {
			st := tryStatus(t, n)
			now[n] = st.Address
			return st.State == supervise.StateRunning && st.Address != ""
		})
	}
	b, err := os.ReadFile(record)
	if errors.Is(err, fs.ErrNotExist) {
		// Synced: the VM ends without unmounting.
		data, _ := json.Marshal(now)
		if err := statefile.Write(record, data, true); err != nil {
			t.Fatal(err)
		}
		t.Logf("first boot: %s", data)
		return
	}
	var before map[string]string
	if err == nil {
		err = json.Unmarshal(b, &before)
	}
	if err != nil || len(before) != len(now) {
		t.Fatalf("the first boot's addresses: %q, %v", b, err)
	}
	for n, a := range before {
		if now[n] != a {
			t.Errorf("%s has %s after the reboot, %s before", n, now[n], a)
		}
	}
	t.Logf("second boot: the same addresses %v", now)
}
