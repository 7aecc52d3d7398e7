package supervise

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/escalate"
)

// testShells opens shells on the test machine's own devpts, as a child
// init does on its container's.
type testShells struct{ pts int }

func newTestShells(t *testing.T) *testShells {
	t.Helper()
	fd, err := unix.Open("/dev/pts", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no /dev/pts: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return &testShells{pts: fd}
}

func (h *testShells) Terminal() (*os.File, *os.File, error) { return OpenTerminal(h.pts) }

func (h *testShells) Command(req ShellRequest) (Spec, error) {
	argv := req.Argv
	if len(argv) == 0 {
		argv = []string{"/bin/sh"}
	}
	return Spec{Service: config.Service{Exec: argv, Env: map[string]string{"TERM": req.Term}, StopTimeout: time.Second}}, nil
}

// serveShells plays a child init on link that opens shells with host.
func serveShells(t testing.TB, link *escalate.Conn, sup *Supervisor, host ShellHost) {
	t.Helper()
	p := NewParentLink(link)
	p.Shells = host
	done := make(chan error, 1)
	go func() { done <- p.Serve(sup, func(string) {}, sup.opts.Logf) }()
	t.Cleanup(func() {
		link.Close()
		<-done
	})
}

// readAll reads a session's output until the terminal hangs up.
func readAll(t *testing.T, s *ShellSession) string {
	t.Helper()
	var out bytes.Buffer
	s.Master.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(&out, s.Master)
	if err != nil && !errors.Is(err, unix.EIO) {
		t.Errorf("reading the terminal: %v (got %q)", err, out.String())
	}
	return out.String()
}

// TestShellThroughLinks: `nest shell alice/dev` reaches dev's init through
// alice's link; the command runs on a terminal of the size asked, its
// output and exit status come back, and Ctrl-C on the master reaches it.
func TestShellThroughLinks(t *testing.T) {
	host := newTestShells(t)
	root, _ := newTestSupervisor(t)
	alice, _ := newTestSupervisor(t)
	dev, _ := newTestSupervisor(t)
	root.Apply([]Spec{sleeper("syslog")})
	serveShells(t, fakeContainer(t, root, "alice", config.KindUser), alice, host)
	serveShells(t, fakeContainer(t, alice, "dev", config.KindUser), dev, host)

	c, _ := serveControl(t, &Control{Sup: root, Version: "test"})
	ctx := context.Background()

	for _, path := range []string{"alice", "alice/dev"} {
		s, err := c.Shell(ctx, path, ShellRequest{
			Argv: []string{"/bin/sh", "-c", "stty size; echo term=$TERM; [ -t 0 ] && echo tty; exit 7"},
			Term: "xterm-test", Rows: 30, Cols: 100,
		})
		if err != nil {
			t.Fatalf("Shell(%s) = %v", path, err)
		}
		out := readAll(t, s)
		exit, err := s.Wait()
		s.Close()
		if err != nil || exit.Code != 7 || exit.Status != "exit status 7" {
			t.Errorf("Shell(%s) exit = %+v, %v; want 7", path, exit, err)
		}
		for _, want := range []string{"30 100\r\n", "term=xterm-test\r\n", "tty\r\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("Shell(%s) output %q, want %q in it", path, out, want)
			}
		}
	}

	// Ctrl-C: the command is the terminal's foreground process group.
	s, err := c.Shell(ctx, "alice/dev", ShellRequest{Argv: []string{"/bin/sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// Shell returns once the command has been exec'd: a ^C now reaches it.
	if _, err := s.Master.Write([]byte{3}); err != nil {
		t.Fatal(err)
	}
	if exit, err := s.Wait(); err != nil || exit.Code != 130 {
		t.Errorf("sleep after ^C = %+v, %v; want 130 (killed by SIGINT)", exit, err)
	}

	errs := []struct{ path, want string }{
		{"nope", `no unit named "nope"`},
		{"syslog", "syslog is a service, not a container"},
		{"alice/nope", `alice: no unit named "nope"`},
		{"alice/dev/x", `alice: dev: no unit named "x"`},
		{"Alice", "bad unit path"},
	}
	for _, e := range errs {
		if _, err := c.Shell(ctx, e.path, ShellRequest{}); err == nil || !strings.Contains(err.Error(), e.want) {
			t.Errorf("Shell(%s) = %v, want an error with %q", e.path, err, e.want)
		}
	}
	if _, err := c.Shell(ctx, "alice", ShellRequest{Term: "x\x1b[2J"}); err == nil || !strings.Contains(err.Error(), "term") {
		t.Errorf("Shell with a bad TERM = %v, want an error", err)
	}
}

// TestShellHostileChild: what a container sends back on the session
// socket is checked by the CLI's side: only a pty master is taken, then
// only a sane exit status; the parent init takes no fd from the child at
// all.
func TestShellHostileChild(t *testing.T) {
	host := newTestShells(t)
	root, _ := newTestSupervisor(t)
	link := fakeContainer(t, root, "evil", config.KindDaemon)
	c, _ := serveControl(t, &Control{Sup: root, Version: "test"})
	ctx := context.Background()

	// The child's side by hand: answer each shell request after sending
	// what the case says on its session socket.
	var send func(conn *escalate.Conn, link *escalate.Conn, id uint64)
	var mu sync.Mutex
	go func() {
		link.LimitFDs(1)
		for {
			m, fds, err := link.Recv()
			if err != nil {
				return
			}
			if len(fds) != 1 {
				continue
			}
			conn, err := escalate.NewConn(fds[0])
			if err != nil {
				continue
			}
			mu.Lock()
			f := send
			mu.Unlock()
			f(conn, link, m.ID)
			conn.Close()
		}
	}()
	answer := func(link *escalate.Conn, id uint64, fds ...*os.File) {
		link.Send(&escalate.Message{Type: msgShell, ID: id, Body: []byte("{}")}, fds...)
	}
	// sendTerminal sends a real pty master, as a well-behaved init would.
	sendTerminal := func(conn *escalate.Conn) {
		m, sl, err := host.Terminal()
		if err != nil {
			t.Error(err)
			return
		}
		defer m.Close()
		defer sl.Close()
		conn.Send(&escalate.Message{Type: msgShellPTY}, m)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	cases := []struct {
		name string
		send func(conn, link *escalate.Conn, id uint64)
		want string // in the error of Shell, or of Wait if it starts with "wait: "
	}{
		{"pipe", func(conn, link *escalate.Conn, id uint64) {
			conn.Send(&escalate.Message{Type: msgShellPTY}, r)
			answer(link, id)
		}, "no pseudo-terminal master"},
		{"devnull", func(conn, link *escalate.Conn, id uint64) {
			conn.Send(&escalate.Message{Type: msgShellPTY}, null)
			answer(link, id)
		}, "no pseudo-terminal master"},
		{"two-fds", func(conn, link *escalate.Conn, id uint64) {
			conn.Send(&escalate.Message{Type: msgShellPTY}, r, w)
			answer(link, id)
		}, "fds"},
		{"no-fd", func(conn, link *escalate.Conn, id uint64) {
			conn.Send(&escalate.Message{Type: msgShellPTY})
			answer(link, id)
		}, "with 0 fds"},
		{"exit-first", func(conn, link *escalate.Conn, id uint64) {
			conn.Send(&escalate.Message{Type: msgShellExit, Body: []byte(`{"code":0,"status":""}`)})
			answer(link, id)
		}, "want shell-pty"},
		{"bad-exit", func(conn, link *escalate.Conn, id uint64) {
			sendTerminal(conn)
			answer(link, id)
			conn.Send(&escalate.Message{Type: msgShellExit, Body: []byte(`{"code":999,"status":"x"}`)})
		}, "wait: exit code 999"},
		{"no-exit", func(conn, link *escalate.Conn, id uint64) {
			sendTerminal(conn)
			answer(link, id)
		}, "wait: without an exit status"},
		{"fd-up-the-link", func(conn, link *escalate.Conn, id uint64) {
			answer(link, id, r) // the parent's end takes no fd: the link breaks
		}, "link"},
	}
	for _, tc := range cases {
		mu.Lock()
		send = tc.send
		mu.Unlock()
		s, err := c.Shell(ctx, "evil", ShellRequest{})
		if want, ok := strings.CutPrefix(tc.want, "wait: "); ok {
			if err != nil {
				t.Errorf("%s: Shell = %v", tc.name, err)
				continue
			}
			_, err = s.Wait()
			s.Close()
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: Wait = %v, want an error with %q", tc.name, err, want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Shell = %v, want an error with %q", tc.name, err, tc.want)
		}
		if tc.name == "fd-up-the-link" {
			break // the link is down from here on
		}
	}
}

// serveControl serves ctl on a control socket for the test and returns a
// client of it, and the socket's path.
func serveControl(t testing.TB, ctl *Control) (*Client, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nest.sock")
	l, err := ListenControl(sock)
	if err != nil {
		t.Fatal(err)
	}
	go ctl.Serve(l)
	t.Cleanup(ctl.Close)
	return NewClient(sock), sock
}

// BenchmarkShellSession: one `nest shell PATH -- /bin/true` through the
// control socket, from the request to the exit status, one and two links
// down (the init at the end runs it on a new pty of this machine).
func BenchmarkShellSession(b *testing.B) {
	// The floor: /bin/true started and reaped by the same reaper.
	b.Run("floor", func(b *testing.B) {
		for b.Loop() {
			p, err := testReaper.Start([]string{"/bin/true"}, &syscall.ProcAttr{})
			if err != nil {
				b.Fatal(err)
			}
			<-p.Done()
			p.Close()
		}
	})
	for _, path := range []string{"alice", "alice/dev"} {
		b.Run(strings.ReplaceAll(path, "/", "-"), func(b *testing.B) {
			fd, err := unix.Open("/dev/pts", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err != nil {
				b.Skip(err)
			}
			defer unix.Close(fd)
			host := &testShells{pts: fd}
			dir := b.TempDir()
			opts := func(sub string) Options {
				return Options{Reaper: testReaper, RunDir: filepath.Join(dir, sub)}
			}
			root, alice, dev := New(opts("root")), New(opts("alice")), New(opts("dev"))
			serveShells(b, fakeContainer(b, root, "alice", config.KindUser), alice, host)
			serveShells(b, fakeContainer(b, alice, "dev", config.KindUser), dev, host)
			c, _ := serveControl(b, &Control{Sup: root})
			ctx := context.Background()
			b.ResetTimer()
			for b.Loop() {
				s, err := c.Shell(ctx, path, ShellRequest{Argv: []string{"/bin/true"}})
				if err != nil {
					b.Fatal(err)
				}
				if e, err := s.Wait(); err != nil || e.Code != 0 {
					b.Fatalf("exit %+v, %v", e, err)
				}
				s.Close()
			}
		})
	}
}
