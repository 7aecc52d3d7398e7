package escalate

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sort"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// The broker is the server side of escalation: a process of its own (nest
// in its broker mode, started and restarted by its init), so that nothing
// a child sends can reach PID 1. Its init hands it each child's listening
// socket and policy over a socketpair (Serve); the broker accepts on them,
// authenticates, audits and runs the sessions. Which socket a connection
// arrived on says which child it is from; SO_PEERCRED, as the parent sees
// it, says which process.

// Bounds of the broker.
const (
	maxConnsPerChild = 8   // connections of one child at once
	maxConns         = 256 // of all children
	maxNotes         = 10  // broken requests of one child logged a minute
)

// Times a client gets (variables: tests shorten them).
var (
	helloTimeout   = 5 * time.Second  // to send to a client that does not read
	requestTimeout = 2 * time.Minute  // for the request and its proof (a password is typed)
	confirmTimeout = 10 * time.Minute // for someone to run nest approve
	hangupGrace    = 2 * time.Second  // between SIGHUP and SIGKILL when a client is gone
	drainTime      = 500 * time.Millisecond
)

// Broker serves the escalation sockets of an init's children.
type Broker struct {
	// Logf writes to the init's console (the broker's stderr).
	Logf func(format string, args ...any)
	// Audit records every attempt; nil records none.
	Audit *Audit
	// Cgroup is a cgroup v2 directory under which each session gets its
	// own (killed when the session ends); "" for none.
	Cgroup string
	// LimitsFile keeps the children's failure counts and lockouts across
	// restarts of the broker (limit.go); "" keeps them in memory only.
	LimitsFile string

	mu       sync.Mutex
	children map[string]*childSocket
	limits   map[string]*limiter // by child: kept across a new socket
	pending  map[uint64]*pendingRequest
	lastID   uint64
	conns    int
	sessions uint64
	hashing  chan struct{} // one password check at a time
	done     bool
	saveMu   sync.Mutex // one writer of LimitsFile at a time
}

type childSocket struct {
	name   string
	ln     *os.File
	policy Policy
	limit  *limiter
	// Under Broker.mu:
	conns     int
	notes     int
	notesFrom time.Time
}

type pendingRequest struct {
	Pending
	decide chan bool // buffered
}

func (b *Broker) init() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.Logf == nil {
		b.Logf = func(string, ...any) {}
	}
	if b.children == nil {
		b.children = make(map[string]*childSocket)
		b.limits = make(map[string]*limiter)
		b.pending = make(map[uint64]*pendingRequest)
		b.hashing = make(chan struct{}, 1)
		b.loadLimits()
	}
}

// Serve takes requests from the init on ctl until it hangs up (the init
// is gone or stops the broker), then closes every listening socket.
func (b *Broker) Serve(ctl *Conn) error {
	b.init()
	err := Serve(ctl, b.control, b.Logf)
	b.mu.Lock()
	b.done = true
	for name, c := range b.children {
		c.ln.Close()
		delete(b.children, name)
	}
	b.mu.Unlock()
	return err
}

// control answers one request of the init.
func (b *Broker) control(m *Message, fds []*os.File) (*Message, error) {
	defer func() {
		for _, f := range fds {
			f.Close()
		}
	}()
	switch m.Type {
	case MsgListen:
		var l Listen
		if err := DecodeBody(m, &l); err != nil {
			return nil, err
		}
		if len(fds) != 1 {
			return nil, fmt.Errorf("listen %s: want one listening socket, got %d fds", l.Child, len(fds))
		}
		if err := CheckPolicy(&l.Policy); err != nil {
			return nil, fmt.Errorf("listen %s: %w", l.Child, err)
		}
		if err := checkListener(fds[0]); err != nil {
			return nil, fmt.Errorf("listen %s: %w", l.Child, err)
		}
		ln := fds[0]
		fds = nil // the child's socket owns it now
		b.listen(l, ln)
		return &Message{Type: MsgListen}, nil
	case MsgForget:
		var f Forget
		if err := DecodeBody(m, &f); err != nil {
			return nil, err
		}
		b.mu.Lock()
		if c := b.children[f.Child]; c != nil {
			c.ln.Close()
			delete(b.children, f.Child)
		}
		delete(b.limits, f.Child)
		b.mu.Unlock()
		return &Message{Type: MsgForget}, nil
	case MsgPending:
		body, err := jsonBody(b.Pending())
		if err != nil {
			return nil, err
		}
		return &Message{Type: MsgPending, Body: body}, nil
	case MsgDecide:
		var d Decide
		if err := DecodeBody(m, &d); err != nil {
			return nil, err
		}
		if err := b.Decide(d.ID, d.Approve); err != nil {
			return nil, err
		}
		return &Message{Type: MsgDecide}, nil
	}
	return nil, fmt.Errorf("the broker takes no %s request", m.Type)
}

// checkListener makes sure f is a listening unix SOCK_SEQPACKET socket.
func checkListener(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var cerr error
	err = rc.Control(func(fd uintptr) {
		domain, err1 := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		typ, err2 := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		listening, err3 := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err := errors.Join(err1, err2, err3); err != nil {
			cerr = fmt.Errorf("not a socket: %w", err)
			return
		}
		if domain != unix.AF_UNIX || typ != unix.SOCK_SEQPACKET || listening == 0 {
			cerr = errors.New("want a listening unix SOCK_SEQPACKET socket")
		}
	})
	if err != nil {
		return err
	}
	return cerr
}

// listen starts serving a child's socket, replacing what it had.
func (b *Broker) listen(l Listen, ln *os.File) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if old := b.children[l.Child]; old != nil {
		old.ln.Close()
	}
	lim := b.limits[l.Child]
	if lim == nil {
		lim = new(limiter)
		b.limits[l.Child] = lim
	}
	c := &childSocket{name: l.Child, ln: ln, policy: l.Policy, limit: lim}
	b.children[l.Child] = c
	go b.accept(c)
}

// accept takes the connections of one child until its socket is closed.
func (b *Broker) accept(c *childSocket) {
	defer b.recoverLog("accepting for " + c.name)
	rc, err := c.ln.SyscallConn()
	if err != nil {
		b.Logf("escalate: %s: %v", c.name, err)
		return
	}
	for {
		var nfd int
		var aerr error
		err := rc.Read(func(fd uintptr) bool {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			return aerr != unix.EAGAIN
		})
		if err != nil {
			return // closed: forgotten or replaced
		}
		if aerr != nil {
			switch aerr {
			case unix.ECONNABORTED, unix.EINTR:
			default:
				b.Logf("escalate: %s: accept: %v", c.name, aerr)
				time.Sleep(100 * time.Millisecond) // EMFILE and the like: let it pass
			}
			continue
		}
		cred, cerr := unix.GetsockoptUcred(nfd, unix.SOL_SOCKET, unix.SO_PEERCRED)
		conn := newConn(os.NewFile(uintptr(nfd), "escalation of "+c.name))
		if cerr != nil {
			b.Logf("escalate: %s: SO_PEERCRED: %v", c.name, cerr)
			conn.Close()
			continue
		}
		b.mu.Lock()
		full := c.conns >= maxConnsPerChild || b.conns >= maxConns
		if !full {
			c.conns++
			b.conns++
		}
		b.mu.Unlock()
		if full {
			conn.SetWriteDeadline(time.Now().Add(time.Second))
			conn.Send(&Message{Type: MsgError, Error: "too many escalations of this container under way; try again later"})
			conn.Close()
			continue
		}
		go func() {
			defer func() {
				b.mu.Lock()
				c.conns--
				b.conns--
				b.mu.Unlock()
			}()
			b.serveConn(c, conn, *cred)
		}()
	}
}

func (b *Broker) recoverLog(what string) {
	if r := recover(); r != nil {
		b.Logf("escalate: %s: internal error: %v\n%s", what, r, debug.Stack())
	}
}

// refusal is an answer to a client that ends its connection.
type refusal struct {
	result string // for the audit: "refused" or "failed"
	text   string // for the client and the audit
}

func (r *refusal) Error() string { return r.text }

// serveConn runs one escalation: hello, request, proof, session.
func (b *Broker) serveConn(c *childSocket, conn *Conn, cred unix.Ucred) {
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	defer conn.Close()
	defer b.recoverLog("escalation of " + c.name)

	b.mu.Lock()
	pol := c.policy
	b.mu.Unlock()
	as := pol.As
	if as == "" {
		as = "root"
	}
	a := Attempt{Child: c.name, Pid: cred.Pid, UID: cred.Uid, As: as, Method: pol.Method}
	refuse := func(r *refusal) {
		a.Result, a.Reason = r.result, r.text
		b.record(a)
		answer(conn, r.text)
	}

	nonce := make([]byte, NonceSize)
	rand.Read(nonce)
	hello := Hello{Version: ProtocolVersion, Child: c.name, Method: pol.Method, As: as, Nonce: nonce}
	var keys []ssh.PublicKey
	if pol.Method == MethodKey {
		var err error
		if keys, err = authorizedKeys(&pol); err != nil {
			// The parent's fault, not the child's: refused below, never
			// counted as a failed proof.
			b.Logf("escalate: %s: %v", c.name, err)
			keys = nil
		}
		for _, k := range keys {
			hello.Keys = append(hello.Keys, ssh.FingerprintSHA256(k))
		}
	}
	conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	if err := sendBody(conn, MsgHello, hello); err != nil {
		return // gone before it asked anything: nothing to audit
	}
	conn.SetWriteDeadline(time.Time{})

	conn.SetReadDeadline(time.Now().Add(requestTimeout))
	m, fds, err := conn.Recv()
	files = fds
	if err != nil {
		if pe := (*ProtocolError)(nil); errors.As(err, &pe) {
			b.noteBroken(c, pe)
			answer(conn, pe.Error())
		}
		return
	}
	var q Request
	// A broken request is no attempt: answered and noted, not audited.
	if m.Type != MsgRequest {
		pe := &ProtocolError{Err: fmt.Errorf("want a request, got %s", m.Type)}
		b.noteBroken(c, pe)
		answer(conn, pe.Error())
		return
	}
	if err := DecodeBody(m, &q); err != nil {
		pe := &ProtocolError{Err: err}
		b.noteBroken(c, pe)
		answer(conn, pe.Error())
		return
	}
	var pe *ProtocolError
	switch {
	case q.PTY && len(files) != 0:
		pe = &ProtocolError{Err: errors.New("a request for a pty carries no fds")}
	case !q.PTY && len(files) != 3:
		pe = &ProtocolError{Err: fmt.Errorf("a request without a pty carries stdin, stdout and stderr: got %d fds", len(files))}
	}
	if pe != nil {
		b.noteBroken(c, pe)
		answer(conn, pe.Error())
		return
	}
	a.Command, a.PTY = q.Argv, q.PTY
	if pol.Method == MethodDeny {
		// Said first, whatever was asked: nothing of the parent is looked
		// up for a child that may not escalate.
		refuse(&refusal{"refused", fmt.Sprintf("escalation from container %s is denied (escalate = \"deny\" in the parent's config)", quote(c.name))})
		return
	}
	pl, err := checkRequest(&q, &pol, c.name)
	if err != nil {
		refuse(&refusal{"refused", err.Error()})
		return
	}
	if left := c.limit.locked(time.Now()); left > 0 {
		refuse(&refusal{"refused", fmt.Sprintf("locked out after %d failed attempts; try again in %s", MaxFailures, left.Round(time.Second))})
		return
	}
	if r := b.prove(c, conn, &pol, keys, nonce, m.Body, &a); r != nil {
		refuse(r)
		return
	}
	conn.SetDeadline(time.Time{}) // the session's sends set their own
	a.Result = "allowed"
	b.record(a)
	stdio := files
	files = nil // the session owns them
	exit, cleanup, err := b.runSession(conn, pl, stdio, c.name)
	defer cleanup() // after the exit message
	if err != nil {
		a.Result, a.Reason = "failed", err.Error()
		b.record(a)
		answer(conn, err.Error())
		return
	}
	a.Result, a.Reason = "exited", fmt.Sprintf("exit code %d", exit.Code)
	if exit.Signal != "" {
		a.Reason = "killed by SIG" + exit.Signal
	}
	b.record(a)
	conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	sendBody(conn, MsgExit, exit)
}

// prove runs the policy's method for a checked request; nil means go on.
func (b *Broker) prove(c *childSocket, conn *Conn, pol *Policy, keys []ssh.PublicKey, nonce, body []byte, a *Attempt) *refusal {
	switch pol.Method {
	case MethodAllow:
		return nil
	case MethodConfirm:
		return b.confirm(c, conn, a)
	}
	if pol.Method == MethodKey && len(keys) == 0 {
		return &refusal{"refused", "the parent has no key for this container it can read (see its console)"}
	}
	auth, err := recvAuth(conn)
	if err != nil {
		return &refusal{"refused", err.Error()}
	}
	ok, why := false, ""
	switch pol.Method {
	case MethodKey:
		pub, err := Verify(auth.Signature, SigNamespace, SignedMessage(nonce, body), keys)
		if err == nil {
			ok, a.Key = true, ssh.FingerprintSHA256(pub)
		} else {
			why = err.Error()
		}
	case MethodPassword:
		b.hashing <- struct{}{}
		good, err := VerifyPassword(pol.PasswordHash, auth.Password)
		<-b.hashing
		switch {
		case err != nil:
			b.Logf("escalate: %s: password_hash: %v", c.name, err)
			return &refusal{"refused", "the parent has no usable password for this container"}
		case good:
			ok = true
		default:
			why = "wrong password"
		}
	default:
		return &refusal{"refused", fmt.Sprintf("unknown method %s", quote(pol.Method))}
	}
	if ok {
		if c.limit.succeed() {
			b.saveLimits()
		}
		return nil
	}
	delay := c.limit.fail(time.Now())
	b.saveLimits() // before the answer: a broker that dies now has counted it
	time.Sleep(delay)
	return &refusal{"failed", why}
}

// recvAuth reads the auth message that follows a request.
func recvAuth(conn *Conn) (*Auth, error) {
	m, fds, err := conn.Recv()
	for _, f := range fds {
		f.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("no proof: %v", err)
	}
	if m.Type != MsgAuth {
		return nil, fmt.Errorf("want auth, got %s", m.Type)
	}
	var a Auth
	if err := DecodeBody(m, &a); err != nil {
		return nil, err
	}
	return &a, nil
}

// confirm waits until someone in the parent approves or denies the
// request, the client hangs up, or confirmTimeout passes.
func (b *Broker) confirm(c *childSocket, conn *Conn, a *Attempt) *refusal {
	p := &pendingRequest{decide: make(chan bool, 1)}
	b.mu.Lock()
	b.lastID++
	p.Pending = Pending{ID: b.lastID, Child: c.name, Pid: a.Pid, UID: a.UID, As: a.As, Command: a.Command, Since: time.Now()}
	b.pending[p.ID] = p
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		delete(b.pending, p.ID)
		b.mu.Unlock()
	}()
	what := "a login shell"
	if a.Command != nil {
		what = quote(CommandString(a.Command))
	}
	b.Logf("escalate: container %s (pid %d, uid %d) asks to run %s as %s: nest approve %d, or nest deny %d",
		c.name, a.Pid, a.UID, what, a.As, p.ID, p.ID)
	conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	if err := sendBody(conn, MsgWait, Wait{ID: p.ID}); err != nil {
		return &refusal{"refused", "client gone"}
	}
	// Nothing may come from the client meanwhile: anything, its hangup
	// included, ends the wait.
	conn.SetReadDeadline(time.Time{})
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		m, fds, _ := conn.Recv()
		for _, f := range fds {
			f.Close()
		}
		_ = m
	}()
	stopWatch := func() {
		conn.SetReadDeadline(time.Unix(1, 0))
		<-gone
		conn.SetReadDeadline(time.Time{})
	}
	t := time.NewTimer(confirmTimeout)
	defer t.Stop()
	select {
	case ok := <-p.decide:
		stopWatch()
		if !ok {
			return &refusal{"refused", fmt.Sprintf("request %d denied in the parent", p.ID)}
		}
		return nil
	case <-gone:
		return &refusal{"refused", "the client hung up while waiting for approval"}
	case <-t.C:
		stopWatch()
		return &refusal{"refused", fmt.Sprintf("request %d: nobody approved it within %s", p.ID, confirmTimeout)}
	}
}

// Pending lists the requests waiting for approval, oldest first.
func (b *Broker) Pending() []Pending {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Pending, 0, len(b.pending))
	for _, p := range b.pending {
		out = append(out, p.Pending)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Decide approves or denies a pending request.
func (b *Broker) Decide(id uint64, approve bool) error {
	b.mu.Lock()
	p := b.pending[id]
	if p != nil {
		delete(b.pending, id)
	}
	b.mu.Unlock()
	if p == nil {
		return fmt.Errorf("no request %d is waiting", id)
	}
	p.decide <- approve
	return nil
}

// Children lists the children the broker serves.
func (b *Broker) Children() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []string
	for name := range b.children {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func (b *Broker) record(a Attempt) {
	if b.Audit != nil {
		b.Audit.Record(a)
	}
}

// noteBroken logs a client that broke the protocol before it asked
// anything (one that simply hung up is not news), at most maxNotes times
// a minute per child, so that a child cannot fill the parent's console.
func (b *Broker) noteBroken(c *childSocket, err error) {
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		return
	}
	b.mu.Lock()
	now := time.Now()
	if now.Sub(c.notesFrom) > time.Minute {
		c.notes, c.notesFrom = 0, now
	}
	c.notes++
	n := c.notes
	b.mu.Unlock()
	switch {
	case n <= maxNotes:
		b.Logf("escalate: %s: %v", c.name, pe)
	case n == maxNotes+1:
		b.Logf("escalate: %s: more broken requests this minute are not logged", c.name)
	}
}

// answer sends a client its refusal, then takes what it sent meanwhile
// (a proof that followed its request) until it hangs up, for a moment:
// closing a socket with unread packets resets the connection, and the
// client would never read why.
func answer(conn *Conn, text string) {
	conn.SetWriteDeadline(time.Now().Add(helloTimeout))
	if conn.Send(&Message{Type: MsgError, Error: text}) != nil {
		return
	}
	conn.SetReadDeadline(time.Now().Add(drainTime))
	for range 4 {
		_, fds, err := conn.Recv()
		for _, f := range fds {
			f.Close()
		}
		var pe *ProtocolError
		if err != nil && !errors.As(err, &pe) {
			return
		}
	}
}

func sendBody(conn *Conn, typ string, v any) error {
	body, err := jsonBody(v)
	if err != nil {
		return err
	}
	return conn.Send(&Message{Type: typ, Body: body})
}
