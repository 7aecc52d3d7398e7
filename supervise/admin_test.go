package supervise

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"nest/config"
)

// TestAddRemove: a unit added with start runs, one without stays stopped
// until started; a name that exists is refused; Remove stops the unit
// and it is gone.
func TestAddRemove(t *testing.T) {
	s, _ := newTestSupervisor(t)
	s.Apply([]Spec{sleeper("a")})
	if err := s.Add(sleeper("b"), true); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(sleeper("c"), false); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(sleeper("a"), true); err == nil {
		t.Error("Add of a name that exists = nil, want an error")
	}
	waitRunning(t, s, "a", "b")
	c, _ := s.Unit("c")
	if st := c.Status(); st.State != StateStopped || st.Pid != 0 {
		t.Errorf("c added without start: %+v, want stopped", st)
	}
	var names []string
	for _, u := range s.Units() {
		names = append(names, u.Name())
	}
	if got := strings.Join(names, " "); got != "a b c" {
		t.Errorf("units %s, want a b c", got)
	}
	s.Start(c)
	waitRunning(t, s, "c")
	pid := c.Status().Pid
	if !s.Remove("c") {
		t.Fatal("Remove(c) = false")
	}
	if _, ok := s.Unit("c"); ok || processAlive(pid) {
		t.Errorf("after Remove(c): unit there %v, process %d alive %v", ok, pid, processAlive(pid))
	}
	if s.Remove("c") {
		t.Error("second Remove(c) = true")
	}
	// An Apply with the same specs leaves the added unit alone.
	b, _ := s.Unit("b")
	old := b.Status().Pid
	s.Apply([]Spec{sleeper("a"), sleeper("b")})
	if b2, _ := s.Unit("b"); b2 != b || b.Status().Pid != old {
		t.Errorf("Apply restarted the added unit b")
	}
}

func processAlive(pid int) bool {
	_, ok := parentOf(pid)
	return ok
}

// fakeAdmin records what the control socket asked of it.
type fakeAdmin struct {
	calls []string
	err   error
}

func (a *fakeAdmin) Create(_ context.Context, name string, req CreateRequest) (Status, error) {
	a.calls = append(a.calls, fmt.Sprintf("create %s %+v", name, req))
	return Status{Name: name, State: StateRunning}, a.err
}

func (a *fakeAdmin) Remove(_ context.Context, name string, force, purge bool) error {
	a.calls = append(a.calls, fmt.Sprintf("rm %s %v %v", name, force, purge))
	return a.err
}

func (a *fakeAdmin) Reset(_ context.Context, name string, force bool) (Status, error) {
	a.calls = append(a.calls, fmt.Sprintf("reset %s %v", name, force))
	return Status{Name: name, State: StateStopped}, a.err
}

// TestAdminRoutes: create, rm and reset travel as query parameters and
// come back as the init's answer or error, with its status code.
func TestAdminRoutes(t *testing.T) {
	s, _ := newTestSupervisor(t)
	admin := &fakeAdmin{}
	srv := &Control{Sup: s, Version: "test", Admin: admin}
	c, sock := serveControl(t, srv)
	ctx := context.Background()

	req := CreateRequest{Kind: "daemon", Rootfs: "/srv/r", Binds: []string{"/a", "/b:/c:rw"}, Network: "host",
		Memory: "512M", Pids: "64", Exec: []string{"/bin/sh", "-c", "echo a&b=c; exit"}, Start: false}
	st, err := c.Create(ctx, "web", req)
	if err != nil || st.Name != "web" {
		t.Fatalf("Create = %+v, %v", st, err)
	}
	if want := fmt.Sprintf("create web %+v", req); admin.calls[0] != want {
		t.Errorf("the init got %s, want %s", admin.calls[0], want)
	}
	if _, err := c.Create(ctx, "web", CreateRequest{Kind: "user", Start: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Remove(ctx, "web", true, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Reset(ctx, "web", false); err != nil {
		t.Fatal(err)
	}
	want := []string{
		admin.calls[0],
		fmt.Sprintf("create web %+v", CreateRequest{Kind: "user", Start: true}),
		"rm web true false",
		"reset web false",
	}
	if !reflect.DeepEqual(admin.calls, want) {
		t.Errorf("calls %q, want %q", admin.calls, want)
	}

	admin.err = Errorf(409, "web is running: stop it first")
	if err := c.Remove(ctx, "web", false, false); err == nil || err.Error() != "web is running: stop it first" {
		t.Errorf("Remove with the init's error = %v", err)
	}
	for _, tc := range []struct{ method, path, want string }{
		{"POST", "/v1/containers/web/rm?bogus=1", `unknown parameter "bogus"`},
		{"POST", "/v1/containers/web/rm?force=yes", `force = "yes"`},
		{"POST", "/v1/containers/web/create?kind=user&kind=daemon", `given 2 times`},
		{"POST", "/v1/containers/web/explode", `no action "explode"`},
		{"GET", "/v1/containers/web/rm", `want POST`},
	} {
		code, body, err := call(ctx, sock, tc.method, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		var e apiError
		json.NewDecoder(body).Decode(&e)
		body.Close()
		if code < 400 || !strings.Contains(e.Error, tc.want) {
			t.Errorf("%s %s = %d %q, want an error with %q", tc.method, tc.path, code, e.Error, tc.want)
		}
	}

	srv.Admin = nil
	if err := c.Remove(ctx, "web", false, false); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Errorf("Remove without an Admin = %v", err)
	}
}

// TestEnvReplacesDefaults: a unit's env replaces the defaults (PATH,
// HOME) instead of doubling them: a shell session sets HOME to the
// user's home.
func TestEnvReplacesDefaults(t *testing.T) {
	s, _ := newTestSupervisor(t)
	sp := svc("env", config.RestartNo, "/usr/bin/env")
	sp.Env = map[string]string{"HOME": "/home/alice", "X": "1"}
	s.Apply([]Spec{sp})
	u, _ := s.Unit("env")
	// The output may come after the exit is seen.
	waitFor(t, s, "env", "its environment in the log", func(Status) bool {
		b, _ := u.Log().Snapshot()
		return bytes.Contains(b, []byte("X=1\n")) && bytes.Contains(b, []byte("PATH=")) && bytes.Contains(b, []byte("HOME="))
	})
	st := u.Status()
	out, _ := u.Log().Snapshot()
	if strings.Count(string(out), "HOME=") != 1 || !strings.Contains(string(out), "HOME=/home/alice\n") ||
		!strings.Contains(string(out), "PATH="+DefaultPath+"\n") || !strings.Contains(string(out), "X=1\n") {
		t.Errorf("env of a unit with HOME set (%s):\n%s", st.State, out)
	}
}
