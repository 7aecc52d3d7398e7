package net

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// Config is what a parent tells the init of a veth container over the
// link before the container's first process runs: its address (already
// on its eth0), and what its init writes into its own /etc.
type Config struct {
	Address netip.Prefix `json:"address"` // on eth0, with the bridge's prefix length
	Gateway netip.Addr   `json:"gateway"` // the parent's bridge: the default route
	DNS     []netip.Addr `json:"dns,omitempty"`
	Search  []string     `json:"search,omitempty"`
	// Hosts are the names the container resolves besides its own: its
	// siblings on the bridge and the parent (at the gateway).
	Hosts []Host `json:"hosts,omitempty"`
	// Subnet is the container's own /24 for a bridge of its own children;
	// absent when it may have none.
	Subnet netip.Prefix `json:"subnet,omitzero"`
}

// Host is one line of /etc/hosts.
type Host struct {
	Name    string     `json:"name"`
	Address netip.Addr `json:"address"`
}

// Bounds of what a Config may hold.
const (
	MaxDNS    = 3 // what the resolver reads (MAXNS)
	MaxSearch = 6
	MaxHosts  = 4096
)

// Check says what is wrong with a Config a parent sent, or nil.
func (c *Config) Check() error {
	switch {
	case !c.Address.IsValid() || !c.Address.Addr().Is4() || c.Address.Bits() == 32:
		return fmt.Errorf("address %s: want an IPv4 address with its prefix length", c.Address)
	case !c.Gateway.Is4() || !c.Address.Contains(c.Gateway) || c.Gateway == c.Address.Addr():
		return fmt.Errorf("gateway %s: want another address of %s", c.Gateway, c.Address.Masked())
	case len(c.DNS) > MaxDNS || len(c.Search) > MaxSearch:
		return fmt.Errorf("more than %d nameservers or %d search domains", MaxDNS, MaxSearch)
	case c.Subnet.IsValid() && (!c.Subnet.Addr().Is4() || c.Subnet.Masked() != c.Subnet || c.Subnet.Bits() > 30):
		return fmt.Errorf("subnet %s: want an IPv4 network prefix of /30 or larger", c.Subnet)
	}
	for _, d := range c.DNS {
		if !d.IsValid() || d.Zone() != "" {
			return fmt.Errorf("nameserver %s: want an IP address", d)
		}
	}
	for _, s := range c.Search {
		if !validDomain(s) {
			return fmt.Errorf("search domain %q: want a domain name", s)
		}
	}
	return CheckHosts(c.Hosts)
}

// CheckHosts says what is wrong with a list of hosts a parent sent, or
// nil: each a host name and an IPv4 address, at most MaxHosts.
func CheckHosts(hosts []Host) error {
	if len(hosts) > MaxHosts {
		return fmt.Errorf("%d hosts, more than %d", len(hosts), MaxHosts)
	}
	for _, h := range hosts {
		if !validDomain(h.Name) || !h.Address.Is4() {
			return fmt.Errorf("host %q %s: want a host name and an IPv4 address", h.Name, h.Address)
		}
	}
	return nil
}

// validDomain reports whether s is a host or domain name: letters, digits,
// '-' and '.', at most 253 bytes.
func validDomain(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// HostsFile is a container's /etc/hosts: loopback, its own names at its
// address, then hosts (its siblings and the parent), each name once.
func HostsFile(names []string, self netip.Addr, hosts []Host) []byte {
	var b bytes.Buffer
	b.WriteString("# written by nest for this container\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	seen := map[string]bool{"localhost": true}
	var own []string
	for _, n := range names {
		if n != "" && !seen[n] {
			seen[n] = true
			own = append(own, n)
		}
	}
	if self.IsValid() && len(own) > 0 {
		fmt.Fprintf(&b, "%s\t%s\n", self, strings.Join(own, " "))
	}
	sorted := slices.Clone(hosts)
	slices.SortStableFunc(sorted, func(a, b Host) int { return strings.Compare(a.Name, b.Name) })
	for _, h := range sorted {
		if seen[h.Name] {
			continue
		}
		seen[h.Name] = true
		fmt.Fprintf(&b, "%s\t%s\n", h.Address, h.Name)
	}
	return b.Bytes()
}

// ResolvConf is a container's /etc/resolv.conf.
func ResolvConf(dns []netip.Addr, search []string) []byte {
	var b bytes.Buffer
	b.WriteString("# written by nest for this container\n")
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, d := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", d)
	}
	return b.Bytes()
}

// ReadResolvConf reads the nameservers and search domains of a
// resolv.conf for a container: loopback nameservers (a local stub such as
// systemd-resolved's 127.0.0.53) are left out, since a container's
// loopback is its own. A missing file has none.
func ReadResolvConf(path string) (dns []netip.Addr, search []string, err error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0][0] == '#' || f[0][0] == ';' {
			continue
		}
		switch f[0] {
		case "nameserver":
			a, err := netip.ParseAddr(f[1])
			if err == nil && !a.IsLoopback() && a.Zone() == "" && len(dns) < MaxDNS {
				dns = append(dns, a)
			}
		case "search", "domain":
			search = search[:0]
			for _, d := range f[1:] {
				if validDomain(d) && len(search) < MaxSearch {
					search = append(search, d)
				}
			}
		}
	}
	return dns, search, sc.Err()
}
