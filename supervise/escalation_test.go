package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
)

// escalateRun runs argv through the escalation socket at sock, with stdin
// from /dev/null and the output collected.
func escalateRun(t *testing.T, sock string, argv ...string) (string, int, error) {
	t.Helper()
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		out <- string(b)
	}()
	c := &escalate.Client{Socket: sock, Argv: argv, Stdin: null, Stdout: w, Stderr: w}
	code, err := c.Run()
	w.Close()
	return <-out, code, err
}

func (e *escalation) current() *brokerRun {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.broker
}

// TestEscalationManager: the supervisor makes each child's socket in a
// directory of its own, starts the broker (this test binary in
// BrokerMode) and hands it the sockets with their policies; a reload's
// new policy applies without a restart; a killed broker is replaced and
// serves the same sockets; confirm goes through PendingEscalations and
// DecideEscalation; a removed child's socket is gone; Shutdown stops the
// broker.
func TestEscalationManager(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: sessions run as the policy's user")
	}
	s, log := newTestSupervisor(t)
	c := &config.Container{Name: "alice", Kind: config.KindUser, Escalate: config.Escalate{Method: config.EscalateAllow}}
	tree, err := s.escalationDir(c)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		t.Errorf("the detached tree is not a directory: %v %o", err, st.Mode)
	}
	unix.Close(tree)
	dir := filepath.Join(s.opts.RunDir, "escalate", "alice")
	sock := filepath.Join(dir, "sock")
	for path, want := range map[string]os.FileMode{dir: os.ModeDir | 0o755, sock: os.ModeSocket | 0o666} {
		if fi, err := os.Stat(path); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, mode %v; want %v", path, err, fi.Mode(), want)
		}
	}
	if out, code, err := escalateRun(t, sock, "id", "-u"); err != nil || code != 0 || out != "0\n" {
		t.Fatalf("allow: %q, %d, %v\n%s", out, code, err, log.lines)
	}

	// A reload with another policy: no restart, the broker has it.
	deny := *c
	deny.Escalate.Method = config.EscalateDeny
	s.applyEscalation([]Spec{{Service: config.Service{Name: "alice"}, Container: &deny}}, nil)
	var ee *escalate.ExitError
	if _, _, err := escalateRun(t, sock, "id"); !errors.As(err, &ee) || !strings.Contains(ee.Msg, "denied") {
		t.Errorf("after the reload to deny: %v", err)
	}

	// The broker dies: another serves the same socket, with the policy.
	first := s.esc().current()
	first.proc.Signal(unix.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for b := s.esc().current(); b == nil || b == first; b = s.esc().current() {
		if time.Now().After(deadline) {
			t.Fatalf("no new broker: %q", log.lines)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !log.has("escalation broker: killed by SIGKILL, restarting in") {
		t.Errorf("the broker's end is not logged: %q", log.lines)
	}
	if _, _, err := escalateRun(t, sock, "id"); !errors.As(err, &ee) || !strings.Contains(ee.Msg, "denied") {
		t.Errorf("after the broker's restart: %v", err)
	}

	// confirm: the request waits in the broker until it is decided here.
	confirm := *c
	confirm.Escalate.Method = config.EscalateConfirm
	s.applyEscalation([]Spec{{Service: config.Service{Name: "alice"}, Container: &confirm}}, nil)
	done := make(chan error, 1)
	go func() {
		out, _, err := escalateRun(t, sock, "id", "-u")
		if err == nil && out != "0\n" {
			err = errors.New("printed " + out)
		}
		done <- err
	}()
	var list []escalate.Pending
	for len(list) == 0 {
		if list, err = s.PendingEscalations(context.Background()); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("no pending request")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if list[0].Child != "alice" || strings.Join(list[0].Command, " ") != "id -u" {
		t.Errorf("pending %+v", list)
	}
	if err := s.DecideEscalation(context.Background(), list[0].ID, true); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("approved: %v", err)
	}
	if err := s.DecideEscalation(context.Background(), list[0].ID, true); err == nil {
		t.Errorf("a second decision on request %d was taken", list[0].ID)
	}

	// Removed: the socket is gone.
	s.applyEscalation(nil, []Spec{{Service: config.Service{Name: "alice"}, Container: c}})
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after the child's removal: %v", dir, err)
	}
	b := s.esc().current()
	s.Shutdown()
	select {
	case <-b.gone:
	case <-time.After(5 * time.Second):
		t.Errorf("the broker outlived Shutdown")
	}
}

// TestLinkEscalationMessages: escalation messages up a child's link reach
// nothing: the link serves no escalation, and the broker never hears of
// them.
func TestLinkEscalationMessages(t *testing.T) {
	s, log := newTestSupervisor(t)
	child := fakeContainer(t, s, "evil", config.KindUser)
	for _, m := range []*escalate.Message{
		{Type: escalate.MsgRequest, ID: 7, Body: json.RawMessage(`{"argv":["id"]}`)},
		{Type: escalate.MsgAuth, ID: 8, Body: json.RawMessage(`{"password":"x"}`)},
		{Type: escalate.MsgDecide, ID: 9, Body: json.RawMessage(`{"id":1,"approve":true}`)},
		{Type: escalate.MsgPending, ID: 10},
		{Type: escalate.MsgListen, ID: 11, Body: json.RawMessage(`{"child":"evil","policy":{"method":"allow"}}`)},
	} {
		if err := child.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	child.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if r, _, err := child.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the parent answered %+v, %v; want nothing", r, err)
	}
	if !log.has("evil: link: unexpected request from the child, ignored") {
		t.Errorf("not logged: %q", log.lines)
	}
	if s.escalation != nil && s.escalation.current() != nil {
		t.Errorf("a broker started")
	}
}
