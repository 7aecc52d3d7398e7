package config

import (
	"net/netip"
	"reflect"
	"testing"
)

func TestParseNetwork(t *testing.T) {
	c, err := Parse("t.toml", []byte(`subnet = "10.77.0.0/16"

[container.web]
kind    = "daemon"
exec    = ["/httpd"]
network = "veth"
address = "10.77.0.7"
publish = ["8080:80", "5353:53/udp"]
dns     = ["192.0.2.53", "2001:db8::53"]

[container.db]
kind    = "daemon"
exec    = ["/db"]
network = "veth"
nat     = false

[container.box]
kind    = "user"
network = "veth"

[container.box.container.inner]
kind    = "daemon"
exec    = ["/inner"]
network = "veth"
address = "10.77.3.7"
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Pool().String() != "10.77.0.0/16" || c.BridgeSubnet().String() != "10.77.0.0/24" {
		t.Errorf("Pool, BridgeSubnet = %s, %s", c.Pool(), c.BridgeSubnet())
	}
	web, db := c.Containers[0], c.Containers[1]
	if web.Network != NetworkVeth || web.Address != netip.MustParseAddr("10.77.0.7") || !web.NAT ||
		!reflect.DeepEqual(web.Publish, []Publish{{8080, 80, "tcp"}, {5353, 53, "udp"}}) ||
		!reflect.DeepEqual(web.DNS, []netip.Addr{netip.MustParseAddr("192.0.2.53"), netip.MustParseAddr("2001:db8::53")}) {
		t.Errorf("web = %+v", web)
	}
	if db.NAT || db.Address.IsValid() || db.Publish != nil || db.DNS != nil {
		t.Errorf("db = %+v: want nat off, no address, ports or dns", db)
	}
	// A child's child: its address is checked by the init that starts it.
	if in := c.Containers[2].Containers[0]; in.Address != netip.MustParseAddr("10.77.3.7") {
		t.Errorf("box/inner = %+v", in)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate() = %v", err)
	}
	if c, _ := Parse("t.toml", nil); c.Pool() != DefaultSubnet || c.BridgeSubnet().String() != "10.88.0.0/24" {
		t.Errorf("default pool %s, bridge %s", c.Pool(), c.BridgeSubnet())
	}
}

func TestParsePublish(t *testing.T) {
	for s, want := range map[string]Publish{
		"8080:80":      {8080, 80, "tcp"},
		"8080:80/tcp":  {8080, 80, "tcp"},
		"53:53/udp":    {53, 53, "udp"},
		"65535:1":      {65535, 1, "tcp"},
		"80":           {},
		"80:":          {},
		":80":          {},
		"080:80":       {},
		"+80:80":       {},
		"80:80/":       {},
		"80:80/UDP":    {},
		"80:80:80":     {},
		"1.2.3.4:80:8": {},
	} {
		got, err := ParsePublish(s)
		if (err == nil) != (want != Publish{}) || got != want {
			t.Errorf("ParsePublish(%q) = %v, %v; want %v", s, got, err, want)
		}
	}
}

func TestErrorf(t *testing.T) {
	c, err := Parse("t.toml", []byte("subnet = \"10.77.0.0/16\"\n[container.web]\nkind = \"daemon\"\nexec = [\"/web\"]\nnetwork = \"veth\"\npublish = [\"80:80\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Containers[0].Errorf("publish", "port %d is taken", 80).Error(); got != `t.toml:6:11: container "web": port 80 is taken` {
		t.Errorf("Container.Errorf = %s", got)
	}
	if got := c.Errorf("subnet", "overlaps %s", "x").Error(); got != `t.toml:1:10: overlaps x` {
		t.Errorf("Config.Errorf = %s", got)
	}
	if got := Default().Errorf("subnet", "overlaps").Error(); got != "built-in: overlaps" {
		t.Errorf("Config.Errorf of the built-in config = %s", got)
	}
}
