package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
)

// fakeContainer adds a running container unit called name to s without
// starting anything: its link's other end is returned, for the test to
// play the container's init on.
func fakeContainer(t testing.TB, s *Supervisor, name string, kind config.Kind) *escalate.Conn {
	t.Helper()
	parent, child, err := escalate.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { parent.Close(); child.Close() })
	parent.LimitFDs(0)
	run := newContainerRun(parent, name, s.opts.Logf)
	run.subnets = s.descendantSubnet
	go run.read()
	u := newUnit(s, Spec{
		Service:   config.Service{Name: name, Restart: config.RestartOnFailure},
		Container: &config.Container{Name: name, Kind: kind},
	})
	close(u.done) // no goroutine runs it: commands return at once
	u.state, u.pid, u.link = StateRunning, 4242, run
	s.mu.Lock()
	s.units[name] = u
	s.order = append(s.order, name)
	s.mu.Unlock()
	return child
}

// serveChild plays a well-behaved child init on link: it answers from sup.
func serveChild(t *testing.T, link *escalate.Conn, sup *Supervisor) {
	t.Helper()
	p := NewParentLink(link)
	done := make(chan error, 1)
	go func() { done <- p.Serve(sup, func(string) {}, sup.opts.Logf) }()
	t.Cleanup(func() {
		link.Close()
		<-done
	})
}

func sleeper(name string) Spec {
	return svc(name, config.RestartNo, "/bin/sleep", "60")
}

func waitRunning(t *testing.T, s *Supervisor, names ...string) {
	t.Helper()
	for _, n := range names {
		waitFor(t, s, n, "running", func(st Status) bool { return st.State == StateRunning })
	}
}

// names flattens a tree into paths, with "…(why)" where it is incomplete.
func names(list []Status, prefix string) []string {
	var out []string
	for _, st := range list {
		p := prefix + st.Name
		out = append(out, p)
		out = append(out, names(st.Children, p+"/")...)
		if st.Incomplete != "" {
			out = append(out, p+"/…("+st.Incomplete+")")
		}
	}
	return out
}

// TestLinkTree: a listing reaches two levels down through the links, and
// actions on unit paths reach the unit they name.
func TestLinkTree(t *testing.T) {
	root, _ := newTestSupervisor(t)
	alice, _ := newTestSupervisor(t)
	dev, _ := newTestSupervisor(t)
	root.Apply([]Spec{sleeper("syslog")})
	alice.Apply([]Spec{sleeper("sshd")})
	dev.Apply([]Spec{sleeper("app")})
	waitRunning(t, root, "syslog")
	waitRunning(t, alice, "sshd")
	waitRunning(t, dev, "app")
	serveChild(t, fakeContainer(t, root, "alice", config.KindUser), alice)
	serveChild(t, fakeContainer(t, alice, "dev", config.KindUser), dev)
	ctx := context.Background()

	tree := root.Tree(ctx, MaxTreeDepth, TreeTimeout)
	want := "syslog alice alice/sshd alice/dev alice/dev/app"
	if got := strings.Join(names(tree, ""), " "); got != want {
		t.Fatalf("Tree = %s, want %s", got, want)
	}
	if app := tree[1].Children[1].Children[0]; app.State != StateRunning || app.Pid == 0 || app.Kind != "service" {
		t.Errorf("alice/dev/app = %+v, want a running service with a pid", app)
	}
	// Two levels only: alice's units, and dev marked as cut.
	got := strings.Join(names(root.Tree(ctx, 2, TreeTimeout), ""), " ")
	if want := "syslog alice alice/sshd alice/dev alice/dev/…(" + incompleteDepth + ")"; got != want {
		t.Errorf("Tree(depth 2) = %s, want %s", got, want)
	}

	st, err := root.Act(ctx, "status", "alice/dev/app", 0)
	if err != nil || st.Name != "alice/dev/app" || st.State != StateRunning {
		t.Errorf("status alice/dev/app = %+v, %v", st, err)
	}
	st, err = root.Act(ctx, "stop", "alice/dev/app", 0)
	if err != nil || st.State != StateStopped {
		t.Errorf("stop alice/dev/app = %+v, %v, want stopped", st, err)
	}
	if u, _ := dev.Unit("app"); u.Status().State != StateStopped {
		t.Errorf("app in dev = %s after stop through the path", u.Status().State)
	}
	st, err = root.Act(ctx, "start", "alice/dev/app", 0)
	if err != nil || st.State != StateRunning {
		t.Errorf("start alice/dev/app = %+v, %v, want running", st, err)
	}
	sshd, _ := alice.Unit("sshd")
	old := sshd.Status().Pid
	st, err = root.Act(ctx, "restart", "alice/sshd", 0)
	if err != nil || st.State != StateRunning || st.Name != "alice/sshd" || st.Pid == old {
		t.Errorf("restart alice/sshd = %+v, %v, want running with a pid other than %d", st, err, old)
	}

	errs := []struct{ action, path, want string }{
		{"status", "nope/x", `no unit named "nope"`},
		{"status", "syslog/x", "syslog is a service, not a container"},
		{"status", "alice/nope", `alice: no unit named "nope"`},
		{"status", "alice/sshd/x", "alice: sshd is a service, not a container"},
		{"status", "alice/dev/nope", `alice: dev: no unit named "nope"`},
		{"status", "alice/../etc", "bad unit path"},
		{"status", "a/b/c/d/e/f/g/h/i", "deeper than 8 levels"},
		{"kill", "alice/sshd", "no action"},
	}
	for _, e := range errs {
		if _, err := root.Act(ctx, e.action, e.path, 0); err == nil || !strings.Contains(err.Error(), e.want) {
			t.Errorf("%s %s = %v, want an error with %q", e.action, e.path, err, e.want)
		}
	}
}

// TestLinkControl: the control socket lists the tree with ?tree=1 and takes
// a unit path as one escaped segment.
func TestLinkControl(t *testing.T) {
	root, _ := newTestSupervisor(t)
	alice, _ := newTestSupervisor(t)
	alice.Apply([]Spec{svc("sshd", config.RestartNo, "/bin/sh", "-c", "echo sshd up; exec sleep 60")})
	waitRunning(t, alice, "sshd")
	serveChild(t, fakeContainer(t, root, "alice", config.KindUser), alice)
	c, sock := serveControl(t, &Control{Sup: root, Version: "test"})
	ctx := context.Background()

	list, err := c.Tree(ctx)
	if got := strings.Join(names(list, ""), " "); err != nil || got != "alice alice/sshd" {
		t.Errorf("Tree = %s, %v", got, err)
	}
	list, err = c.Units(ctx)
	if err != nil || len(list) != 1 || list[0].Children != nil {
		t.Errorf("Units = %+v, %v, want alice without children", list, err)
	}
	st, err := c.Unit(ctx, "alice/sshd")
	if err != nil || st.Name != "alice/sshd" || st.State != StateRunning {
		t.Errorf("Unit(alice/sshd) = %+v, %v", st, err)
	}
	if st, err = c.Act(ctx, "stop", "alice/sshd"); err != nil || st.State != StateStopped {
		t.Errorf("stop alice/sshd = %+v, %v", st, err)
	}
	if st, err = c.Act(ctx, "start", "alice/sshd"); err != nil || st.State != StateRunning {
		t.Errorf("start alice/sshd = %+v, %v", st, err)
	}
	var out strings.Builder
	for deadline := time.Now().Add(5 * time.Second); ; {
		out.Reset()
		err := c.Logs(ctx, "alice/sshd", false, &out)
		// Started twice above: once or twice, by now.
		if err == nil && strings.HasPrefix(out.String(), "sshd up\n") && strings.Count(out.String(), "sshd up") <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("Logs(alice/sshd) = %q, %v; want sshd's output", out.String(), err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	raw := []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/v1/units/alice%2Fsshd", 200, `"name":"alice/sshd"`},
		{"GET", "/v1/units/alice/sshd", 404, "alice%2Fdev"},
		{"GET", "/v1/units/alice%2Fnope", 409, `no unit named`},
		{"GET", "/v1/units/bob%2Fsshd", 404, `no unit named \"bob\"`},
		{"GET", "/v1/units/alice%2FSSHD", 400, "bad unit path"},
		{"POST", "/v1/units/alice%2Fsshd", 405, "want GET"},
		{"GET", "/v1/units/alice%2Fsshd/stop", 405, "want POST"},
		{"GET", "/v1/units/alice%2Fsshd/logs", 200, "sshd up"},
		{"GET", "/v1/units/alice%2Fnope/logs", 409, "no unit named"},
		{"GET", "/v1/units/a/b/c/d", 404, "%2F"},
		{"GET", "/v1/units/alice%zz", 400, ""},
	}
	for _, r := range raw {
		code, body, err := call(ctx, sock, r.method, r.path)
		if err != nil {
			t.Errorf("%s %s: %v", r.method, r.path, err)
			continue
		}
		b, _ := io.ReadAll(body)
		body.Close()
		if code != r.code || !strings.Contains(string(b), r.want) {
			t.Errorf("%s %s = %d %s, want %d with %q", r.method, r.path, code, b, r.code, r.want)
		}
	}
}

// hostileChild reads the parent's requests on link and answers each with
// what answer makes of it (nothing when it returns nil).
func hostileChild(t *testing.T, link *escalate.Conn, answer func(m *escalate.Message) []*escalate.Message) {
	t.Helper()
	go func() {
		for {
			m, _, err := link.Recv()
			if err != nil {
				return
			}
			for _, r := range answer(m) {
				link.Send(r)
			}
		}
	}()
}

func subtreeBody(t *testing.T, units []Status, incomplete string) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(subtreeReply{Units: units, Incomplete: incomplete})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestLinkHostileChild: whatever a child answers (or does not), the
// parent's listing and actions go on, with the child's part marked
// incomplete or refused, and what the child reports is checked before it
// is shown.
func TestLinkHostileChild(t *testing.T) {
	fine := []Status{{Name: "ok", Kind: "service", State: StateRunning, Pid: 7}}
	tests := []struct {
		name   string
		answer func(t *testing.T, m *escalate.Message) []*escalate.Message
		want   string // the tree's names
		act    string // the error of "status evil/ok", "" for success
	}{
		{"silent", func(*testing.T, *escalate.Message) []*escalate.Message { return nil },
			"evil evil/…(" + incompleteTimeout + ")", "did not answer in time"},
		{"wrong-id", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			return []*escalate.Message{{Type: m.Type, ID: m.ID + 1000, Body: subtreeBody(t, fine, "")}}
		}, "evil evil/…(" + incompleteTimeout + ")", "did not answer in time"},
		{"id-zero", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			return []*escalate.Message{{Type: m.Type, Body: subtreeBody(t, fine, "")}}
		}, "evil evil/…(" + incompleteTimeout + ")", "did not answer in time"},
		{"wrong-type", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			typ := msgAct
			if m.Type == msgAct {
				typ = msgSubtree
			}
			return []*escalate.Message{{Type: typ, ID: m.ID, Body: subtreeBody(t, fine, "")}}
		}, "evil evil/…(the container's init answered subtree with act)", "answered act with subtree"},
		{"error", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			return []*escalate.Message{{Type: msgError, ID: m.ID, Error: "no\x1b[31m way"}}
		}, "evil evil/…(no?[31m way)", "no?[31m way"},
		{"bad-body", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: json.RawMessage(`{"units":[],"extra":1}`)}}
		}, "evil evil/…(invalid answer)", "invalid answer"},
		{"two-answers", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			if m.Type == msgAct {
				b, _ := json.Marshal(fine[0])
				return []*escalate.Message{{Type: msgAct, ID: m.ID, Body: b}, {Type: msgAct, ID: m.ID, Body: b}}
			}
			b := subtreeBody(t, fine, "")
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: b}, {Type: m.Type, ID: m.ID, Body: b}}
		}, "evil evil/ok", ""},
		{"lies", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			if m.Type == msgAct {
				b, _ := json.Marshal(Status{Name: "x", Kind: "rootkit", State: "pwned", Reason: "\x1b]0;title\a", Pid: -5,
					Children: []Status{{Name: "ghost"}}})
				return []*escalate.Message{{Type: msgAct, ID: m.ID, Body: b}}
			}
			units := []Status{
				{Name: "ok", Kind: "service", State: StateRunning, Reason: "\x1b[2J", Children: []Status{{Name: "ghost"}}},
				{Name: "../../etc", Kind: "service", State: StateRunning},
				{Name: "odd", Kind: "rootkit", State: "pwned", Pid: -1},
			}
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: subtreeBody(t, units, "")}}
		}, "evil evil/ok evil/odd evil/…(" + incompleteInvalid + ")", ""},
		{"deep", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			// A chain far deeper than asked for, each a container.
			n := Status{Name: "leaf", Kind: "service", State: StateRunning}
			for i := 20; i > 0; i-- {
				n = Status{Name: fmt.Sprint("d", i), Kind: "user", State: StateRunning, Children: []Status{n}}
			}
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: subtreeBody(t, []Status{n}, "")}}
		}, "evil evil/d1 evil/d1/d2 evil/d1/d2/d3 evil/d1/d2/d3/d4 evil/d1/d2/d3/d4/d5 evil/d1/d2/d3/d4/d5/d6 evil/d1/d2/d3/d4/d5/d6/d7 " +
			"evil/d1/d2/d3/d4/d5/d6/d7/…(" + incompleteDepth + ")", "invalid answer"},
		{"wide", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			// More units than MaxTreeNodes, in as few bytes as will do.
			var b strings.Builder
			b.WriteString(`{"units":[`)
			for i := range 1500 {
				if i > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, `{"name":"%d"}`, i)
			}
			b.WriteString(`]}`)
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: json.RawMessage(b.String())}}
		}, "", "invalid answer"},
		{"incomplete", func(t *testing.T, m *escalate.Message) []*escalate.Message {
			return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: subtreeBody(t, fine, "cut\x00short")}}
		}, "evil evil/ok evil/…(cut?short)", "invalid answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, _ := newTestSupervisor(t)
			child := fakeContainer(t, s, "evil", config.KindUser)
			hostileChild(t, child, func(m *escalate.Message) []*escalate.Message { return tt.answer(t, m) })
			run := s.units["evil"].link
			start := time.Now()
			tree := s.Tree(context.Background(), MaxTreeDepth, 300*time.Millisecond)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Tree took %s with a timeout of 300ms", d)
			}
			got := strings.Join(names(tree, ""), " ")
			switch tt.name {
			case "wide":
				if n := countNodes(tree); n != MaxTreeNodes || tree[0].Incomplete != incompleteNodes {
					t.Errorf("wide tree: %d nodes, incomplete %q; want %d and %q", n, tree[0].Incomplete, MaxTreeNodes, incompleteNodes)
				}
			case "lies":
				if got != tt.want {
					t.Errorf("Tree = %s, want %s", got, tt.want)
				}
				ok, odd := tree[0].Children[0], tree[0].Children[1]
				if ok.Reason != "?[2J" || ok.Children != nil || odd.Kind != "unknown" || odd.State != "unknown" || odd.Pid != 0 {
					t.Errorf("unchecked fields reached the listing: %+v %+v", ok, odd)
				}
			default:
				if got != tt.want {
					t.Errorf("Tree = %s, want %s", got, tt.want)
				}
			}

			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			st, err := s.Act(ctx, "status", "evil/ok", 0)
			switch {
			case tt.name == "silent" || tt.name == "wrong-id" || tt.name == "id-zero":
				if err == nil || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
					t.Errorf("status evil/ok = %+v, %v, want the caller's deadline", st, err)
				}
			case tt.act == "":
				if err != nil || st.Name != "evil/ok" {
					t.Errorf("status evil/ok = %+v, %v", st, err)
				}
				if tt.name == "lies" && (st.State != "unknown" || st.Kind != "unknown" || st.Reason != "?]0;title?" || st.Pid != 0 || st.Children != nil) {
					t.Errorf("unchecked fields reached the status: %+v", st)
				}
			case tt.name == "deep" || tt.name == "wide" || tt.name == "incomplete":
				if err == nil || !strings.Contains(err.Error(), tt.act) {
					t.Errorf("status evil/ok = %+v, %v, want an error with %q", st, err, tt.act)
				}
			default:
				if err == nil || !strings.Contains(err.Error(), tt.act) {
					t.Errorf("status evil/ok = %+v, %v, want an error with %q", st, err, tt.act)
				}
			}
			// Nothing is left waiting, and the link still reads.
			time.Sleep(20 * time.Millisecond)
			if pending := run.reqs.len(); pending != 0 {
				t.Errorf("%d requests still pending", pending)
			}
			select {
			case <-run.down:
				t.Errorf("the link stopped reading")
			default:
			}
		})
	}
}

// TestLinkChildRequests: a child may not ask its parent anything; a
// broken packet ends the link, and the parent's other units go on.
func TestLinkChildRequests(t *testing.T) {
	s, log := newTestSupervisor(t)
	s.Apply([]Spec{sleeper("syslog")})
	waitRunning(t, s, "syslog")
	child := fakeContainer(t, s, "evil", config.KindUser)
	run := s.units["evil"].link

	for _, m := range []*escalate.Message{
		{Type: msgSubtree, ID: 99},
		{Type: msgAct, ID: 100, Body: json.RawMessage(`{"action":"stop","path":"syslog"}`)},
	} {
		if err := child.Send(m); err != nil {
			t.Fatal(err)
		}
		child.SetReadDeadline(time.Now().Add(2 * time.Second))
		r, _, err := child.Recv()
		if err != nil || r.Type != msgError || r.ID != m.ID || !strings.Contains(r.Error, "no requests") {
			t.Errorf("%s request from the child: answer %+v, %v; want an error", m.Type, r, err)
		}
	}
	// Messages only a parent sends, and a request without an id: ignored,
	// unanswered.
	for _, m := range []*escalate.Message{
		{Type: msgShutdown}, {Type: msgSpec, ID: 5}, {Type: msgAct},
		{Type: msgState, Body: json.RawMessage(`{}`)},
	} {
		if err := child.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	child.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if r, _, err := child.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("answer %+v, %v; want none", r, err)
	}
	if st := s.units["syslog"].Status(); st.State != StateRunning {
		t.Errorf("syslog = %s after the child's requests", st.State)
	}
	if !log.has("evil: link: subtree request 99 from the child refused") || !log.has("unexpected shutdown from the child") {
		t.Errorf("refusals not logged: %q", log.lines)
	}

	// A packet over the size limit breaks the protocol: reading ends, and
	// requests fail at once instead of waiting.
	big := make([]byte, escalate.MaxMessage+10)
	for i := range big {
		big[i] = ' '
	}
	copy(big, `{"type":"ready"}`)
	raw, err := child.File().SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Write(func(fd uintptr) bool {
		_, err = unix.Write(int(fd), big)
		return err != unix.EAGAIN
	})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-run.down:
	case <-time.After(2 * time.Second):
		t.Fatal("reading goes on after a packet over the limit")
	}
	tree := s.Tree(context.Background(), MaxTreeDepth, TreeTimeout)
	if got := strings.Join(names(tree, ""), " "); !strings.Contains(got, "syslog evil evil/…(the link to the container's init is down)") {
		t.Errorf("Tree = %s", got)
	}
	if !log.has("protocol violation") {
		t.Errorf("protocol violation not logged: %q", log.lines)
	}
}

// TestLinkNoteLimit: a child that floods the link fills no log.
func TestLinkNoteLimit(t *testing.T) {
	s, log := newTestSupervisor(t)
	child := fakeContainer(t, s, "evil", config.KindUser)
	for i := range 200 {
		if err := child.Send(&escalate.Message{Type: msgError, ID: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	run := s.units["evil"].link
	deadline := time.Now().Add(5 * time.Second)
	for {
		run.mu.Lock()
		n := run.notes
		run.mu.Unlock()
		if n >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 200 messages read", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A request after the flood still gets its answer.
	hostileChild(t, child, func(m *escalate.Message) []*escalate.Message {
		return []*escalate.Message{{Type: m.Type, ID: m.ID, Body: subtreeBody(t, nil, "")}}
	})
	tree := s.Tree(context.Background(), MaxTreeDepth, TreeTimeout)
	if len(tree) != 1 || tree[0].Incomplete != "" {
		t.Errorf("Tree after a flood = %+v", tree)
	}
	log.mu.Lock()
	n := len(log.lines)
	log.mu.Unlock()
	if n > maxNotes+1 {
		t.Errorf("%d log lines for a flood, want at most %d", n, maxNotes+1)
	}
}

// TestLinkParentRequests: the child's end refuses what it does not take.
func TestLinkParentRequests(t *testing.T) {
	s, _ := newTestSupervisor(t)
	s.Apply([]Spec{sleeper("app")})
	waitRunning(t, s, "app")
	parent, child, err := escalate.Pair()
	if err != nil {
		t.Fatal(err)
	}
	defer parent.Close()
	shutdowns := make(chan string, 4)
	p := NewParentLink(child)
	done := make(chan error, 1)
	go func() { done <- p.Serve(s, func(a string) { shutdowns <- a }, nil) }()

	ask := func(m *escalate.Message) *escalate.Message {
		t.Helper()
		if err := parent.Send(m); err != nil {
			t.Fatal(err)
		}
		parent.SetReadDeadline(time.Now().Add(5 * time.Second))
		r, _, err := parent.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	tests := []struct {
		m    *escalate.Message
		want string
	}{
		{&escalate.Message{Type: msgAct, ID: 1, Body: json.RawMessage(`{"action":"kill","path":"app"}`)}, "no action"},
		{&escalate.Message{Type: msgAct, ID: 2, Body: json.RawMessage(`{"action":"status","path":"app","x":1}`)}, "unknown field"},
		{&escalate.Message{Type: msgAct, ID: 3}, "no body"},
		{&escalate.Message{Type: msgSpec, ID: 4, Body: json.RawMessage(`{}`)}, "takes no spec"},
		{&escalate.Message{Type: msgReady, ID: 5}, "takes no ready"},
	}
	for _, tt := range tests {
		if r := ask(tt.m); r.Type != msgError || r.ID != tt.m.ID || !strings.Contains(r.Error, tt.want) {
			t.Errorf("%s %d: answer %+v, want an error with %q", tt.m.Type, tt.m.ID, r, tt.want)
		}
	}
	r := ask(&escalate.Message{Type: msgSubtree, ID: 6, Body: json.RawMessage(`{"depth":1,"timeout_ms":999999}`)})
	var reply subtreeReply
	if err := escalate.DecodeBody(r, &reply); err != nil || r.ID != 6 || len(reply.Units) != 1 || reply.Units[0].Name != "app" {
		t.Errorf("subtree: %+v %+v, %v", r, reply, err)
	}
	parent.Send(&escalate.Message{Type: msgShutdown, Body: json.RawMessage(`{"action":"reboot"}`)})
	parent.Send(&escalate.Message{Type: msgShutdown})
	for _, want := range []string{"reboot", "poweroff"} {
		select {
		case a := <-shutdowns:
			if a != want {
				t.Errorf("shutdown action %q, want %q", a, want)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("no shutdown %s", want)
		}
	}
	parent.Close()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "EOF") {
		t.Errorf("Serve after the parent hung up = %v, want EOF", err)
	}
}

// TestFitReply: an answer too large for one packet is cut breadth first
// and says so; one that fits is whole.
func TestFitReply(t *testing.T) {
	var units []Status
	for i := range 50 {
		c := Status{Name: fmt.Sprint("c", i), Kind: "user", State: StateRunning, Exec: []string{strings.Repeat("x", 100)}}
		for j := range 20 {
			c.Children = append(c.Children, Status{Name: fmt.Sprint("s", j), Kind: "service", State: StateRunning,
				Exec: []string{strings.Repeat("y", 100)}})
		}
		units = append(units, c)
	}
	b := fitReply(units, subtreeReplyLimit)
	if len(b) > subtreeReplyLimit {
		t.Fatalf("fitReply = %d bytes, limit %d", len(b), subtreeReplyLimit)
	}
	var r subtreeReply
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Units) != 50 || r.Incomplete != "" {
		t.Errorf("top level: %d units, incomplete %q; want all 50, complete", len(r.Units), r.Incomplete)
	}
	cut := 0
	for _, u := range r.Units {
		if u.Incomplete == incompleteSize {
			cut++
		}
	}
	if cut == 0 || countNodes(r.Units) < 200 {
		t.Errorf("%d units marked cut, %d nodes kept", cut, countNodes(r.Units))
	}
	// Breadth first: every unit kept at level 2 comes before any cut one.
	seenCut := false
	for _, u := range r.Units {
		if len(u.Children) < 20 {
			seenCut = true
		} else if seenCut {
			t.Errorf("%s kept whole after an earlier unit was cut", u.Name)
		}
	}

	// Too many at the top level: the list itself is cut.
	var flat []Status
	for i := range 1000 {
		flat = append(flat, Status{Name: fmt.Sprint("u", i), Exec: []string{strings.Repeat("z", 100)}})
	}
	b = fitReply(flat, subtreeReplyLimit)
	r = subtreeReply{}
	if err := json.Unmarshal(b, &r); err != nil || len(b) > subtreeReplyLimit || len(r.Units) == 0 || len(r.Units) == 1000 ||
		!strings.HasPrefix(r.Incomplete, incompleteSize) {
		t.Errorf("flat: %d bytes, %d units, incomplete %q, %v", len(b), len(r.Units), r.Incomplete, err)
	}
	if b := fitReply(nil, 100); string(b) != `{"units":[]}` {
		t.Errorf("fitReply(nil) = %s", b)
	}
}

func TestMemoryInStatus(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "memory.current"), []byte("123456\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _ := newTestSupervisor(t)
	u := newUnit(s, svc("x", config.RestartNo, "/bin/true"))
	u.cgroup = dir
	if st := u.Status(); st.Memory != 123456 {
		t.Errorf("Memory = %d, want 123456", st.Memory)
	}
	u.cgroup = filepath.Join(dir, "gone")
	if st := u.Status(); st.Memory != 0 {
		t.Errorf("Memory of a missing cgroup = %d, want 0", st.Memory)
	}
	b, _ := json.Marshal(u.Status())
	if strings.Contains(string(b), "memory") {
		t.Errorf("status without memory has the field: %s", b)
	}
}

// TestLinkLogsHostileChild: a child's logs answers are checked (a chunk
// over the limit, a cursor beyond the end or before its own bytes are
// refused), and a reading that does not follow ends when a child's cursor
// does not move, however much the child claims to have.
func TestLinkLogsHostileChild(t *testing.T) {
	root, _ := newTestSupervisor(t)
	link := fakeContainer(t, root, "alice", config.KindUser)
	var answer atomic.Value // func(*escalate.Message) []*escalate.Message
	hostileChild(t, link, func(m *escalate.Message) []*escalate.Message {
		return answer.Load().(func(*escalate.Message) []*escalate.Message)(m)
	})
	chunk := func(c LogChunk) func(*escalate.Message) []*escalate.Message {
		return func(m *escalate.Message) []*escalate.Message {
			b, _ := json.Marshal(c)
			return []*escalate.Message{{Type: msgLogs, ID: m.ID, Body: b}}
		}
	}
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		c    LogChunk
	}{
		{"too big", LogChunk{Data: make([]byte, logsChunk+1), Cursor: logsChunk + 1, End: logsChunk + 1}},
		{"cursor beyond the end", LogChunk{Data: []byte("x"), Cursor: 10, End: 5}},
		{"cursor before its bytes", LogChunk{Data: []byte("xyz"), Cursor: 1, End: 5}},
	} {
		answer.Store(chunk(tc.c))
		if _, err := root.LogChunk(ctx, "alice/x", 0, 0); err == nil || !strings.Contains(err.Error(), "invalid answer") {
			t.Errorf("%s: LogChunk = %v, want an invalid answer", tc.name, err)
		}
	}
	answer.Store(func(m *escalate.Message) []*escalate.Message {
		return []*escalate.Message{{Type: msgLogs, ID: m.ID, Body: json.RawMessage(`{"data":"eA==","cursor":"1"}`)}}
	})
	if _, err := root.LogChunk(ctx, "alice/x", 0, 0); err == nil {
		t.Error("a malformed answer is taken")
	}

	// Always the same byte at the same cursor, with an end far away.
	answer.Store(chunk(LogChunk{Data: []byte("x"), Cursor: 1, End: 1 << 40}))
	_, sock := serveControl(t, &Control{Sup: root, Version: "test"})
	var out strings.Builder
	done := make(chan error, 1)
	go func() { done <- NewClient(sock).Logs(ctx, "alice/x", false, &out) }()
	select {
	case err := <-done:
		if err != nil || out.String() != "x" {
			t.Errorf("Logs of a child that does not move on = %q, %v; want the first answer's byte only", out.String(), err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Logs never ends on a child whose cursor does not move")
	}
}
