package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"nest/config"
	"nest/escalate"
	nestnet "nest/net"
)

// Link messages of veth containers (escalate.Types).
const (
	msgNet   = "net"   // parent → child init, once, right after the spec: a nestnet.Config
	msgHosts = "hosts" // parent → child init: its siblings changed, a HostsBody
)

// HostsBody is the body of a hosts message: the names the container
// resolves besides its own.
type HostsBody struct {
	Hosts []nestnet.Host `json:"hosts"`
}

// NetOptions is how an init gives its veth children their network.
type NetOptions struct {
	// Subnet is this init's /24, its bridge's: the first /24 of the
	// root's pool, or what a child init's parent sent it.
	Subnet netip.Prefix
	// Pool is where child inits get a /24 of their own from: the root's
	// subnet. The zero Prefix: this init owns none (see Upstream).
	Pool netip.Prefix
	// Upstream, where there is no Pool, is where this init gets the /24s
	// of its children that may nest: its parent, which asks its own, up
	// to the root (subnets.go). nil: it gives them none.
	Upstream SubnetSource
	// StateDir holds the lease files; one that cannot be written keeps
	// the leases in memory.
	StateDir string
	// ResolvConf is where containers without dns get their nameservers
	// (default /etc/resolv.conf).
	ResolvConf string
	// Place gives an error of making the bridge the place in the config it
	// comes from (subnet's FILE:LINE:COL); nil leaves it as it is.
	Place func(error) error
	// Prepare, when set, runs once before the bridge is made (the root
	// loads the kernel modules of networks).
	Prepare func()
}

// netState is a supervisor's bridge, made when the first veth container
// starts, and the links of the containers on it (for hosts updates).
type netState struct {
	mu      sync.Mutex
	net     *nestnet.Network
	subnets *nestnet.Pool
	runs    map[string]*containerRun
}

// network returns the bridge, making it the first time.
func (s *Supervisor) network() (*nestnet.Network, error) {
	opts := s.opts.Net
	if opts == nil || !opts.Subnet.IsValid() {
		return nil, errors.New(`network = "veth": this init has no subnet for a bridge (a child init gets one only with network = "veth" and nesting)`)
	}
	st := &s.netState
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.net != nil {
		return st.net, nil
	}
	if opts.Prepare != nil {
		opts.Prepare()
	}
	leases := ""
	if opts.StateDir != "" {
		if err := os.MkdirAll(opts.StateDir, 0o700); err == nil {
			leases = nestnet.StateFile(opts.StateDir)
		} else {
			s.logf("network: %v: addresses are kept in memory only", err)
		}
	}
	n, err := nestnet.Open(nestnet.Options{Subnet: opts.Subnet, Leases: leases})
	if err != nil {
		if opts.Place != nil {
			err = opts.Place(err)
		}
		return nil, err
	}
	st.net, st.runs = n, make(map[string]*containerRun)
	return n, nil
}

// subnets is the pool child inits get their /24 from; nil where this init
// has none to give.
func (s *Supervisor) subnets() *nestnet.Pool {
	opts := s.opts.Net
	if opts == nil || !opts.Pool.IsValid() {
		return nil
	}
	st := &s.netState
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.subnets == nil {
		path := ""
		if opts.StateDir != "" && os.MkdirAll(opts.StateDir, 0o700) == nil {
			path = filepath.Join(opts.StateDir, "subnets")
		}
		st.subnets = &nestnet.Pool{Prefix: opts.Pool, Bits: 24, Path: path, Reserved: []netip.Prefix{opts.Subnet}}
	}
	return st.subnets
}

// attachNetwork gives a veth container its eth0 while its init waits for
// the net message, then sends that: its address, its resolvers, its
// siblings, and a /24 of its own if it may nest. On error nothing of the
// attachment is left but its lease.
func (u *Unit) attachNetwork(proc *Process, run *containerRun) (err error) {
	c := u.spec.Container
	s := u.sup
	n, err := s.network()
	if err != nil {
		return err
	}
	ns, err := nestnet.OpenNetNS(proc.Pid, func() bool { return proc.Signal(0) == nil })
	if err != nil {
		return err
	}
	defer ns.Close()
	ports := make([]nestnet.Port, len(c.Publish))
	for i, p := range c.Publish {
		ports[i] = nestnet.Port{Host: p.Host, Container: p.Container, Proto: p.Proto}
	}
	a, err := n.Attach(nestnet.Endpoint{Name: c.Name, NetNS: ns, Address: c.Address, NAT: c.NAT, Publish: ports})
	var ke *nestnet.KeyError
	if errors.As(err, &ke) {
		return c.Errorf(ke.Key, "%v", err)
	}
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			n.Detach(c.Name)
		}
	}()

	cfg := nestnet.Config{Address: a.Address, Gateway: a.Gateway, DNS: c.DNS, Hosts: s.hosts(c.Name)}
	if cfg.DNS == nil {
		path := s.opts.Net.ResolvConf
		if path == "" {
			path = "/etc/resolv.conf"
		}
		if cfg.DNS, cfg.Search, err = nestnet.ReadResolvConf(path); err != nil {
			u.logf("%s: nameservers: %v", c.Name, err)
			err = nil
		}
	}
	if s.canGiveSubnets() && c.Kind == config.KindUser && c.Sandbox.Nesting {
		ctx, cancel := context.WithTimeout(context.Background(), subnetTimeout)
		sub, err := s.descendantSubnet(ctx, c.Name, false)
		cancel()
		if err != nil {
			return fmt.Errorf("a subnet for %s's own containers: %w", c.Name, err)
		}
		cfg.Subnet = sub
	}
	body, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	if err := run.send(&escalate.Message{Type: msgNet, Body: body}); err != nil {
		return fmt.Errorf("sending the network: %w", err)
	}
	st := &s.netState
	st.mu.Lock()
	st.runs[c.Name] = run
	st.mu.Unlock()
	u.mu.Lock()
	u.address = a.Address.String()
	u.mu.Unlock()
	s.sendHosts(c.Name)
	return nil
}

// detachNetwork removes a stopped veth container's eth0 and rules; its
// lease stays.
func (u *Unit) detachNetwork() {
	c := u.spec.Container
	if c == nil || c.Network != config.NetworkVeth {
		return
	}
	u.mu.Lock()
	u.address = ""
	u.mu.Unlock()
	st := &u.sup.netState
	st.mu.Lock()
	n := st.net
	delete(st.runs, c.Name)
	st.mu.Unlock()
	if n == nil {
		return
	}
	if err := n.Detach(c.Name); err != nil {
		u.logf("%s: network: %v", c.Name, err)
	}
	u.sup.sendHosts(c.Name)
}

// ReleaseNetwork gives back the address and subnet of a container that
// is gone for good (nest rm of one this init has no unit of), whether or
// not the bridge has been made since this init started, and the subnets
// of the inits below it.
func (s *Supervisor) ReleaseNetwork(name string) { s.releaseNetwork(name, nil) }

// releaseNetwork is ReleaseNetwork of a container removed from the config
// or by nest rm, c its config when known: one that cannot hold a subnet
// (not a veth user container that may nest) sends no release up the link.
func (s *Supervisor) releaseNetwork(name string, c *config.Container) {
	opts := s.opts.Net
	if opts == nil {
		return
	}
	st := &s.netState
	st.mu.Lock()
	n := st.net
	st.mu.Unlock()
	var err error
	switch {
	case n != nil:
		err = n.Release(name)
	case opts.StateDir != "" && opts.Subnet.IsValid():
		addrs := nestnet.Pool{Prefix: opts.Subnet, Bits: 32, Path: nestnet.StateFile(opts.StateDir)}
		err = addrs.Release(name)
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.logf("%s: %v", name, err)
	}
	mayHold := c == nil || c.Kind == config.KindUser && c.Network == config.NetworkVeth && c.Sandbox.Nesting
	if opts.Pool.IsValid() || opts.Upstream != nil && mayHold {
		ctx, cancel := context.WithTimeout(context.Background(), subnetTimeout)
		defer cancel()
		if _, err := s.descendantSubnet(ctx, name, true); err != nil {
			s.logf("%s: %v", name, err)
		}
	}
}

// hosts are the names a container on the bridge resolves besides its
// own: this init's host name at the bridge's address, and every other
// container attached.
func (s *Supervisor) hosts(except string) []nestnet.Host {
	st := &s.netState
	st.mu.Lock()
	n := st.net
	st.mu.Unlock()
	if n == nil {
		return nil
	}
	var out []nestnet.Host
	if h, err := os.Hostname(); err == nil && nestnet.CheckHosts([]nestnet.Host{{Name: h, Address: n.Gateway()}}) == nil {
		out = append(out, nestnet.Host{Name: h, Address: n.Gateway()})
	}
	for _, a := range n.Attached() {
		if a.Name != except {
			out = append(out, nestnet.Host{Name: a.Name, Address: a.Address.Addr()})
		}
	}
	return out
}

// sendHosts tells every container on the bridge but changed its new
// hosts, each in a goroutine of its own: a child that does not read holds
// nobody up.
func (s *Supervisor) sendHosts(changed string) {
	st := &s.netState
	st.mu.Lock()
	runs := make(map[string]*containerRun, len(st.runs))
	for name, run := range st.runs {
		if name != changed {
			runs[name] = run
		}
	}
	st.mu.Unlock()
	for name, run := range runs {
		body, err := json.Marshal(HostsBody{Hosts: s.hosts(name)})
		if err != nil {
			continue
		}
		go func() {
			defer s.recoverGoroutine("hosts of " + name)
			if err := run.send(&escalate.Message{Type: msgHosts, Body: body}); err != nil {
				run.note("hosts: %v", err)
			}
		}()
	}
}

// closeNetwork removes the bridge and the rules: an init that goes away
// (nest up) leaves nothing in its namespace.
func (s *Supervisor) closeNetwork() {
	st := &s.netState
	st.mu.Lock()
	n := st.net
	st.net, st.runs = nil, nil
	st.mu.Unlock()
	if n != nil {
		if err := n.Close(); err != nil {
			s.logf("network: %v", err)
		}
	}
}

// Bounds of the child side.
const netWait = 10 * time.Second

// ReceiveNet reads the net message a veth container's init gets right
// after its spec.
func ReceiveNet(link *escalate.Conn) (*nestnet.Config, error) {
	link.SetDeadline(time.Now().Add(netWait))
	defer link.SetDeadline(time.Time{})
	m, fds, err := link.Recv()
	for _, f := range fds {
		f.Close()
	}
	if err == nil && m.Type != msgNet {
		err = fmt.Errorf("want a net message, got %q", m.Type)
	}
	var cfg nestnet.Config
	if err == nil {
		err = escalate.DecodeBody(m, &cfg)
	}
	if err == nil {
		err = cfg.Check()
	}
	if err != nil {
		return nil, fmt.Errorf("reading the network: %w", err)
	}
	return &cfg, nil
}

// hosts applies a hosts message from the parent.
func (p *ParentLink) hosts(m *escalate.Message, logf func(string, ...any)) {
	var b HostsBody
	err := escalate.DecodeBody(m, &b)
	if err == nil {
		err = nestnet.CheckHosts(b.Hosts)
	}
	switch {
	case err != nil:
		logf("link: hosts: %v", err)
	case p.OnHosts != nil:
		p.OnHosts(b.Hosts)
	}
}
