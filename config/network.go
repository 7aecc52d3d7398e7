package config

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultSubnet is the pool of addresses the root init hands out when its
// config has no subnet: its own bridge takes the first /24, each child
// init with veth children of its own a further /24.
var DefaultSubnet = netip.MustParsePrefix("10.88.0.0/16")

// Bounds of the network keys.
const (
	MinSubnetBits = 8  // subnet: a /8 at most
	MaxSubnetBits = 24 // and a /24 at least: one init's bridge
	MaxDNS        = 3  // dns: what the resolver reads
)

// Publish is one published port of a veth container: Host on the
// parent's addresses and loopback goes to Container on the container's.
type Publish struct {
	Host      uint16 `json:"host"`
	Container uint16 `json:"container"`
	Proto     string `json:"proto"` // "tcp" or "udp"
}

func (p Publish) String() string {
	return fmt.Sprintf("%d:%d/%s", p.Host, p.Container, p.Proto)
}

// ParsePublish reads "HOST:CONTAINER" or "HOST:CONTAINER/PROTO" (PROTO tcp,
// the default, or udp), ports 1 to 65535.
func ParsePublish(s string) (Publish, error) {
	spec, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		proto = "tcp"
	}
	host, ctr, ok := strings.Cut(spec, ":")
	bad := fmt.Errorf(`want "HOST:CONTAINER" or "HOST:CONTAINER/udp", ports 1 to 65535, like "8080:80" or "5353:53/udp"`)
	if !ok || (proto != "tcp" && proto != "udp") {
		return Publish{}, bad
	}
	port := func(s string) (uint16, bool) {
		n, err := strconv.ParseUint(s, 10, 16)
		return uint16(n), err == nil && n > 0 && s[0] != '+' && s[0] != '0'
	}
	h, okH := port(host)
	c, okC := port(ctr)
	if !okH || !okC {
		return Publish{}, bad
	}
	return Publish{Host: h, Container: c, Proto: proto}, nil
}

// BridgeSubnet is the /24 of the bridge of the init whose pool is subnet
// (the root's, or nest up's): its first /24.
func BridgeSubnet(subnet netip.Prefix) netip.Prefix {
	return netip.PrefixFrom(subnet.Addr(), MaxSubnetBits)
}

// subnet reads the top-level subnet.
func (d *decoder) subnet(p path, v any) netip.Prefix {
	s, ok := d.str("", p, "subnet", v)
	if !ok {
		return netip.Prefix{}
	}
	pfx, err := netip.ParsePrefix(s)
	switch {
	case err != nil || !pfx.Addr().Is4():
		d.val([]path{p}, `subnet = %s: want an IPv4 prefix, like "10.88.0.0/16"`, render(v))
	case pfx.Masked() != pfx:
		d.val([]path{p}, "subnet = %s: want the network's own address: %s", render(v), strconv.Quote(pfx.Masked().String()))
	case pfx.Bits() < MinSubnetBits || pfx.Bits() > MaxSubnetBits:
		d.val([]path{p}, "subnet = %s: want a prefix from /%d to /%d (each init's bridge takes a /24)", render(v), MinSubnetBits, MaxSubnetBits)
	default:
		return pfx
	}
	return netip.Prefix{}
}

// networkKey reads one of a container's network keys besides network.
func (d *decoder) networkKey(ctx string, p path, k string, v any, c *Container, natSet *bool) {
	switch k {
	case "address":
		if s, ok := d.str(ctx, p, k, v); ok {
			a, err := netip.ParseAddr(s)
			if err != nil || !a.Is4() {
				d.val([]path{p}, `%saddress = %s: want an IPv4 address, like "10.88.0.7"`, ctx, render(v))
				return
			}
			c.Address = a
		}
	case "nat":
		c.NAT, *natSet = d.bool(ctx, p, k, v)
	case "publish":
		list, ok := d.strs(ctx, p, k, v)
		if !ok {
			return
		}
		c.Publish = make([]Publish, 0, len(list))
		for i, s := range list {
			pub, err := ParsePublish(s)
			if err != nil {
				d.val([]path{p.idx(i)}, "%spublish[%d] = %s: %v", ctx, i, strconv.Quote(s), err)
				continue
			}
			c.Publish = append(c.Publish, pub)
		}
	case "dns":
		list, ok := d.strs(ctx, p, k, v)
		if !ok {
			return
		}
		c.DNS = make([]netip.Addr, 0, len(list))
		for i, s := range list {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" {
				d.val([]path{p.idx(i)}, `%sdns[%d] = %s: want the IP address of a nameserver, like "192.0.2.53"`, ctx, i, strconv.Quote(s))
				continue
			}
			c.DNS = append(c.DNS, a)
		}
	}
}

// validateNetwork checks a container's network keys on their own; the
// level checks addresses and ports among siblings (checkNetworkLevel).
func (c *Container) validateNetwork(v *problems, ctx string) {
	p := c.at
	switch c.Network {
	case NetworkNone, NetworkHost, NetworkVeth:
	default:
		v.val([]path{p.key("network"), p}, `%snetwork = %s: want "none" (only lo), "host" (the parent's network) or "veth" (its own address on the parent's bridge)`, ctx, strconv.Quote(c.Network))
		return
	}
	if c.Network != NetworkVeth {
		for _, k := range []struct {
			key string
			set bool
		}{{"address", c.Address.IsValid()}, {"nat", c.NAT}, {"publish", len(c.Publish) > 0}, {"dns", c.DNS != nil}} {
			if k.set {
				v.key([]path{p.key(k.key), p}, `%s%s: only a container with network = "veth" has it; set network = "veth", or leave %s out`, ctx, k.key, k.key)
			}
		}
		return
	}
	if a := c.Address; a.IsValid() {
		switch b := a.As4(); {
		case b[3] == 0 || b[3] == 255:
			v.val([]path{p.key("address")}, "%saddress = %s: the network or broadcast address of its /24; pick another", ctx, strconv.Quote(a.String()))
		case b[3] == 1:
			v.val([]path{p.key("address")}, "%saddress = %s: the parent's bridge has .1 of its /24; pick another", ctx, strconv.Quote(a.String()))
		}
	}
	seen := map[string]int{}
	for i, pub := range c.Publish {
		k := fmt.Sprintf("%d/%s", pub.Host, pub.Proto)
		if j, dup := seen[k]; dup {
			v.val([]path{p.key("publish").idx(i)}, "%spublish[%d] = %s: port %s is already published by publish[%d]", ctx, i, strconv.Quote(pub.String()), k, j)
		}
		seen[k] = i
	}
	if len(c.DNS) > MaxDNS {
		v.val([]path{p.key("dns").idx(MaxDNS), p.key("dns")}, "%sdns: %d nameservers; the resolver reads at most %d", ctx, len(c.DNS), MaxDNS)
	}
}

// checkNetworkLevel checks what the veth containers of one init share: an
// address or a published port is one container's. bridge is the init's
// own /24 when it is known (the root's and nest up's), to check pinned
// addresses against; the zero Prefix otherwise (a child's children: their
// init learns its /24 when it starts).
func checkNetworkLevel(v *problems, parent *Container, containers []Container, bridge netip.Prefix) {
	addrs := map[netip.Addr]*Container{}
	ports := map[string]*Container{}
	for i := range containers {
		c := &containers[i]
		if c.Network != NetworkVeth {
			continue
		}
		cv := v.in(c.File, c.ix)
		ctx := containerContext(c.display())
		if parent != nil && parent.Network != NetworkVeth {
			cv.val([]path{c.at.key("network"), c.at}, `%snetwork = "veth" needs a bridge in %s, which has network = %s; set network = "veth" on %s`,
				ctx, strconv.Quote(parent.display()), strconv.Quote(parent.Network), strconv.Quote(parent.display()))
		}
		if a := c.Address; a.IsValid() {
			if bridge.IsValid() && !bridge.Contains(a) {
				cv.val([]path{c.at.key("address")}, "%saddress = %s: outside this init's bridge %s; pick an address in it", ctx, strconv.Quote(a.String()), bridge)
			} else if o, dup := addrs[a]; dup {
				cv.val([]path{c.at.key("address")}, "%saddress = %s: already the address of container %s", ctx, strconv.Quote(a.String()), strconv.Quote(o.Name))
			}
			addrs[a] = c
		}
		for j, pub := range c.Publish {
			k := fmt.Sprintf("%d/%s", pub.Host, pub.Proto)
			if o, dup := ports[k]; dup && o != c {
				cv.val([]path{c.at.key("publish").idx(j)}, "%spublish[%d] = %s: port %s is already published by container %s", ctx, j, strconv.Quote(pub.String()), k, strconv.Quote(o.Name))
			}
			ports[k] = c
		}
	}
}

// Errorf makes an error about the container's key, placed at FILE:LINE:COL
// of that key when the container was parsed from a file: for what only
// starting it finds wrong (a port taken, an address outside its init's
// bridge).
func (c *Container) Errorf(key string, format string, args ...any) error {
	v := &problems{file: c.File, ix: c.ix}
	v.val([]path{c.at.key(key), c.at}, "%s%s", containerContext(c.display()), fmt.Sprintf(format, args...))
	return v.err()
}

// Errorf makes an error about a top-level key of the config, placed at
// its FILE:LINE:COL when the config was parsed from a file.
func (c *Config) Errorf(key string, format string, args ...any) error {
	v := &problems{file: c.Source, ix: c.ix}
	v.val([]path{path("").key(key)}, format, args...)
	return v.err()
}
