package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"nest/config"
	"nest/escalate"
)

// Subnets below the root's children (docs/decisions.md, "Subnets below
// the root's children"). The root owns the pool. Every init that starts a veth user
// container that may nest gives it a /24 in its net message: the root
// leases it itself; any other init asks its parent over its link with a
// "subnet" request naming the container by its path below the asking
// init ("dev"). Each parent prefixes the path with the name of the child
// it came from ("alice/dev") and takes it, or forwards it up its own
// link, until it reaches the root, which leases from its pool under the
// full path. A child can thus name only what lies below it, and the lease
// outlives restarts of the subtree and of the inits above.

// msgSubnet is the one request a child sends up its link, and its reply.
const msgSubnet = "subnet"

// SubnetRequest is the body of a subnet request.
type SubnetRequest struct {
	// Path is the container, below the init that sends the request:
	// names joined by "/", at most MaxTreeDepth of them.
	Path string `json:"path"`
	// Release gives back the subnets of Path and of everything below it
	// (the container was removed); the reply has no subnet.
	Release bool `json:"release,omitempty"`
}

// SubnetReply is the body of a subnet reply.
type SubnetReply struct {
	Subnet netip.Prefix `json:"subnet"`
}

// SubnetSource is how an init without a pool of its own gets subnets for
// its children: its parent, over the link (*ParentLink).
type SubnetSource interface {
	AcquireSubnet(ctx context.Context, path string) (netip.Prefix, error)
	ReleaseSubnet(ctx context.Context, path string) error
}

// Bounds of subnet requests.
const (
	// subnetTimeout bounds one request, up every level.
	subnetTimeout = 5 * time.Second
	// subnetBurst and subnetRate bound the requests one child may make:
	// a bucket of subnetBurst, refilled at subnetRate a second.
	subnetBurst = 32
	subnetRate  = 2
	// subnetsAtOnce bounds the requests of one child under way.
	subnetsAtOnce = 4
	// MaxSubnetsPerChild is how many /24s one child of the root and
	// everything below it may hold.
	MaxSubnetsPerChild = 32
)

// CheckSubnetPath says why path cannot name a container below an init.
func CheckSubnetPath(path string) error {
	parts := strings.Split(path, "/")
	if path == "" || len(parts) > MaxTreeDepth {
		return fmt.Errorf("subnet path %s: want 1 to %d names joined by /", quoteText(path), MaxTreeDepth)
	}
	for _, p := range parts {
		if !config.ValidName(p) {
			return fmt.Errorf("subnet path %s: %s is not a container name", quoteText(path), quoteText(p))
		}
	}
	return nil
}

// quoteText quotes s for an error, cut short.
func quoteText(s string) string {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Sprintf("%q", s)
}

// canGiveSubnets reports whether this init has subnets for children
// that may nest: a pool of its own, or a parent to ask.
func (s *Supervisor) canGiveSubnets() bool {
	opts := s.opts.Net
	return opts != nil && (opts.Pool.IsValid() || opts.Upstream != nil)
}

// descendantSubnet leases the /24 of the container at path below this
// init (its first name one of this init's children), or, with release,
// gives back the subnets of that container and of everything below it:
// from this init's pool, or by asking its parent.
func (s *Supervisor) descendantSubnet(ctx context.Context, path string, release bool) (netip.Prefix, error) {
	if err := CheckSubnetPath(path); err != nil {
		return netip.Prefix{}, err
	}
	if pool := s.subnets(); pool != nil {
		if release {
			return netip.Prefix{}, pool.ReleaseTree(path)
		}
		top, _, deeper := strings.Cut(path, "/")
		if deeper {
			// A child's request for its own descendants: its tree has
			// a quota, so that one child cannot take the pool.
			return pool.AcquireUnder(path, top, MaxSubnetsPerChild)
		}
		return pool.Acquire(path, netip.Prefix{})
	}
	opts := s.opts.Net
	if opts == nil || opts.Upstream == nil {
		return netip.Prefix{}, errors.New("this init has no subnets to give (it gets a /24 itself only with network = \"veth\" and nesting)")
	}
	if release {
		return netip.Prefix{}, opts.Upstream.ReleaseSubnet(ctx, path)
	}
	return opts.Upstream.AcquireSubnet(ctx, path)
}

// subnetGate bounds the subnet requests of one child: how many at once,
// and a token bucket for how many over time.
type subnetGate struct {
	mu      sync.Mutex
	busy    int
	tokens  float64
	updated time.Time
}

// enter takes a slot and a token, or says why not; leave gives the slot
// back.
func (g *subnetGate) enter(now time.Time) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.updated.IsZero() {
		g.tokens = subnetBurst
	} else {
		g.tokens = min(subnetBurst, g.tokens+now.Sub(g.updated).Seconds()*subnetRate)
	}
	g.updated = now
	switch {
	case g.busy >= subnetsAtOnce:
		return errors.New("too many subnet requests under way")
	case g.tokens < 1:
		return errors.New("too many subnet requests: try again later")
	}
	g.tokens--
	g.busy++
	return nil
}

func (g *subnetGate) leave() {
	g.mu.Lock()
	g.busy--
	g.mu.Unlock()
}

// subnetRequest answers a child's subnet request, in a goroutine of its
// own: the path it names is taken as below the child, never as it is.
func (c *containerRun) subnetRequest(m *escalate.Message) {
	if m.ID == 0 {
		c.note("subnet request without an id, ignored")
		return
	}
	if c.subnets == nil {
		c.refuseRequest(m, "the parent takes no requests over the link")
		return
	}
	q, err := decodeSubnetRequest(m)
	if err == nil {
		err = c.gate.enter(time.Now())
	}
	if err != nil {
		c.note("subnet request %d refused: %v", m.ID, err)
		c.refuseRequest(m, err.Error())
		return
	}
	path := c.name + "/" + q.Path
	go func() {
		defer c.gate.leave()
		defer func() {
			if r := recover(); r != nil {
				c.logf("%s: link: internal error answering subnet %d: %v", c.name, m.ID, r)
				c.refuseRequest(m, "internal error")
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), subnetTimeout)
		defer cancel()
		sub, err := c.subnets(ctx, path, q.Release)
		if err != nil {
			c.note("subnet of %s: %v", path, err)
			c.refuseRequest(m, err.Error())
			return
		}
		if q.Release {
			c.logf("%s: subnets of %s and below released", c.name, path)
		}
		body, _ := json.Marshal(SubnetReply{Subnet: sub})
		if err := c.send(&escalate.Message{Type: msgSubnet, ID: m.ID, Body: body}); err != nil {
			c.note("answering subnet %d: %v", m.ID, err)
		}
	}()
}

// decodeSubnetRequest reads a child's subnet request strictly.
func decodeSubnetRequest(m *escalate.Message) (SubnetRequest, error) {
	var q SubnetRequest
	if err := escalate.DecodeBody(m, &q); err != nil {
		return SubnetRequest{}, err
	}
	if err := CheckSubnetPath(q.Path); err != nil {
		return SubnetRequest{}, err
	}
	return q, nil
}

// refuseRequest answers a request of the child with an error.
func (c *containerRun) refuseRequest(m *escalate.Message, text string) {
	if len(text) > 1024 {
		text = text[:1024] + "…"
	}
	if err := c.send(&escalate.Message{Type: msgError, ID: m.ID, Error: text}); err != nil {
		c.note("refusing %s %d: %v", m.Type, m.ID, err)
	}
}

// AcquireSubnet asks the parent for the /24 of the container at path
// below this init.
func (p *ParentLink) AcquireSubnet(ctx context.Context, path string) (netip.Prefix, error) {
	m, err := p.request(ctx, msgSubnet, SubnetRequest{Path: path})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("asking the parent for a subnet: %w", err)
	}
	var r SubnetReply
	if err := escalate.DecodeBody(m, &r); err != nil {
		return netip.Prefix{}, fmt.Errorf("the parent's subnet: %w", err)
	}
	if s := r.Subnet; !s.IsValid() || !s.Addr().Is4() || s.Bits() != 24 || s.Masked() != s {
		return netip.Prefix{}, fmt.Errorf("the parent's subnet %s: want an IPv4 /24", s)
	}
	return r.Subnet, nil
}

// ReleaseSubnet tells the parent that the container at path below this
// init is gone, with everything below it.
func (p *ParentLink) ReleaseSubnet(ctx context.Context, path string) error {
	if _, err := p.request(ctx, msgSubnet, SubnetRequest{Path: path, Release: true}); err != nil {
		return fmt.Errorf("giving the subnet of %s back to the parent: %w", path, err)
	}
	return nil
}

// request sends a request of this init's own up the link and waits for
// its answer (Serve reads it).
func (p *ParentLink) request(ctx context.Context, typ string, body any) (*escalate.Message, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	id, reply, err := p.reqs.open(p.down)
	if err != nil {
		return nil, fmt.Errorf("asking the parent: %w", err)
	}
	defer p.reqs.forget(id)
	if err := p.send(&escalate.Message{Type: typ, ID: id, Body: b}); err != nil {
		return nil, err
	}
	m, err := awaitAnswer(ctx, reply, subnetTimeout, p.down)
	switch {
	case errors.Is(err, errTimeout):
		return nil, errors.New("the parent did not answer in time")
	case errors.Is(err, errLinkDown):
		return nil, errors.New("the link to the parent is down")
	case err == nil && m.Type != typ:
		return nil, fmt.Errorf("the parent answered %s with %s", typ, m.Type)
	}
	return m, err
}

// reply hands an answer of the parent to the request waiting for it; an
// answer nobody waits for is logged.
func (p *ParentLink) reply(m *escalate.Message, logf func(string, ...any)) {
	if delivered, _ := p.reqs.answer(m); !delivered {
		logf("link: %s %d from the parent answers no request under way, ignored", m.Type, m.ID)
	}
}
