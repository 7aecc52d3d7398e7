package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
	"nest/mounts"
	"nest/sandbox"
)

// An init's side of escalation (docs/control-api.md, "Escalation"): for
// each child container a directory of its own, RunDir/escalate/NAME, with
// a listening socket in it, which only that child sees (at
// /run/nest/parent/ in it); and the broker, nest in its broker mode, which
// serves them. The init makes the sockets and hands them over with each
// child's policy from the config, restarts the broker if it dies, and
// forwards nest approve and nest deny. It never reads what a child sends.

// BrokerMode is the internal mode (argv[1]) of the broker process.
const BrokerMode = "escalate-broker"

// Bounds of the init's side.
const (
	brokerRequestTimeout = 30 * time.Second // a broker this late is wedged
	brokerStopTimeout    = 2 * time.Second
	socketBacklog        = 16
)

type escalation struct {
	sup *Supervisor

	mu       sync.Mutex
	children map[string]*escChild
	policies map[string]escalate.Policy // of kept containers, as the last reload said
	broker   *brokerRun                 // nil while none runs
	starting bool                       // a restart is scheduled
	failures int
	stopped  bool // Shutdown: no broker until the next start of a child
}

// escChild is one child's socket.
type escChild struct {
	dir    string
	ln     *os.File // listening; the broker gets a copy
	policy escalate.Policy
}

// brokerRun is one run of the broker process.
type brokerRun struct {
	proc    *Process
	started time.Time
	ctl     *escalate.Conn
	mu      sync.Mutex // one request at a time; the broker sends nothing unasked
	lastID  uint64
	gone    chan struct{}

	qmu     sync.Mutex // the handovers for work
	queue   []func(*brokerRun) error
	drained bool // work has ended: the broker is gone
	wake    chan struct{}
}

func (e *escalation) logf(format string, args ...any) {
	if e.sup.opts.Logf != nil {
		e.sup.opts.Logf(format, args...)
	}
}

func (s *Supervisor) esc() *escalation {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.escalation == nil {
		s.escalation = &escalation{sup: s, children: make(map[string]*escChild), policies: make(map[string]escalate.Policy)}
	}
	return s.escalation
}

// policyOf is a child's policy as the broker takes it.
func policyOf(c *config.Container) escalate.Policy {
	m := c.Escalate.Method
	if m == "" {
		m = escalate.MethodDeny
	}
	return escalate.Policy{
		Method: m, Keys: c.Escalate.Keys, KeysFile: c.Escalate.KeysFile, As: c.Escalate.As,
		Commands: c.Escalate.Commands, PasswordHash: c.PasswordHash,
	}
}

// escalationDir makes (or keeps) the escalation socket of container c,
// gives it to the broker with c's policy, and returns a detached copy of
// its directory for the child's init to attach; -1 when this supervisor
// has no run directory.
func (s *Supervisor) escalationDir(c *config.Container) (int, error) {
	if s.opts.RunDir == "" {
		return -1, nil
	}
	e := s.esc()
	e.mu.Lock()
	defer e.mu.Unlock()
	e.stopped = false
	ch := e.children[c.Name]
	switch {
	case ch == nil:
		var err error
		if ch, err = newEscChild(filepath.Join(s.opts.RunDir, "escalate", c.Name)); err != nil {
			return -1, fmt.Errorf("escalation socket: %w", err)
		}
		// A reload may have changed the policy since the unit's spec
		// was made (updateEscalation); a restart of the child does not.
		ch.policy = policyOf(c)
		if p, ok := e.policies[c.Name]; ok {
			ch.policy = p
		}
		e.children[c.Name] = ch
		e.give(c.Name, ch)
	case e.broker == nil:
		e.give(c.Name, ch) // starts one, which gets every child
	}
	return mounts.DetachDir(ch.dir)
}

// updateEscalation gives the broker a child's new policy (a reload that
// changed only escalation keys, which restarts nothing), and waits until
// the broker has it: once a reload returns, a tighter policy holds.
func (s *Supervisor) updateEscalation(c *config.Container) {
	e := s.esc()
	e.mu.Lock()
	p := policyOf(c)
	e.policies[c.Name] = p
	ch := e.children[c.Name]
	if ch == nil || samePolicy(ch.policy, p) {
		e.mu.Unlock()
		return
	}
	ch.policy = p
	b := e.broker
	if b == nil {
		e.mu.Unlock()
		return // the next broker gets it
	}
	done := b.handOver(c.Name, ch)
	e.mu.Unlock()
	select {
	case <-done:
	case <-b.gone:
	case <-time.After(brokerRequestTimeout):
		e.logf("escalation: %s: the broker has not taken the new policy yet", c.Name)
	}
}

// applyEscalation follows an Apply: kept containers get their policy as
// the new config says it (escalation keys are not part of
// config.Container.Equal, so they restart nothing), removed ones lose
// their socket.
func (s *Supervisor) applyEscalation(kept, removed []Spec) {
	for _, sp := range kept {
		if sp.Container != nil {
			s.updateEscalation(sp.Container)
		}
	}
	for _, sp := range removed {
		if sp.Container != nil {
			s.forgetEscalation(sp.Name)
		}
	}
}

// forgetEscalation closes a removed child's socket.
func (s *Supervisor) forgetEscalation(name string) {
	e := s.esc()
	e.mu.Lock()
	defer e.mu.Unlock()
	ch := e.children[name]
	delete(e.children, name)
	delete(e.policies, name)
	if ch == nil {
		return
	}
	os.RemoveAll(ch.dir) // nobody connects any more
	if e.broker == nil {
		ch.ln.Close()
		return
	}
	body, _ := json.Marshal(escalate.Forget{Child: name})
	e.broker.later(func(b *brokerRun) error {
		defer ch.ln.Close() // after any handover queued before
		_, err := b.request(&escalate.Message{Type: escalate.MsgForget, Body: body})
		return err
	})
}

func samePolicy(a, b escalate.Policy) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// newEscChild makes dir (owned by this init's root, 0755: the child's
// users may enter but not write) with a listening socket "sock" in it
// (0666: any user of the child may connect; the broker decides).
func newEscChild(dir string) (*escChild, error) {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "sock")
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	if err == nil {
		err = os.Chmod(path, 0o666)
	}
	if err == nil {
		err = unix.Listen(fd, socketBacklog)
	}
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &escChild{dir: dir, ln: os.NewFile(uintptr(fd), path)}, nil
}

// give hands a child's socket and policy to the broker, starting one if
// none runs. e.mu is held. The handover is queued: no start of a child
// waits for the broker.
func (e *escalation) give(name string, ch *escChild) {
	if e.broker == nil {
		if !e.starting {
			e.start()
		}
		return // the broker gets every child when it starts
	}
	e.broker.handOver(name, ch)
}

// start starts the broker and queues every child's socket for it. e.mu
// is held. A broker that cannot start is tried again with backoff.
func (e *escalation) start() {
	b, err := e.spawn()
	if err != nil {
		e.failures++
		e.logf("escalation broker: %v", err)
		e.retry()
		return
	}
	e.broker = b
	for name, ch := range e.children {
		b.handOver(name, ch)
	}
	go b.work(e)
	go e.watch(b)
}

// retry schedules a start after the backoff of the failures so far. e.mu
// is held.
func (e *escalation) retry() {
	if e.stopped || e.starting {
		return
	}
	e.starting = true
	delay := Backoff(e.failures)
	time.AfterFunc(delay, func() {
		defer e.sup.recoverGoroutine("escalation broker")
		e.mu.Lock()
		defer e.mu.Unlock()
		e.starting = false
		if e.broker == nil && !e.stopped && len(e.children) > 0 {
			e.start()
		}
	})
}

// watch waits for the broker to end and starts another unless the init
// stops it.
func (e *escalation) watch(b *brokerRun) {
	defer e.sup.recoverGoroutine("escalation broker")
	st := <-b.proc.Done()
	b.proc.Close()
	b.ctl.Close()
	close(b.gone)
	e.removeCgroup()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broker == b {
		e.broker = nil
	}
	if e.stopped {
		return
	}
	if time.Since(b.started) >= HealthyRun {
		e.failures = 0
	}
	e.failures++
	e.logf("escalation broker: %s, restarting in %s", st, Backoff(e.failures))
	e.retry()
}

// cgroupDir is where the broker and its sessions live: beside the units,
// under a name no unit can have.
func (e *escalation) cgroupDir() string {
	if e.sup.opts.Cgroups == "" {
		return ""
	}
	return filepath.Join(e.sup.opts.Cgroups, "_escalate")
}

func (e *escalation) removeCgroup() {
	if dir := e.cgroupDir(); dir != "" {
		(&cgroup{path: dir, fd: -1}).Remove()
	}
}

// spawn starts a broker: nest in BrokerMode, its control socketpair as fd
// 3, the init's stderr (its console) as its own.
func (e *escalation) spawn() (*brokerRun, error) {
	opts := e.sup.opts
	ctl, child, err := escalate.Pair()
	if err != nil {
		return nil, err
	}
	defer child.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		ctl.Close()
		return nil, err
	}
	defer null.Close()
	exe := opts.Self
	if exe == "" {
		exe = "/proc/self/exe"
	}
	argv := []string{exe, BrokerMode}
	if opts.LogDir != "" {
		argv = append(argv, "--audit", filepath.Join(opts.LogDir, "escalate.log"))
	}
	if opts.RunDir != "" {
		argv = append(argv, "--limits", filepath.Join(opts.RunDir, "escalate-limits.json"))
	}
	sys := &syscall.SysProcAttr{Setsid: true}
	if opts.WorkloadUserns {
		// Sessions run where this init's services run: in a further user
		// and mount namespace, where no mask of this init can be removed.
		ids, err := sandbox.IdentityRange("escalation broker")
		if err != nil {
			ctl.Close()
			return nil, err
		}
		sys.Cloneflags |= unix.CLONE_NEWUSER | unix.CLONE_NEWNS
		sys.UidMappings, sys.GidMappings = ids.UidMappings(), ids.GidMappings()
		sys.GidMappingsEnableSetgroups = true
		sys.Credential = &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true}
	}
	if dir := e.cgroupDir(); dir != "" {
		e.removeCgroup() // what a broker before left
		if err := os.Mkdir(dir, 0o755); err == nil || errors.Is(err, os.ErrExist) {
			if cg, err := newCgroup(filepath.Join(dir, "broker")); err == nil {
				defer cg.closeFD()
				sys.UseCgroupFD, sys.CgroupFD = true, cg.fd
				argv = append(argv, "--cgroup", dir)
			}
		}
	}
	proc, err := opts.Reaper.Start(argv, &syscall.ProcAttr{
		Dir:   "/",
		Env:   []string{"PATH=" + DefaultPath},
		Files: []uintptr{null.Fd(), 2, 2, child.File().Fd()},
		Sys:   sys,
	})
	if err != nil {
		ctl.Close()
		return nil, err
	}
	ctl.LimitFDs(0) // the broker sends none
	return &brokerRun{proc: proc, started: time.Now(), ctl: ctl, gone: make(chan struct{}), wake: make(chan struct{}, 1)}, nil
}

// handOver queues the child's socket and its policy as they are now; the
// channel is closed once the broker has answered.
func (b *brokerRun) handOver(name string, ch *escChild) <-chan struct{} {
	body, err := json.Marshal(escalate.Listen{Child: name, Policy: ch.policy})
	done := make(chan struct{})
	b.later(func(b *brokerRun) error {
		defer close(done)
		if err != nil {
			return err
		}
		_, err := b.requestFDs(&escalate.Message{Type: escalate.MsgListen, Body: body}, ch.ln)
		return err
	})
	return done
}

// later queues a request for the broker's worker, in order; once the
// worker is done (the broker is gone), f runs at once and fails, letting
// go of what it holds.
func (b *brokerRun) later(f func(*brokerRun) error) {
	b.qmu.Lock()
	if b.drained {
		b.qmu.Unlock()
		f(b)
		return
	}
	b.queue = append(b.queue, f)
	b.qmu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// work sends the queued requests, one after the other, until the broker
// is gone.
func (b *brokerRun) work(e *escalation) {
	defer e.sup.recoverGoroutine("escalation broker requests")
	for {
		b.qmu.Lock()
		q := b.queue
		b.queue = nil
		b.qmu.Unlock()
		for _, f := range q {
			if err := f(b); err != nil {
				e.logf("escalation broker: %v", err)
			}
		}
		select {
		case <-b.wake:
		case <-b.gone:
			// What is left fails at once, and lets go of what it holds.
			b.qmu.Lock()
			q := b.queue
			b.queue, b.drained = nil, true
			b.qmu.Unlock()
			for _, f := range q {
				f(b)
			}
			return
		}
	}
}

// request sends one request to the broker and waits for its answer.
func (b *brokerRun) request(m *escalate.Message) (*escalate.Message, error) {
	return b.requestFDs(m)
}

// requestFDs sends a request with fds. Each request has an id of its
// own: an answer that comes after its request gave up is skipped.
func (b *brokerRun) requestFDs(m *escalate.Message, fds ...*os.File) (*escalate.Message, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.lastID++
	m.ID = b.lastID
	b.ctl.SetDeadline(time.Now().Add(brokerRequestTimeout))
	defer b.ctl.SetDeadline(time.Time{})
	if err := b.ctl.Send(m, fds...); err != nil {
		return nil, fmt.Errorf("%s: %w", m.Type, err)
	}
	for {
		r, rfds, err := b.ctl.Recv()
		for _, f := range rfds {
			f.Close()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m.Type, err)
		}
		if r.ID != m.ID {
			continue // the late answer to an earlier request
		}
		if r.Type == escalate.MsgError {
			return nil, fmt.Errorf("%s: %s", m.Type, r.Error)
		}
		if r.Type != m.Type {
			return nil, fmt.Errorf("the broker answered %s with %s", m.Type, r.Type)
		}
		return r, nil
	}
}

// stopEscalation stops the broker (Shutdown): its sessions end with it.
// The sockets stay, for a StartAll.
func (s *Supervisor) stopEscalation() {
	e := s.esc()
	e.mu.Lock()
	e.stopped = true
	b := e.broker
	e.mu.Unlock()
	if b == nil {
		return
	}
	b.ctl.Close() // the broker ends when its init hangs up
	b.proc.Signal(unix.SIGTERM)
	select {
	case <-b.gone:
	case <-time.After(brokerStopTimeout):
		b.proc.Signal(unix.SIGKILL)
		<-b.gone
	}
}

// RunBroker is the broker process (nest BrokerMode [--audit FILE]
// [--cgroup DIR] [--limits FILE]): it serves the escalation sockets its init hands it on
// fd 3 until the init hangs up, logging to stderr (the init's console).
func RunBroker(args []string) int {
	logf := func(format string, a ...any) { fmt.Fprintf(os.Stderr, "nest: "+format+"\n", a...) }
	fl := flag.NewFlagSet("nest "+BrokerMode, flag.ContinueOnError)
	auditPath := fl.String("audit", "", "audit log `file`")
	cgroupDir := fl.String("cgroup", "", "cgroup v2 `dir` for sessions")
	limits := fl.String("limits", "", "`file` that keeps the failure counts across restarts")
	if err := fl.Parse(args); err != nil || fl.NArg() > 0 {
		logf("%s: an internal mode of nest, started by an init", BrokerMode)
		return 2
	}
	// Nothing this process holds reaches a session: the control socket
	// came in as fd 3 without close-on-exec.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		logf("%s: close_range: %v", BrokerMode, err)
		return 1
	}
	ctl, err := escalate.NewConn(os.NewFile(3, "broker control"))
	if err != nil {
		logf("%s: %v", BrokerMode, err)
		return 1
	}
	audit, err := escalate.OpenAudit(*auditPath, os.Stderr)
	if err != nil {
		logf("%v (attempts go to the console only)", err)
		audit, _ = escalate.OpenAudit("", os.Stderr)
	}
	defer audit.Close()
	b := &escalate.Broker{Logf: logf, Audit: audit, Cgroup: *cgroupDir, LimitsFile: *limits}
	if err := b.Serve(ctl); err != nil && !errors.Is(err, io.EOF) {
		logf("%s: %v", BrokerMode, err)
		return 1
	}
	return 0
}

// ErrNoBroker: no broker runs here (no child container has started).
var ErrNoBroker = errors.New("no escalation broker runs here: no child container has started")

func (s *Supervisor) brokerNow() (*brokerRun, error) {
	e := s.esc()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broker == nil {
		return nil, ErrNoBroker
	}
	return e.broker, nil
}

// PendingEscalations lists the requests of children waiting for nest
// approve.
func (s *Supervisor) PendingEscalations(ctx context.Context) ([]escalate.Pending, error) {
	b, err := s.brokerNow()
	if errors.Is(err, ErrNoBroker) {
		return []escalate.Pending{}, nil
	}
	if err != nil {
		return nil, err
	}
	r, err := b.request(&escalate.Message{Type: escalate.MsgPending, Body: json.RawMessage("{}")})
	if err != nil {
		return nil, err
	}
	var list []escalate.Pending
	if err := json.Unmarshal(r.Body, &list); err != nil {
		return nil, fmt.Errorf("escalation broker: %w", err)
	}
	return list, nil
}

// DecideEscalation approves or denies a pending request.
func (s *Supervisor) DecideEscalation(ctx context.Context, id uint64, approve bool) error {
	b, err := s.brokerNow()
	if err != nil {
		return err
	}
	body, _ := json.Marshal(escalate.Decide{ID: id, Approve: approve})
	_, err = b.request(&escalate.Message{Type: escalate.MsgDecide, Body: body})
	return err
}

// escalations serves /v1/escalations (GET: the pending requests) and
// /v1/escalations/ID/approve|deny (POST).
func (c *Control) escalations(w *reply, r *request, rest []string, want func(string) bool) {
	switch len(rest) {
	case 0:
		if !want("GET") {
			return
		}
		list, err := c.Sup.PendingEscalations(r.ctx)
		if err != nil {
			w.error(502, err)
			return
		}
		w.json(200, list)
	case 2:
		id, err := strconv.ParseUint(rest[0], 10, 64)
		if err != nil || (rest[1] != "approve" && rest[1] != "deny") {
			w.error(404, fmt.Errorf("no such path %s (want /v1/escalations/ID/approve or /deny)", r.path))
			return
		}
		if !want("POST") {
			return
		}
		if err := c.Sup.DecideEscalation(r.ctx, id, rest[1] == "approve"); err != nil {
			w.error(409, err)
			return
		}
		w.json(200, map[string]string{})
	default:
		w.error(404, fmt.Errorf("no such path %s", r.path))
	}
}

// Escalations lists the requests of this init's children that wait for
// nest approve.
func (c *Client) Escalations(ctx context.Context) ([]escalate.Pending, error) {
	var out []escalate.Pending
	return out, c.do(ctx, "GET", "/v1/escalations", &out)
}

// DecideEscalation approves or denies the pending request id.
func (c *Client) DecideEscalation(ctx context.Context, id uint64, approve bool) error {
	action := "deny"
	if approve {
		action = "approve"
	}
	return c.do(ctx, "POST", fmt.Sprintf("/v1/escalations/%d/%s", id, action), nil)
}
