package supervise

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nest/config"
	"nest/escalate"
	nestnet "nest/net"
)

// subnetTree is a root init with a pool, its user container alice whose
// init (mid) serves its link and asks the root for subnets through it,
// and alice's child dev, whose init the test plays on the returned link.
func subnetTree(t *testing.T) (root, mid *Supervisor, dev *escalate.Conn, pool *nestnet.Pool, midLog *lineLog) {
	t.Helper()
	root, _ = newTestSupervisor(t)
	root.opts.Net = &NetOptions{
		Subnet:   netip.MustParsePrefix("10.88.0.0/24"),
		Pool:     netip.MustParsePrefix("10.88.0.0/16"),
		StateDir: filepath.Join(t.TempDir(), "net"),
	}
	alice := fakeContainer(t, root, "alice", config.KindUser)
	mid, midLog = newTestSupervisor(t)
	up := NewParentLink(alice)
	mid.opts.Net = &NetOptions{Subnet: netip.MustParsePrefix("10.88.1.0/24"), Upstream: up}
	done := make(chan error, 1)
	go func() { done <- up.Serve(mid, func(string) {}, mid.opts.Logf) }()
	t.Cleanup(func() {
		alice.Close()
		<-done
	})
	dev = fakeContainer(t, mid, "dev", config.KindUser)
	return root, mid, dev, root.subnets(), midLog
}

// askSubnet sends a subnet request with body on link and returns the
// answer.
func askSubnet(t *testing.T, link *escalate.Conn, id uint64, body string) *escalate.Message {
	t.Helper()
	if err := link.Send(&escalate.Message{Type: msgSubnet, ID: id, Body: json.RawMessage(body)}); err != nil {
		t.Fatal(err)
	}
	link.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, _, err := link.Recv()
	if err != nil {
		t.Fatalf("subnet %d %s: %v", id, body, err)
	}
	if m.ID != id {
		t.Fatalf("subnet %d %s: answer %+v", id, body, m)
	}
	return m
}

func owners(t *testing.T, p *nestnet.Pool) map[string]string {
	t.Helper()
	ls, err := p.Leases()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string)
	for _, l := range ls {
		out[l.Owner] = l.Prefix.String()
	}
	return out
}

// TestSubnetForwarding: a grandchild's request travels up through its
// parent's init to the root, each level naming the path below it; the
// root leases under the full path, the same /24 every time, and gives
// the subtree back on release.
func TestSubnetForwarding(t *testing.T) {
	root, mid, dev, pool, _ := subnetTree(t)
	ctx := context.Background()
	// alice's own, as the root's attachNetwork leases it.
	own, err := root.descendantSubnet(ctx, "alice", false)
	if err != nil || own.String() != "10.88.1.0/24" {
		t.Fatalf("alice's subnet = %v, %v", own, err)
	}
	// alice's init asks for its child dev when it starts it.
	devNet, err := mid.descendantSubnet(ctx, "dev", false)
	if err != nil || devNet.String() != "10.88.2.0/24" {
		t.Fatalf("dev's subnet through alice = %v, %v", devNet, err)
	}
	// dev's init asks for its own child web: two hops.
	m := askSubnet(t, dev, 1, `{"path":"web"}`)
	var r SubnetReply
	if m.Type != msgSubnet || escalate.DecodeBody(m, &r) != nil || r.Subnet.String() != "10.88.3.0/24" {
		t.Fatalf("dev/web's subnet through two links: %+v", m)
	}
	if m := askSubnet(t, dev, 2, `{"path":"web"}`); !strings.Contains(string(m.Body), "10.88.3.0/24") {
		t.Errorf("asked again: %+v, want the same 10.88.3.0/24", m)
	}
	want := map[string]string{"alice": "10.88.1.0/24", "alice/dev": "10.88.2.0/24", "alice/dev/web": "10.88.3.0/24"}
	if got := owners(t, pool); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("root's leases = %v, want %v", got, want)
	}
	// Leases live in the root's file: a new root init (a reboot) gives
	// the same.
	again := &nestnet.Pool{Prefix: pool.Prefix, Bits: 24, Path: pool.Path}
	if got := owners(t, again); got["alice/dev/web"] != "10.88.3.0/24" {
		t.Errorf("the lease file holds %v", got)
	}

	// dev's child web is removed: dev's init gives its subnet back.
	if m := askSubnet(t, dev, 3, `{"path":"web","release":true}`); m.Type != msgSubnet {
		t.Errorf("release: %+v", m)
	}
	if _, ok := owners(t, pool)["alice/dev/web"]; ok {
		t.Error("alice/dev/web still leased after its release")
	}
	askSubnet(t, dev, 4, `{"path":"web/x"}`)
	// A removed container that cannot hold a subnet sends nothing up.
	mid.releaseNetwork("dev", &config.Container{Name: "dev", Kind: config.KindDaemon, Network: config.NetworkVeth})
	if _, ok := owners(t, pool)["alice/dev"]; !ok {
		t.Error("removing a daemon dev released alice/dev")
	}
	// dev is removed from alice: its subnet and its subtree's go.
	dc := &config.Container{Name: "dev", Kind: config.KindUser, Network: config.NetworkVeth}
	dc.Sandbox.Nesting = true
	mid.releaseNetwork("dev", dc)
	if got := owners(t, pool); fmt.Sprint(got) != fmt.Sprint(map[string]string{"alice": "10.88.1.0/24"}) {
		t.Errorf("after alice removed dev: %v", got)
	}
	askSubnet(t, dev, 5, `{"path":"web"}`)
	// alice is removed from the root: everything below it goes.
	root.ReleaseNetwork("alice")
	if got := owners(t, pool); len(got) != 0 {
		t.Errorf("after the root removed alice: %v", got)
	}
}

// TestSubnetPathPrefix: a child names only what lies below it. Whatever
// path it claims, its parent puts its own name in front; a path that is
// not one is refused, a malformed request too, and the link goes on.
func TestSubnetPathPrefix(t *testing.T) {
	root, _, dev, pool, midLog := subnetTree(t)
	if _, err := root.descendantSubnet(context.Background(), "bob", false); err != nil {
		t.Fatal(err)
	}
	// dev claims bob's name, and alice's: it gets leases of its own.
	for i, path := range []string{"bob", "alice"} {
		m := askSubnet(t, dev, uint64(10+i), fmt.Sprintf(`{"path":%q}`, path))
		if m.Type != msgSubnet {
			t.Fatalf("%s: %+v", path, m)
		}
	}
	got := owners(t, pool)
	if got["bob"] != "10.88.1.0/24" || got["alice/dev/bob"] == "" || got["alice/dev/alice"] == "" || got["alice/dev/bob"] == got["bob"] {
		t.Errorf("leases after dev claimed bob and alice: %v", got)
	}
	// It releases bob's: only its own below it go.
	askSubnet(t, dev, 12, `{"path":"bob","release":true}`)
	if got := owners(t, pool); got["bob"] != "10.88.1.0/24" {
		t.Errorf("dev released the root's bob: %v", got)
	}
	for i, body := range []string{
		`{"path":""}`, `{"path":"../bob"}`, `{"path":"/bob"}`, `{"path":"bob/"}`, `{"path":"a//b"}`,
		`{"path":"Bob"}`, `{"path":"a b"}`, `{"path":"a/b/c/d/e/f/g/h/i"}`,
		`{"path":1}`, `{"path":"x","owner":"bob"}`, `null`, `[]`,
	} {
		m := askSubnet(t, dev, uint64(20+i), body)
		if m.Type != msgError {
			t.Errorf("subnet %s: %+v, want an error", body, m)
		}
	}
	if !midLog.has("dev: link: subnet request 20 refused") {
		t.Errorf("refusals not logged: %q", midLog.lines)
	}
	// A request without an id is ignored; the link still answers.
	dev.Send(&escalate.Message{Type: msgSubnet, Body: json.RawMessage(`{"path":"x"}`)})
	if m := askSubnet(t, dev, 40, `{"path":"x"}`); m.Type != msgSubnet {
		t.Errorf("after the bad requests: %+v", m)
	}
	if st := root.units["alice"].Status(); st.State != StateRunning {
		t.Errorf("alice is %s", st.State)
	}
}

// TestSubnetQuota: one child of the root and its subtree hold at most
// MaxSubnetsPerChild /24s.
func TestSubnetQuota(t *testing.T) {
	root, _, _, pool, _ := subnetTree(t)
	ctx := context.Background()
	for i := range MaxSubnetsPerChild {
		if _, err := root.descendantSubnet(ctx, fmt.Sprintf("alice/c%d", i), false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.descendantSubnet(ctx, "alice/more", false); err == nil || !strings.Contains(err.Error(), "the most they may") {
		t.Errorf("past the quota: %v", err)
	}
	if _, err := root.descendantSubnet(ctx, "bob", false); err != nil {
		t.Errorf("another child: %v", err)
	}
	if n := len(owners(t, pool)); n != MaxSubnetsPerChild+1 {
		t.Errorf("%d leases", n)
	}
}

// TestSubnetGate: a child's requests are bounded at once and over time.
func TestSubnetGate(t *testing.T) {
	var g subnetGate
	now := time.Now()
	for range subnetsAtOnce {
		if err := g.enter(now); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.enter(now); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Errorf("one more at once: %v", err)
	}
	for range subnetsAtOnce {
		g.leave()
	}
	n := subnetsAtOnce
	for ; n < subnetBurst; n++ {
		if err := g.enter(now); err != nil {
			t.Fatalf("request %d of the burst: %v", n, err)
		}
		g.leave()
	}
	if err := g.enter(now); err == nil || !strings.Contains(err.Error(), "try again later") {
		t.Errorf("past the burst: %v", err)
	}
	if err := g.enter(now.Add(time.Second)); err != nil {
		t.Errorf("a second later: %v", err)
	}
}

// TestSubnetNoSource: an init without a pool or a parent to ask refuses
// its children's requests.
func TestSubnetNoSource(t *testing.T) {
	s, _ := newTestSupervisor(t)
	child := fakeContainer(t, s, "c", config.KindUser)
	if m := askSubnet(t, child, 1, `{"path":"x"}`); m.Type != msgError || !strings.Contains(m.Error, "no subnets to give") {
		t.Errorf("answer %+v", m)
	}
}

// FuzzSubnetRequest: whatever a child sends as a subnet request's body,
// decoding never panics, and a path it takes is names joined by "/".
func FuzzSubnetRequest(f *testing.F) {
	for _, b := range []string{`{"path":"dev"}`, `{"path":"a/b","release":true}`, `{"path":"../x"}`, `{"path":"a//b"}`, `{"path":"\u0000"}`, `[]`, `{"path":"a","path":"b"}`} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		q, err := decodeSubnetRequest(&escalate.Message{Type: msgSubnet, ID: 1, Body: body})
		if err != nil {
			return
		}
		parts := strings.Split(q.Path, "/")
		if len(parts) > MaxTreeDepth {
			t.Fatalf("took %q: too deep", q.Path)
		}
		for _, p := range parts {
			if !config.ValidName(p) {
				t.Fatalf("took %q: %q is no name", q.Path, p)
			}
		}
	})
}
