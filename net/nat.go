package net

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Kernel features used here (modules on Debian's kernel): nf_tables with
// nat chains (nft_chain_nat), dnat (nft_nat), masquerade (nft_masq), fib
// (nft_fib_ipv4) and ct (nft_ct).

// TableName is the nftables table (family ip) an init owns in its network
// namespace. Nothing else of the ruleset is touched.
const TableName = "nest"

// tagPrefix starts the comment of a container's rules: "nest:NAME".
const tagPrefix = "nest:"

// nat is the table of one bridge:
//
//	table ip nest {
//	  chain guard { type filter hook prerouting priority raw
//	    iifname "nest0" ip daddr 127.0.0.0/8 drop
//	    iifname "nest0" ip saddr 127.0.0.0/8 drop }
//	  chain prerouting { type nat hook prerouting priority dstnat
//	    fib daddr type local tcp dport 8080 dnat to 10.88.0.2:80   # publish, per container
//	  chain output { type nat hook output priority dstnat
//	    (the same publish rules: connections from this namespace, loopback included)
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    oifname "nest0" ip saddr 127.0.0.0/8 masquerade            # loopback → container
//	    oifname "nest0" ip saddr 10.88.0.0/24 ct status dnat masquerade  # hairpin
//	    ip saddr 10.88.0.2 oifname != "nest0" masquerade           # nat, per container
//	}
//
// Reaching a published port on 127.0.0.1 needs route_localnet on the bridge
// (docs/decisions.md); the guard chain drops what route_localnet would
// otherwise let a container send to this namespace's loopback
// (CVE-2020-8558).
type nat struct {
	conn   *nftables.Conn
	table  *nftables.Table
	chains []*nftables.Chain // guard, prerouting, output, postrouting
	bridge string
	subnet netip.Prefix
}

const (
	chainGuard = iota
	chainPre
	chainOut
	chainPost
)

// Port is one published port: Host on the parent's addresses (and
// loopback) forwarded to Container on the container's address.
type Port struct {
	Host      uint16
	Container uint16
	Proto     string // "tcp" or "udp"
}

func (p Port) String() string { return fmt.Sprintf("%d:%d/%s", p.Host, p.Container, p.Proto) }

func (p Port) protoNum() byte {
	if p.Proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

// newNAT replaces any table of TableName with a fresh one for bridge.
func newNAT(conn *nftables.Conn, bridge string, subnet netip.Prefix) (*nat, error) {
	t := &nat{conn: conn, bridge: bridge, subnet: subnet}
	if old, err := conn.ListTableOfFamily(TableName, nftables.TableFamilyIPv4); err == nil && old != nil {
		conn.DelTable(old)
	}
	t.table = conn.AddTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4})
	accept := nftables.ChainPolicyAccept
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return conn.AddChain(&nftables.Chain{Name: name, Table: t.table, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
	}
	t.chains = []*nftables.Chain{
		base("guard", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw),
		base("prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest),
		base("output", nftables.ChainTypeNAT, nftables.ChainHookOutput, nftables.ChainPriorityNATDest),
		base("postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource),
	}
	loopback := netip.MustParsePrefix("127.0.0.0/8")
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	t.rule(chainGuard, "", join(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ipMatch(16, loopback), drop))
	t.rule(chainGuard, "", join(ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, bridge), ipMatch(12, loopback), drop))
	masq := &expr.Masq{}
	t.rule(chainPost, "", join(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ipMatch(12, loopback), masq))
	t.rule(chainPost, "", join(ifname(expr.MetaKeyOIFNAME, expr.CmpOpEq, bridge), ipMatch(12, subnet), ctDNAT(), masq))
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	return t, nil
}

// add adds the rules of one container: masquerade of what it sends out
// (masq), and its published ports.
func (t *nat) add(name string, addr netip.Addr, masq bool, ports []Port) error {
	tag := tagPrefix + name
	if masq {
		t.rule(chainPost, tag, join(ipMatch(12, netip.PrefixFrom(addr, 32)), ifname(expr.MetaKeyOIFNAME, expr.CmpOpNeq, t.bridge), &expr.Masq{}))
	}
	for _, p := range ports {
		dnat := join(
			[]expr.Any{
				&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{p.protoNum()}},
				&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(p.Host)},
				&expr.Immediate{Register: 1, Data: addr.AsSlice()},
				&expr.Immediate{Register: 2, Data: binaryutil.BigEndian.PutUint16(p.Container)},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
			})
		t.rule(chainPre, tag, dnat)
		t.rule(chainOut, tag, dnat)
	}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("nftables rules of %s: %w", name, err)
	}
	return nil
}

// remove deletes every rule of the container name.
func (t *nat) remove(name string) error {
	tag := tagPrefix + name
	n := 0
	for _, c := range t.chains {
		rules, err := t.conn.GetRules(t.table, c)
		if err != nil {
			return fmt.Errorf("nftables rules of %s: %w", name, err)
		}
		for _, r := range rules {
			if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); c == tag {
				if err := t.conn.DelRule(r); err != nil {
					return fmt.Errorf("nftables rules of %s: %w", name, err)
				}
				n++
			}
		}
	}
	if n == 0 {
		return nil
	}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("nftables rules of %s: %w", name, err)
	}
	return nil
}

// count returns how many rules carry the tag of name ("" counts all).
func (t *nat) count(name string) (int, error) {
	n := 0
	for _, c := range t.chains {
		rules, err := t.conn.GetRules(t.table, c)
		if err != nil {
			return 0, err
		}
		for _, r := range rules {
			if c, _ := userdata.GetString(r.UserData, userdata.TypeComment); name == "" || c == tagPrefix+name {
				n++
			}
		}
	}
	return n, nil
}

// close deletes the table and everything in it.
func (t *nat) close() error {
	t.conn.DelTable(t.table)
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("nftables table %s: %w", TableName, err)
	}
	return nil
}

func (t *nat) rule(chain int, tag string, exprs []expr.Any) {
	r := &nftables.Rule{Table: t.table, Chain: t.chains[chain], Exprs: exprs}
	if tag != "" {
		r.UserData = userdata.AppendString(nil, userdata.TypeComment, tag)
	}
	t.conn.AddRule(r)
}

func join(parts ...any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		switch p := p.(type) {
		case []expr.Any:
			out = append(out, p...)
		case expr.Any:
			out = append(out, p)
		}
	}
	return out
}

// ifname matches the input or output interface name.
func ifname(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: b},
	}
}

// ipMatch matches the IPv4 source (offset 12) or destination (16) address
// against a prefix.
func ipMatch(offset uint32, p netip.Prefix) []expr.Any {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4}
	cmp := &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p.Masked().Addr().AsSlice()}
	if p.Bits() == 32 {
		return []expr.Any{load, cmp}
	}
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{load, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)}, cmp}
}

// ipsDstNAT is IPS_DST_NAT of linux/netfilter/nf_conntrack_common.h.
const ipsDstNAT = 1 << 5

// ctDNAT matches connections whose destination was rewritten.
func ctDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
	}
}
