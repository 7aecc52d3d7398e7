package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"nest/escalate"
	nestnet "nest/net"
)

// The link between a child container's init and its parent: one
// socketpair, the escalate wire format (docs/control-api.md, "The link").
// The parent asks, the child answers: the only messages a child sends
// unasked are "ready" and "state", and its one request is "subnet"
// (subnets.go). Everything the child sends is hostile:
// the parent bounds how long it waits and how much it takes, and checks
// every field before it shows it.

// Link messages (escalate.Types).
const (
	msgSpec     = "spec"
	msgLayer    = "layer"
	msgReady    = "ready"
	msgState    = "state"
	msgSubtree  = "subtree"
	msgAct      = "act"
	msgShutdown = "shutdown"
	msgError    = "error"
)

// ShutdownBody is the body of a shutdown message.
type ShutdownBody struct {
	Action string `json:"action"` // "poweroff" or "reboot"
}

// Bounds of the parent's side of a link.
const (
	// linkSendTimeout bounds one send to a child that does not read.
	linkSendTimeout = 2 * time.Second
	// maxPending bounds the requests under way on one link.
	maxPending = 64
	// statusTimeout and actTimeout bound the wait for an "act" answer:
	// a status, or a start, stop or restart (which waits for its outcome
	// inside the child).
	statusTimeout = 5 * time.Second
	actTimeout    = 10 * time.Minute
	// maxNotes is how many unexpected messages of one child are logged a
	// minute; the rest are counted.
	maxNotes = 10
)

var (
	errLinkDown = errors.New("the link to the container's init is down")
	errTimeout  = errors.New("the container's init did not answer in time")
)

// containerRun is one run of a child container, seen from the parent.
type containerRun struct {
	link     *escalate.Conn
	name     string
	logf     func(string, ...any)
	messages chan notifyMessage // ready, as a notify socket would say it
	down     chan struct{}      // closed when read returns: no more answers

	sendMu sync.Mutex // one send at a time, each with its own deadline

	// subnets answers the child's subnet requests (Supervisor.
	// descendantSubnet; nil: refused), gate bounds them.
	subnets func(ctx context.Context, path string, release bool) (netip.Prefix, error)
	gate    subnetGate

	reqs pendingRequests // the parent's requests under way

	mu        sync.Mutex
	notes     int
	notesFrom time.Time
}

// pendingRequests are the requests one end of a link has under way, by
// id, each waiting for its answer.
type pendingRequests struct {
	mu     sync.Mutex
	lastID uint64
	byID   map[uint64]chan *escalate.Message // each buffered: the reader never blocks
}

var errTooMany = errors.New("too many requests under way")

// open takes an id for a new request, unless down is closed or
// maxPending are under way; forget(id) drops it.
func (p *pendingRequests) open(down <-chan struct{}) (uint64, <-chan *escalate.Message, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-down:
		return 0, nil, errLinkDown
	default:
	}
	if len(p.byID) >= maxPending {
		return 0, nil, errTooMany
	}
	if p.byID == nil {
		p.byID = make(map[uint64]chan *escalate.Message)
	}
	p.lastID++
	reply := make(chan *escalate.Message, 1)
	p.byID[p.lastID] = reply
	return p.lastID, reply, nil
}

func (p *pendingRequests) forget(id uint64) {
	p.mu.Lock()
	delete(p.byID, id)
	p.mu.Unlock()
}

// answer hands m to the request of its id. It reports whether one
// waited, and whether the id is one this end ever used.
func (p *pendingRequests) answer(m *escalate.Message) (delivered, issued bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	issued = m.ID != 0 && m.ID <= p.lastID
	w := p.byID[m.ID]
	if m.ID == 0 || w == nil {
		return false, issued
	}
	delete(p.byID, m.ID)
	w <- m
	return true, issued
}

func (p *pendingRequests) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.byID)
}

// awaitAnswer waits up to timeout for the answer of a request: an
// "error" answer is an error, any other is returned for the caller to
// check.
func awaitAnswer(ctx context.Context, reply <-chan *escalate.Message, timeout time.Duration, down <-chan struct{}) (*escalate.Message, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m := <-reply:
		if m.Type == msgError {
			return nil, errors.New(cleanText(m.Error))
		}
		return m, nil
	case <-t.C:
		return nil, errTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-down:
		return nil, errLinkDown
	}
}

func newContainerRun(link *escalate.Conn, name string, logf func(string, ...any)) *containerRun {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	return &containerRun{
		link: link, name: name, logf: logf,
		messages: make(chan notifyMessage, 4),
		down:     make(chan struct{}),
	}
}

// send sends one message; a child that does not read makes it fail after
// linkSendTimeout rather than hold the caller.
func (c *containerRun) send(m *escalate.Message, fds ...*os.File) error {
	c.sendMu.Lock()
	defer c.sendMu.Unlock()
	c.link.SetWriteDeadline(time.Now().Add(linkSendTimeout))
	defer c.link.SetWriteDeadline(time.Time{})
	return c.link.Send(m, fds...)
}

// requestStop asks the child's init to stop its subtree in order.
func (c *containerRun) requestStop() error {
	body, _ := json.Marshal(ShutdownBody{Action: "poweroff"})
	return c.send(&escalate.Message{Type: msgShutdown, Body: body})
}

func (c *containerRun) Close() { c.link.Close() }

// note logs something unexpected the child did, at most maxNotes times a
// minute, so that a child cannot fill the parent's log.
func (c *containerRun) note(format string, args ...any) {
	c.mu.Lock()
	now := time.Now()
	if now.Sub(c.notesFrom) > time.Minute {
		c.notes, c.notesFrom = 0, now
	}
	c.notes++
	n := c.notes
	c.mu.Unlock()
	switch {
	case n <= maxNotes:
		c.logf("%s: link: "+format, append([]any{c.name}, args...)...)
	case n == maxNotes+1:
		c.logf("%s: link: more unexpected messages this minute are not logged", c.name)
	}
}

// read turns the child's link messages into events and answers to the
// requests waiting for them. Anything else the child sends is logged and
// ignored; a message that breaks the protocol ends the reading (the child
// is hostile until proven otherwise), and with it every request under
// way.
func (c *containerRun) read() {
	defer close(c.messages)
	defer close(c.down)
	defer func() {
		if r := recover(); r != nil {
			c.logf("%s: link: internal error: %v\n%s", c.name, r, debug.Stack())
		}
	}()
	for {
		m, fds, err := c.link.Recv()
		for _, f := range fds {
			f.Close()
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, os.ErrClosed) {
				c.logf("%s: link: %v", c.name, err)
			}
			return
		}
		c.dispatch(m)
	}
}

func (c *containerRun) dispatch(m *escalate.Message) {
	switch m.Type {
	case msgReady:
		select {
		case c.messages <- notifyMessage{ready: true}:
		default:
		}
	case msgState:
		// Allowed unasked; nothing uses it yet.
	case msgSubnet:
		c.subnetRequest(m)
	case msgSubtree, msgAct, msgShell, msgLogs, msgError:
		delivered, issued := c.reqs.answer(m)
		switch {
		case delivered:
		case m.Type != msgError && !issued:
			// A request of the child's own: the parent takes none.
			c.note("%s request %d from the child refused", m.Type, m.ID)
			if m.ID != 0 {
				if err := c.send(&escalate.Message{Type: msgError, ID: m.ID, Error: "the parent takes no requests over the link"}); err != nil {
					c.note("refusing %s %d: %v", m.Type, m.ID, err)
				}
			}
		default:
			c.note("%s %d from the child answers no request under way, ignored", m.Type, m.ID)
		}
	default:
		c.note("unexpected %s from the child, ignored", m.Type)
	}
}

// request sends a request, with fds, and waits up to timeout for its
// answer, which must be of the request's own type or an "error".
func (c *containerRun) request(ctx context.Context, typ string, body any, timeout time.Duration, fds ...*os.File) (*escalate.Message, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	id, reply, err := c.reqs.open(c.down)
	if errors.Is(err, errTooMany) {
		return nil, errors.New("too many requests to the container's init under way")
	}
	if err != nil {
		return nil, err
	}
	defer c.reqs.forget(id)
	if err := c.send(&escalate.Message{Type: typ, ID: id, Body: b}, fds...); err != nil {
		return nil, fmt.Errorf("asking the container's init: %w", err)
	}
	m, err := awaitAnswer(ctx, reply, timeout, c.down)
	if err == nil && m.Type != typ {
		c.note("%s %d answered with %s", typ, id, m.Type)
		return nil, fmt.Errorf("the container's init answered %s with %s", typ, m.Type)
	}
	return m, err
}

// subtree asks the child's init for its units, depth levels of them
// (its own being the first), waiting at most timeout. It returns what it
// could get, checked, and why that is incomplete, if it is.
func (c *containerRun) subtree(ctx context.Context, depth int, timeout time.Duration) ([]Status, string) {
	q := subtreeRequest{Depth: depth, TimeoutMS: (timeout - treeMargin).Milliseconds()}
	m, err := c.request(ctx, msgSubtree, q, timeout)
	switch {
	case errors.Is(err, errTimeout):
		return nil, incompleteTimeout
	case err != nil:
		return nil, cleanText(err.Error())
	}
	var r subtreeReply
	if err := escalate.DecodeBody(m, &r); err != nil {
		c.note("subtree answer: %v", err)
		return nil, "invalid answer"
	}
	budget := MaxTreeNodes
	units, cut := cleanTree(r.Units, depth, &budget)
	why := cleanText(r.Incomplete)
	if why == "" {
		why = cut
	}
	return units, why
}

// act asks the child's init to run action on the unit at path (relative
// to the child) and returns the unit's status, checked, without children.
func (c *containerRun) act(ctx context.Context, action, path string) (Status, error) {
	timeout := actTimeout
	if action == "status" {
		timeout = statusTimeout
	}
	m, err := c.request(ctx, msgAct, actRequest{Action: action, Path: path}, timeout)
	if err != nil {
		return Status{}, err
	}
	var st Status
	if err := escalate.DecodeBody(m, &st); err != nil {
		c.note("act answer: %v", err)
		return Status{}, errors.New("the container's init gave an invalid answer")
	}
	st = cleanStatus(st)
	st.Children, st.Incomplete = nil, ""
	return st, nil
}

// ParentLink is the child init's end of its link: it tells the parent it
// is ready and answers the parent's requests.
type ParentLink struct {
	// Shells opens shells in this init's own container (nil: none).
	Shells ShellHost

	conn   *escalate.Conn
	sendMu sync.Mutex
	busy   chan struct{} // one token per request being answered

	// This init's own requests (subnets.go): answered by the parent.
	reqs     pendingRequests
	down     chan struct{} // closed when Serve returns
	downOnce sync.Once
	// OnHosts, when set, takes the hosts of each hosts message (checked).
	OnHosts func([]nestnet.Host)
}

// Bounds of the child's side.
const (
	parentSendTimeout = 5 * time.Second
	maxAnswering      = 16
)

// NewParentLink wraps the link a child init's spec arrived on.
func NewParentLink(conn *escalate.Conn) *ParentLink {
	conn.LimitFDs(1) // the session socket of a shell request; nothing else
	return &ParentLink{
		conn: conn, busy: make(chan struct{}, maxAnswering),
		down: make(chan struct{}),
	}
}

func (p *ParentLink) send(m *escalate.Message) error {
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	p.conn.SetWriteDeadline(time.Now().Add(parentSendTimeout))
	defer p.conn.SetWriteDeadline(time.Time{})
	return p.conn.Send(m)
}

// Ready tells the parent that this init's supervisor is up.
func (p *ParentLink) Ready() error { return p.send(&escalate.Message{Type: msgReady}) }

// Serve answers the parent's requests from sup until the link ends, and
// calls shutdown (which must not block) with the action of each shutdown
// request. It returns what ended the link: io.EOF when the parent is gone.
func (p *ParentLink) Serve(sup *Supervisor, shutdown func(action string), logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	defer p.downOnce.Do(func() { close(p.down) })
	for {
		m, fds, err := p.conn.Recv()
		var session *os.File
		for _, f := range fds {
			if err == nil && m.Type == msgShell && len(fds) == 1 {
				session = f // the answer's goroutine owns it
				continue
			}
			f.Close()
		}
		if err != nil {
			return err
		}
		if m.Type == msgShell && m.ID != 0 && session == nil {
			p.refuse(m.ID, "a shell request carries one socket", logf)
			continue
		}
		switch m.Type {
		case msgShutdown:
			action := "poweroff"
			var b ShutdownBody
			if len(m.Body) > 0 && escalate.DecodeBody(m, &b) == nil && b.Action == "reboot" {
				action = "reboot"
			}
			shutdown(action)
		case msgHosts:
			p.hosts(m, logf)
		case msgSubnet, msgError:
			// Answers to this init's own requests.
			p.reply(m, logf)
		case msgSubtree, msgAct, msgShell, msgLogs:
			if m.ID == 0 {
				logf("link: %s request without an id, ignored", m.Type)
				if session != nil {
					session.Close()
				}
				continue
			}
			select {
			case p.busy <- struct{}{}:
			default:
				p.refuse(m.ID, "busy: too many requests under way", logf)
				if session != nil {
					session.Close()
				}
				continue
			}
			go func() {
				defer func() { <-p.busy }()
				defer func() {
					if r := recover(); r != nil {
						logf("link: internal error answering %s %d: %v\n%s", m.Type, m.ID, r, debug.Stack())
						p.refuse(m.ID, "internal error", logf)
					}
				}()
				reply, err := p.answer(ctx, sup, m, session)
				if err != nil {
					p.refuse(m.ID, err.Error(), logf)
					return
				}
				reply.ID = m.ID
				if err := p.send(reply); err != nil {
					logf("link: answering %s %d: %v", m.Type, m.ID, err)
				}
			}()
		default:
			logf("link: unexpected %s from the parent, ignored", m.Type)
			if m.ID != 0 {
				p.refuse(m.ID, fmt.Sprintf("a child init takes no %s request", m.Type), logf)
			}
		}
	}
}

func (p *ParentLink) refuse(id uint64, text string, logf func(string, ...any)) {
	if len(text) > 1024 {
		text = text[:1024] + "…"
	}
	if err := p.send(&escalate.Message{Type: msgError, ID: id, Error: text}); err != nil {
		logf("link: answering %d: %v", id, err)
	}
}

// answer makes the reply to one subtree, act, logs or shell request; it owns
// session (a shell's).
func (p *ParentLink) answer(ctx context.Context, sup *Supervisor, m *escalate.Message, session *os.File) (*escalate.Message, error) {
	switch m.Type {
	case msgShell:
		return p.shell(ctx, sup, m, session)
	case msgSubtree:
		q := subtreeRequest{Depth: MaxTreeDepth - 1, TimeoutMS: (TreeTimeout - treeMargin).Milliseconds()}
		if len(m.Body) > 0 {
			if err := escalate.DecodeBody(m, &q); err != nil {
				return nil, err
			}
		}
		depth := min(max(q.Depth, 1), MaxTreeDepth)
		timeout := min(max(time.Duration(q.TimeoutMS)*time.Millisecond, 0), TreeTimeout-treeMargin)
		units := sup.Tree(ctx, depth, timeout)
		return &escalate.Message{Type: msgSubtree, Body: fitReply(units, subtreeReplyLimit)}, nil
	case msgLogs:
		return answerLogs(ctx, sup, m)
	case msgAct:
		var q actRequest
		if err := escalate.DecodeBody(m, &q); err != nil {
			return nil, err
		}
		st, err := sup.Act(ctx, q.Action, q.Path, 0)
		if err != nil {
			return nil, err
		}
		body, err := json.Marshal(st)
		if err == nil && len(body) > subtreeReplyLimit {
			st.Exec = []string{"(too long to send)"}
			body, err = json.Marshal(st)
		}
		if err != nil {
			return nil, err
		}
		return &escalate.Message{Type: msgAct, Body: body}, nil
	}
	return nil, fmt.Errorf("no %s request here", m.Type)
}
