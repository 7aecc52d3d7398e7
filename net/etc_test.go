package net

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestHostsFile(t *testing.T) {
	got := string(HostsFile([]string{"web", "web", "www"}, netip.MustParseAddr("10.88.0.2"), []Host{
		{"db", netip.MustParseAddr("10.88.0.3")},
		{"box", netip.MustParseAddr("10.88.0.1")},
		{"web", netip.MustParseAddr("10.88.0.9")}, // its own name wins
	}))
	want := "# written by nest for this container\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"10.88.0.2\tweb www\n10.88.0.1\tbox\n10.88.0.3\tdb\n"
	if got != want {
		t.Errorf("HostsFile =\n%s\nwant\n%s", got, want)
	}
}

func TestReadResolvConf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "resolv.conf")
	os.WriteFile(path, []byte("# x\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\nsearch a.example b..bad c.example\noptions edns0\n"), 0o644)
	dns, search, err := ReadResolvConf(path)
	if err != nil || len(dns) != 2 || dns[0].String() != "192.0.2.53" || dns[1].String() != "2001:db8::53" ||
		!slices.Equal(search, []string{"a.example", "c.example"}) {
		t.Errorf("ReadResolvConf = %v, %v, %v", dns, search, err)
	}
	if got := string(ResolvConf(dns, search)); !strings.Contains(got, "search a.example c.example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n") {
		t.Errorf("ResolvConf =\n%s", got)
	}
	if dns, _, err := ReadResolvConf(filepath.Join(t.TempDir(), "none")); err != nil || dns != nil {
		t.Errorf("ReadResolvConf of a missing file = %v, %v", dns, err)
	}
}

func TestConfigCheck(t *testing.T) {
	good := Config{
		Address: netip.MustParsePrefix("10.88.0.2/24"), Gateway: netip.MustParseAddr("10.88.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, Hosts: []Host{{"db", netip.MustParseAddr("10.88.0.3")}},
		Subnet: netip.MustParsePrefix("10.88.1.0/24"),
	}
	b, _ := json.Marshal(good)
	var back Config
	if err := json.Unmarshal(b, &back); err != nil || back.Check() != nil || back.Subnet != good.Subnet {
		t.Fatalf("round trip of %s = %+v, %v, %v", b, back, err, back.Check())
	}
	for _, tc := range []struct {
		change func(*Config)
		err    string
	}{
		{func(c *Config) { c.Address = netip.Prefix{} }, "address"},
		{func(c *Config) { c.Gateway = netip.MustParseAddr("10.89.0.1") }, "gateway"},
		{func(c *Config) { c.Gateway = c.Address.Addr() }, "gateway"},
		{func(c *Config) { c.Hosts = []Host{{"a b", netip.MustParseAddr("10.88.0.3")}} }, "host"},
		{func(c *Config) { c.Hosts = []Host{{"x\n10.0.0.1 evil", netip.MustParseAddr("10.88.0.3")}} }, "host"},
		{func(c *Config) { c.Search = []string{"-x"} }, "search"},
		{func(c *Config) { c.Subnet = netip.MustParsePrefix("10.88.1.1/24") }, "subnet"},
		{func(c *Config) { c.DNS = make([]netip.Addr, 4) }, "more than"},
		{func(c *Config) { c.Hosts = make([]Host, MaxHosts+1) }, "more than"},
	} {
		c := good
		tc.change(&c)
		if err := c.Check(); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Check of %+v = %v, want an error about %s", c, err, tc.err)
		}
	}
}
