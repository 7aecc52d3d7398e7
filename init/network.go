package main

import (
	"errors"
	"io/fs"
	"sync"

	"nest/config"
	"nest/escalate"
	"nest/mounts"
	nestnet "nest/net"
	"nest/supervise"
)

// netModules are the kernel modules of veth networks: the bridge and the
// pairs, and the nftables parts of NAT and published ports. The root init
// loads them when the first veth container starts; its children's inits
// cannot load modules and need none of their own.
var netModules = []string{"veth", "bridge", "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"}

// rootNetOptions are the network options of an init that owns its pool
// (the root, nest up): its bridge on the first /24 of cfg's subnet, the
// rest for child inits, leases in nestnet.DefaultStateDir. load, when set,
// loads netModules.
func rootNetOptions(cfg *config.Config, load func([]string)) *supervise.NetOptions {
	return &supervise.NetOptions{
		Subnet:   cfg.BridgeSubnet(),
		Pool:     cfg.Pool(),
		StateDir: nestnet.DefaultStateDir,
		Place: func(err error) error {
			return cfg.Errorf("subnet", "subnet = %q: %v", cfg.Pool().String(), err)
		},
		Prepare: func() {
			if load != nil {
				load(netModules)
			}
		},
	}
}

// childNet is the network a veth container's parent gave its init: eth0
// is configured already; the init writes its own /etc/hosts and
// /etc/resolv.conf from it, keeps the hosts current, and makes a bridge
// of its own on the subnet it got, if it got one.
type childNet struct {
	c     config.Container
	cfg   *nestnet.Config
	mu    sync.Mutex
	files *mounts.Files
}

// receiveChildNet reads the net message that follows the spec of a veth
// container; nil for other containers.
func receiveChildNet(c config.Container, link *escalate.Conn) (*childNet, error) {
	if c.Network != config.NetworkVeth {
		return nil, nil
	}
	cfg, err := supervise.ReceiveNet(link)
	if err != nil {
		return nil, err
	}
	return &childNet{c: c, cfg: cfg}, nil
}

// writeEtc covers /etc/hosts and /etc/resolv.conf of the built root with
// the generated ones.
func (n *childNet) writeEtc(logf func(string, ...any)) error {
	if n == nil {
		return nil
	}
	f, err := mounts.NewFiles()
	if err != nil {
		return err
	}
	n.files = f
	if err := f.Write("resolv.conf", nestnet.ResolvConf(n.cfg.DNS, n.cfg.Search)); err != nil {
		return err
	}
	if err := f.Write("hosts", n.hostsFile(n.cfg.Hosts)); err != nil {
		return err
	}
	err = f.Bind("/tmp", map[string]string{"hosts": "/etc/hosts", "resolv.conf": "/etc/resolv.conf"})
	if errors.Is(err, fs.ErrNotExist) {
		// A root without them resolves nothing by name either way; say
		// so in the container's log and go on.
		logf("%v (create it in the root for names to resolve)", err)
		return nil
	}
	return err
}

func (n *childNet) hostsFile(hosts []nestnet.Host) []byte {
	return nestnet.HostsFile([]string{n.c.Hostname, n.c.Name}, n.cfg.Address.Addr(), hosts)
}

// updateHosts rewrites /etc/hosts with the siblings the parent reports.
func (n *childNet) updateHosts(logf func(string, ...any)) func([]nestnet.Host) {
	return func(hosts []nestnet.Host) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if err := n.files.Write("hosts", n.hostsFile(hosts)); err != nil {
			logf("%v", err)
		}
	}
}

// netOptions are the network options of this init's own supervisor: a
// bridge on the subnet the parent gave it, if it gave one, and the
// subnets of its own children that may nest from up, through the parent.
func (n *childNet) netOptions(up supervise.SubnetSource) *supervise.NetOptions {
	if n == nil || !n.cfg.Subnet.IsValid() {
		return nil
	}
	return &supervise.NetOptions{Subnet: n.cfg.Subnet, StateDir: nestnet.DefaultStateDir, Upstream: up}
}
