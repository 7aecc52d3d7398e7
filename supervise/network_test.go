package supervise

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"nest/escalate"
	nestnet "nest/net"
)

// TestLinkHosts: a child init takes the parent's hosts messages, and
// ignores one it cannot trust.
func TestLinkHosts(t *testing.T) {
	s, _ := newTestSupervisor(t)
	parent, child, err := escalate.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	got := make(chan []nestnet.Host, 4)
	var logged strings.Builder
	logs := make(chan string, 4)
	p := NewParentLink(child)
	p.OnHosts = func(h []nestnet.Host) { got <- h }
	done := make(chan error, 1)
	go func() {
		done <- p.Serve(s, func(string) {}, func(f string, a ...any) { logs <- f })
	}()
	for _, body := range []string{
		`{"hosts":[{"name":"db","address":"10.88.0.3"}]}`,
		`{"hosts":[{"name":"evil\n10.0.0.1 bank","address":"10.88.0.3"}]}`,
		`{"hosts":[{"name":"x","address":"fe80::1"}]}`,
		`{"hosts":[],"more":1}`,
	} {
		if err := parent.Send(&escalate.Message{Type: msgHosts, Body: json.RawMessage(body)}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case h := <-got:
		if len(h) != 1 || h[0].Name != "db" || h[0].Address != netip.MustParseAddr("10.88.0.3") {
			t.Errorf("hosts = %+v", h)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no hosts")
	}
	for range 3 {
		select {
		case f := <-logs:
			logged.WriteString(f)
		case <-time.After(5 * time.Second):
			t.Fatalf("a bad hosts message was not reported; logged %q", logged.String())
		}
	}
	select {
	case h := <-got:
		t.Errorf("a bad hosts message was applied: %+v", h)
	default:
	}
	parent.Close()
	<-done
}

// TestCleanAddress: an address a child reports is shown only when it is
// one.
func TestCleanAddress(t *testing.T) {
	for in, want := range map[string]string{
		"10.88.0.2/24": "10.88.0.2/24",
		"10.88.0.2":    "",
		"\x1b[2J":      "",
		"fd00::1/64":   "",
	} {
		if got := cleanStatus(Status{Address: in}).Address; got != want {
			t.Errorf("cleanStatus(address %q) = %q, want %q", in, got, want)
		}
	}
}

// TestReceiveNet: the net message a veth container's init waits for.
func TestReceiveNet(t *testing.T) {
	for _, tc := range []struct {
		m   *escalate.Message
		err string
	}{
		{&escalate.Message{Type: msgNet, Body: json.RawMessage(`{"address":"10.88.0.2/24","gateway":"10.88.0.1","subnet":"10.88.1.0/24"}`)}, ""},
		{&escalate.Message{Type: msgSpec, Body: json.RawMessage(`{}`)}, `want a net message, got "spec"`},
		{&escalate.Message{Type: msgNet, Body: json.RawMessage(`{"address":"10.88.0.2/24","gateway":"10.99.0.1"}`)}, "gateway"},
		{&escalate.Message{Type: msgNet, Body: json.RawMessage(`{"address":"10.88.0.2/24","gateway":"10.88.0.1","x":1}`)}, "unknown field"},
	} {
		parent, child, err := escalate.Pair()
		if err != nil {
			t.Fatal(err)
		}
		parent.Send(tc.m)
		cfg, err := ReceiveNet(child)
		switch {
		case tc.err == "" && (err != nil || cfg.Subnet.String() != "10.88.1.0/24"):
			t.Errorf("ReceiveNet(%s) = %+v, %v", tc.m.Body, cfg, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ReceiveNet(%s %s) = %v, want an error with %q", tc.m.Type, tc.m.Body, err, tc.err)
		}
		parent.Close()
		child.Close()
	}
}

// TestReleaseRemoved: a container that leaves the config gives back its
// address and subnet, though no bridge was made in this run; one that
// stays keeps them.
func TestReleaseRemoved(t *testing.T) {
	s, _ := newTestSupervisor(t)
	dir := t.TempDir()
	s.opts.Net = &NetOptions{Subnet: netip.MustParsePrefix("10.88.0.0/24"), Pool: netip.MustParsePrefix("10.88.0.0/16"), StateDir: dir}
	os.WriteFile(filepath.Join(dir, "addresses"), []byte("10.88.0.5 gone\n10.88.0.6 kept\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "subnets"), []byte("10.88.1.0/24 gone\n"), 0o600)
	fakeContainer(t, s, "gone", "user")
	fakeContainer(t, s, "kept", "daemon")
	kept := s.units["kept"].spec
	s.Apply([]Spec{kept})
	if b, _ := os.ReadFile(filepath.Join(dir, "addresses")); !strings.Contains(string(b), "10.88.0.6 kept") || strings.Contains(string(b), "gone") {
		t.Errorf("addresses after gone left:\n%s", b)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "subnets")); strings.Contains(string(b), "gone") {
		t.Errorf("subnets after gone left:\n%s", b)
	}
}
