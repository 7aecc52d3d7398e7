package escalate

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the child end of a link: with helperEnv set
// it serves fd 3 and exits.
const helperEnv = "NEST_ESCALATE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch h := os.Getenv(helperEnv); h {
	case "":
		os.Exit(m.Run())
	case "echo":
		os.Exit(echoChild())
	case "client":
		os.Exit(clientHelper())
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", h)
		os.Exit(2)
	}
}

// echoChild answers each request with its own body and writes the text
// "from child" into any fd it is given.
func echoChild() int {
	flags, err := unix.FcntlInt(3, unix.F_GETFL, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fd 3:", err)
		return 1
	}
	c, err := NewConn(os.NewFile(3, "link"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	err = Serve(c, func(m *Message, files []*os.File) (*Message, error) {
		for _, f := range files {
			io.WriteString(f, "from child")
			f.Close()
		}
		body, _ := json.Marshal(map[string]any{"echo": m.Body, "nonblock": flags&unix.O_NONBLOCK != 0})
		return &Message{Type: m.Type, Body: body}, nil
	}, func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) })
	if err != io.EOF {
		fmt.Fprintln(os.Stderr, "serve:", err)
		return 1
	}
	return 0
}

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// checkNoLeaks fails t if the descriptors or goroutines counted before
// have not come back to their number.
func checkNoLeaks(t *testing.T, fds, goroutines int) {
	t.Helper()
	for i := 0; ; i++ {
		f, g := openFDs(t), runtime.NumGoroutine()
		if f == fds && g <= goroutines {
			return
		}
		if i == 100 {
			t.Fatalf("leak: %d fds open (was %d), %d goroutines (was %d)", f, fds, g, goroutines)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pair(t testing.TB) (a, b *Conn) {
	t.Helper()
	a, b, err := Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// hostilePair returns a Conn and the raw other end, a blocking descriptor
// the test writes packets to with unix.Sendmsg, as a hostile child would,
// and a hangup that closes the raw end (once: a second close of a number
// could close whatever reused it).
func hostilePair(t testing.TB) (c *Conn, raw int, hangup func()) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err = NewConn(os.NewFile(uintptr(fds[0]), "hostile"))
	if err != nil {
		t.Fatal(err)
	}
	hangup = sync.OnceFunc(func() { unix.Close(fds[1]) })
	t.Cleanup(func() { c.Close(); hangup() })
	return c, fds[1], hangup
}

func rawSend(t testing.TB, fd int, b []byte, fds ...int) {
	t.Helper()
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if err := unix.Sendmsg(fd, b, oob, nil, unix.MSG_NOSIGNAL); err != nil {
		t.Fatalf("sendmsg(%d bytes, %d fds): %v", len(b), len(fds), err)
	}
}

func recv(t testing.TB, c *Conn) (*Message, []*os.File) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, files, err := c.Recv()
	if err != nil {
		t.Fatalf("Recv: %v", err)
	}
	return m, files
}

// wantViolation receives a packet that must be refused.
func wantViolation(t testing.TB, c *Conn, what string) *ProtocolError {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, files, err := c.Recv()
	var pe *ProtocolError
	if !errors.As(err, &pe) {
		t.Fatalf("Recv of %s = %+v, %d files, %v; want a ProtocolError", what, m, len(files), err)
	}
	if m != nil || files != nil {
		t.Fatalf("Recv of %s returned %+v and %d files with its error", what, m, len(files))
	}
	return pe
}

func TestRoundTrip(t *testing.T) {
	a, b := pair(t)
	for _, m := range []*Message{
		{Type: "ready"},
		{Type: "state", Body: json.RawMessage(`{"unit":"sshd","state":"running"}`)},
		{Type: "subtree", ID: 1},
		{Type: "error", ID: 1<<64 - 1, Error: "no such unit <x>"},
		{Type: "shutdown", Body: json.RawMessage(`"poweroff"`)},
	} {
		if err := a.Send(m); err != nil {
			t.Fatalf("Send(%+v) = %v", m, err)
		}
		got, files := recv(t, b)
		if !reflect.DeepEqual(got, m) || len(files) != 0 {
			t.Errorf("Recv = %+v with %d files, want %+v", got, len(files), m)
		}
	}
}

// A pipe's write end crosses the socket; writing through the received
// File reaches the pipe.
func TestSendFDs(t *testing.T) {
	a, b := pair(t)
	base := openFDs(t)
	var readers, writers []*os.File
	for range MaxFDs {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		readers, writers = append(readers, r), append(writers, w)
	}
	if err := a.Send(&Message{Type: "spec", Body: json.RawMessage(`{}`)}, writers...); err != nil {
		t.Fatal(err)
	}
	for _, w := range writers {
		w.Close() // the received copies keep the pipes open
	}
	m, files := recv(t, b)
	if m.Type != "spec" || len(files) != MaxFDs {
		t.Fatalf("Recv = %+v with %d files, want spec with %d", m, len(files), MaxFDs)
	}
	for i, f := range files {
		fmt.Fprintf(f, "through fd %d", i)
		f.Close()
		got, err := io.ReadAll(readers[i])
		if want := fmt.Sprintf("through fd %d", i); string(got) != want || err != nil {
			t.Errorf("pipe %d read %q, %v; want %q", i, got, err, want)
		}
		readers[i].Close()
	}
	if n := openFDs(t); n != base {
		t.Errorf("%d fds open after the exchange, %d before", n, base)
	}
	// Sending did not put the caller's files into blocking mode.
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if err := a.Send(&Message{Type: "ready"}, w); err != nil {
		t.Fatal(err)
	}
	_, files = recv(t, b)
	files[0].Close()
	if err := w.SetDeadline(time.Now().Add(time.Hour)); err != nil {
		t.Errorf("after Send, the pipe's SetDeadline = %v", err)
	}
}

func TestSendLimits(t *testing.T) {
	a, b := pair(t)
	// A body that makes the packet exactly MaxMessage bytes.
	overhead, _ := json.Marshal(&Message{Type: "spec", Body: json.RawMessage(`""`)})
	body := `"` + strings.Repeat("x", MaxMessage-len(overhead)) + `"`
	big := &Message{Type: "spec", Body: json.RawMessage(body)}
	if err := a.Send(big); err != nil {
		t.Fatalf("Send of %d bytes = %v", MaxMessage, err)
	}
	if got, _ := recv(t, b); !reflect.DeepEqual(got, big) {
		t.Errorf("the message at the limit came back different (%d bytes)", len(got.Body))
	}
	big.Body = json.RawMessage(`"x` + body[1:])
	if err := a.Send(big); err == nil || !strings.Contains(err.Error(), "over the limit") {
		t.Errorf("Send of %d bytes = %v, want over the limit", MaxMessage+1, err)
	}
	files := make([]*os.File, MaxFDs+1)
	for i := range files {
		files[i] = os.Stdin
	}
	if err := a.Send(&Message{Type: "ready"}, files...); err == nil {
		t.Errorf("Send with %d fds succeeded", len(files))
	}
	for _, m := range []*Message{nil, {Type: "nope"}, {Type: ""}, {Type: "spec", Body: json.RawMessage(`{bad`)}} {
		if err := a.Send(m); err == nil {
			t.Errorf("Send(%+v) succeeded", m)
		}
	}
	if err := a.Send(&Message{Type: "ready"}, nil); err == nil {
		t.Errorf("Send with a nil file succeeded")
	}
	closed, _ := os.Open(os.DevNull)
	closed.Close()
	if err := a.Send(&Message{Type: "ready"}, closed); err == nil {
		t.Errorf("Send with a closed file succeeded")
	}
	// None of the refused sends reached the peer.
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if m, _, err := b.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("after refused sends, Recv = %+v, %v; want nothing", m, err)
	}
}

func TestRecvTooLong(t *testing.T) {
	c, raw, _ := hostilePair(t)
	for _, n := range []int{MaxMessage + 1, 2 * MaxMessage} {
		b := []byte(`{"type":"spec","id":5,"body":"` + strings.Repeat("x", n) + `"}`)[:n]
		rawSend(t, raw, b)
		wantViolation(t, c, fmt.Sprintf("a packet of %d bytes", n))
	}
	// Still in step: the next packet reads whole.
	rawSend(t, raw, []byte(`{"type":"ready"}`))
	if m, _ := recv(t, c); m.Type != "ready" {
		t.Errorf("after long packets, Recv = %+v", m)
	}
}

func TestRecvTooManyFDs(t *testing.T) {
	c, raw, _ := hostilePair(t)
	base := openFDs(t)
	devnull := func(n int) []int {
		fds := make([]int, n)
		for i := range fds {
			fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		return fds
	}
	send := func(n int) {
		fds := devnull(n)
		rawSend(t, raw, []byte(`{"type":"ready","id":9}`), fds...)
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	for _, n := range []int{MaxFDs + 1, MaxFDs + 2, 20, 253} {
		send(n)
		if pe := wantViolation(t, c, fmt.Sprintf("%d fds", n)); pe.ID != 9 {
			t.Errorf("the violation's id is %d, want 9", pe.ID)
		}
		if got := openFDs(t); got != base {
			t.Fatalf("after refusing %d fds, %d fds are open, %d before", n, got, base)
		}
	}
	// With no fds allowed, even one is refused, and none reaches us.
	c.LimitFDs(0)
	send(1)
	wantViolation(t, c, "an fd where none is allowed")
	c.LimitFDs(MaxFDs)
	send(MaxFDs)
	_, files := recv(t, c)
	if len(files) != MaxFDs {
		t.Errorf("got %d files, want %d", len(files), MaxFDs)
	}
	for _, f := range files {
		f.Close()
	}
	// A refused packet with a good message and fds closes the fds too.
	fds := devnull(1)
	rawSend(t, raw, []byte(`{"type":"nope"}`), fds...)
	unix.Close(fds[0])
	wantViolation(t, c, "an unknown type with an fd")
	if got := openFDs(t); got != base {
		t.Errorf("%d fds open at the end, %d before", got, base)
	}
}

// hostile lists packets a child might send that are not messages.
var hostile = [][]byte{
	[]byte(`not json`),
	[]byte(`{"type":"ready"`),
	[]byte(`{"type":"nope","id":4}`),
	[]byte(`{"type":"ready","extra":1}`),
	[]byte(`{"type":"ready"} trailing`),
	[]byte(`{"type":"ready"}{"type":"ready"}`),
	[]byte(`{"Type":"ready"}`),
	[]byte(`{"type":"ready","type":"spec"}`),
	[]byte(`{"type":"ready","id":-1}`),
	[]byte(`{"type":"ready","body":{"a":1,"a":2}}`),
	[]byte("{\"type\":\"ready\",\"error\":\"\xff\"}"),
	[]byte(`[]`),
	[]byte(`null`),
	[]byte("\x00"),
	{}, // an empty packet, which is not end of file
}

func TestRecvHostile(t *testing.T) {
	c, raw, _ := hostilePair(t)
	for _, b := range hostile {
		rawSend(t, raw, b)
		pe := wantViolation(t, c, fmt.Sprintf("%q", b))
		if string(b) == `{"type":"nope","id":4}` && pe.ID != 4 {
			t.Errorf("violation of %s has id %d, want 4", b, pe.ID)
		}
		rawSend(t, raw, []byte(`{"type":"ready"}`))
		if m, _ := recv(t, c); m.Type != "ready" {
			t.Fatalf("after %q, Recv = %+v", b, m)
		}
	}
}

func TestRecvEOF(t *testing.T) {
	c, raw, hangup := hostilePair(t)
	rawSend(t, raw, []byte(`{"type":"ready"}`))
	hangup()
	// What was sent before the hangup is still read, then end of file,
	// as often as asked.
	if m, _ := recv(t, c); m.Type != "ready" {
		t.Errorf("Recv = %+v, want ready", m)
	}
	for range 2 {
		if m, files, err := c.Recv(); err != io.EOF || m != nil || files != nil {
			t.Errorf("Recv after hangup = %+v, %v, %v; want io.EOF", m, files, err)
		}
	}
	if err := c.Send(&Message{Type: "ready"}); !errors.Is(err, unix.EPIPE) {
		t.Errorf("Send after hangup = %v, want EPIPE", err)
	}
	// A peer that shuts its end for writing has said all it will say.
	c, raw, _ = hostilePair(t)
	unix.Shutdown(raw, unix.SHUT_WR)
	if _, _, err := c.Recv(); err != io.EOF {
		t.Errorf("Recv after the peer's shutdown = %v, want io.EOF", err)
	}
}

// Thousands of bad packets, some with fds, leave the connection working
// and nothing behind.
func TestRecvMalformedLoop(t *testing.T) {
	c, raw, _ := hostilePair(t)
	// The first poller wait and fd make the runtime open what it keeps.
	rawSend(t, raw, []byte(`{"type":"ready"}`))
	recv(t, c)
	null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	fds, goroutines := openFDs(t), runtime.NumGoroutine()
	valid := []byte(`{"type":"state","id":12,"body":{"unit":"sshd","state":"running","pid":42}}`)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 10000 {
		var b []byte
		switch rng.IntN(3) {
		case 0:
			b = hostile[rng.IntN(len(hostile))]
		case 1:
			b = valid[:rng.IntN(len(valid))] // truncated
		default:
			b = append([]byte(nil), valid...)
			b[rng.IntN(len(b))] = byte(rng.IntN(256)) // one byte changed
		}
		var attach []int
		if rng.IntN(4) == 0 {
			for range 1 + rng.IntN(MaxFDs+2) {
				attach = append(attach, null)
			}
		}
		rawSend(t, raw, b, attach...)
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, files, err := c.Recv()
		for _, f := range files {
			f.Close()
		}
		var pe *ProtocolError
		if err != nil && !errors.As(err, &pe) {
			t.Fatalf("packet %d %q: Recv = %v, want a message or a ProtocolError", i, b, err)
		}
		if err == nil && m.Type == "" {
			t.Fatalf("packet %d %q: accepted %+v", i, b, m)
		}
	}
	rawSend(t, raw, valid)
	if m, _ := recv(t, c); m.ID != 12 {
		t.Errorf("after the loop, Recv = %+v", m)
	}
	checkNoLeaks(t, fds, goroutines)
}

func TestDeadline(t *testing.T) {
	a, _ := pair(t)
	a.SetDeadline(time.Now().Add(-time.Second))
	if _, _, err := a.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv past the deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	// A deadline ahead: Recv waits in the poller until then.
	start := time.Now()
	a.SetDeadline(start.Add(50 * time.Millisecond))
	if _, _, err := a.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv with a 50ms deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("Recv gave up after %v, before its deadline", d)
	}
	// A Send that cannot go out (the peer never reads) also times out.
	a.SetDeadline(time.Now().Add(100 * time.Millisecond))
	var err error
	for range 10000 {
		if err = a.Send(&Message{Type: "ready"}); err != nil {
			break
		}
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Send to a full socket = %v, want os.ErrDeadlineExceeded", err)
	}
}

// Close wakes a Recv waiting in another goroutine.
func TestCloseWakesRecv(t *testing.T) {
	a, _ := pair(t)
	done := make(chan error)
	go func() {
		_, _, err := a.Recv()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	a.Close()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Recv on a closed Conn = %v, want os.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake Recv")
	}
}

func TestNewConn(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	check := func(what string, f *os.File, want string) {
		t.Helper()
		c, err := NewConn(f)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewConn(%s) = %v, %v; want an error with %q", what, c, err, want)
		}
		if err := f.Close(); !errors.Is(err, os.ErrClosed) {
			t.Errorf("after NewConn(%s) failed, Close = %v; want it closed already", what, err)
		}
	}
	check("a pipe", r, "not a socket")
	for _, tc := range []struct {
		typ  int
		want string
	}{{unix.SOCK_STREAM, "SOCK_STREAM"}, {unix.SOCK_DGRAM, "SOCK_DGRAM"}} {
		fds, err := unix.Socketpair(unix.AF_UNIX, tc.typ|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fds[1])
		check(tc.want, os.NewFile(uintptr(fds[0]), tc.want), tc.want)
	}
	udp, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	check("a UDP socket", os.NewFile(uintptr(udp), "udp"), "not a unix socket")
	l, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(l, &unix.SockaddrUnix{Name: t.TempDir() + "/sock"}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(l, 1); err != nil {
		t.Fatal(err)
	}
	check("a listening socket", os.NewFile(uintptr(l), "listener"), "listening")
	if _, err := NewConn(nil); err == nil {
		t.Error("NewConn(nil) succeeded")
	}
}

// NewConn of a blocking socket swaps in a non-blocking descriptor, so that
// deadlines work there too.
func TestNewConnBlocking(t *testing.T) {
	base := openFDs(t)
	c, raw, _ := hostilePair(t) // a blocking socket, through NewConn
	c.SetDeadline(time.Now().Add(-time.Second))
	if _, _, err := c.Recv(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("Recv past the deadline = %v, want os.ErrDeadlineExceeded", err)
	}
	c.SetDeadline(time.Time{})
	rawSend(t, raw, []byte(`{"type":"ready"}`))
	if m, _ := recv(t, c); m.Type != "ready" {
		t.Errorf("Recv = %+v", m)
	}
	if n := openFDs(t); n != base+2 {
		t.Errorf("%d fds open for one socketpair, want %d", n, base+2)
	}
}

func TestServe(t *testing.T) {
	c, peer := pair(t) // Serve gets c; the test plays the peer
	var mu sync.Mutex
	var logged []string
	logf := func(format string, args ...any) {
		mu.Lock()
		logged = append(logged, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	done := make(chan error)
	go func() {
		done <- Serve(c, func(m *Message, files []*os.File) (*Message, error) {
			if string(m.Body) != `"panic"` {
				for _, f := range files {
					f.Close()
				}
			}
			switch string(m.Body) {
			case `"fail"`:
				return nil, errors.New("no such unit")
			case `"panic"`:
				panic("handler bug")
			case `"quiet"`:
				return nil, nil
			}
			return &Message{Type: m.Type, Body: json.RawMessage(fmt.Sprintf(`{"files":%d}`, len(files)))}, nil
		}, logf)
	}()
	exchange := func(m *Message, fds ...*os.File) *Message {
		t.Helper()
		if err := peer.Send(m, fds...); err != nil {
			t.Fatal(err)
		}
		got, _ := recv(t, peer)
		return got
	}
	if got := exchange(&Message{Type: "subtree", ID: 1}, w); got.ID != 1 || string(got.Body) != `{"files":1}` {
		t.Errorf("answer = %+v, want id 1 and one file", got)
	}
	w.Close()
	if got := exchange(&Message{Type: "subtree", ID: 2, Body: json.RawMessage(`"fail"`)}); got.Type != "error" || got.ID != 2 || got.Error != "no such unit" {
		t.Errorf("answer to a failing request = %+v", got)
	}
	// No id, no answer: the next answer is to the next request.
	peer.Send(&Message{Type: "state", Body: json.RawMessage(`"fail"`)})
	peer.Send(&Message{Type: "state", Body: json.RawMessage(`"quiet"`)})
	if got := exchange(&Message{Type: "subtree", ID: 3}); got.ID != 3 {
		t.Errorf("answer = %+v, want id 3", got)
	}
	// A panic is answered, ends Serve, and closes the request's files.
	pr, pw, _ := os.Pipe()
	if got := exchange(&Message{Type: "subtree", ID: 4, Body: json.RawMessage(`"panic"`)}, pw); got.Type != "error" || got.ID != 4 || got.Error != "internal error" {
		t.Errorf("answer to a panicking request = %+v", got)
	}
	pw.Close()
	if n, err := pr.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("the panicking request's pipe is still open: read = %d, %v", n, err)
	}
	pr.Close()
	if err := <-done; err == nil || !strings.Contains(err.Error(), "handler bug") {
		t.Errorf("Serve after a panic = %v", err)
	}
	if _, _, err := peer.Recv(); err != io.EOF {
		t.Errorf("after Serve ended, the peer reads %v, want io.EOF", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if all := strings.Join(logged, "\n"); !strings.Contains(all, "no such unit") || !strings.Contains(all, "panic handling subtree 4: handler bug") {
		t.Errorf("log:\n%s", all)
	}
}

// Serve answers a protocol violation that carried an id, then ends; over
// thousands of hostile connections nothing is left behind.
func TestServeHostile(t *testing.T) {
	handle := func(m *Message, files []*os.File) (*Message, error) {
		for _, f := range files {
			f.Close()
		}
		return &Message{Type: m.Type}, nil
	}
	run := func(packet []byte) (answer *Message, serr error) {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		c, err := NewConn(os.NewFile(uintptr(fds[0]), "child"))
		if err != nil {
			t.Fatal(err)
		}
		peer, err := NewConn(os.NewFile(uintptr(fds[1]), "peer"))
		if err != nil {
			t.Fatal(err)
		}
		defer peer.Close()
		done := make(chan error, 1)
		go func() { done <- Serve(c, handle, nil) }()
		if err := peer.Send(&Message{Type: "subtree", ID: 1}); err != nil {
			t.Fatal(err)
		}
		if m, _ := recv(t, peer); m.ID != 1 {
			t.Fatalf("answer = %+v, want id 1", m)
		}
		peer.rc.Write(func(fd uintptr) bool {
			rawSend(t, int(fd), packet)
			return true
		})
		peer.SetReadDeadline(time.Now().Add(10 * time.Second))
		answer, _, err = peer.Recv()
		if err == io.EOF {
			answer = nil
		} else if err != nil {
			t.Fatal(err)
		}
		return answer, <-done
	}
	// Warm up, then count.
	run([]byte(`x`))
	fds, goroutines := openFDs(t), runtime.NumGoroutine()
	answer, err := run([]byte(`{"type":"nope","id":7}`))
	var pe *ProtocolError
	if !errors.As(err, &pe) || answer == nil || answer.Type != "error" || answer.ID != 7 || !strings.Contains(answer.Error, "unknown message type") {
		t.Errorf("Serve of an unknown type = %v, answer %+v", err, answer)
	}
	if answer, err := run(nil); answer != nil || !errors.As(err, &pe) {
		t.Errorf("Serve of an empty packet = %v, answer %+v; want a violation and no answer", err, answer)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	valid := []byte(`{"type":"subtree","id":12,"body":{"depth":3}}`)
	n := 10000
	if testing.Short() {
		n = 2000
	}
	for i := range n {
		var b []byte
		if i%2 == 0 {
			b = hostile[rng.IntN(len(hostile))]
		} else {
			b = append([]byte(nil), valid[:1+rng.IntN(len(valid)-1)]...)
		}
		_, err := run(b)
		if !errors.As(err, &pe) && err != io.EOF {
			t.Fatalf("Serve of %q = %v, want a ProtocolError", b, err)
		}
	}
	checkNoLeaks(t, fds, goroutines)
}

// The real thing: a child process gets one end of a Pair as fd 3, serves
// it, and writes into an fd it is sent; closing our end ends it cleanly.
func TestChildProcess(t *testing.T) {
	a, b := pair(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=echo")
	cmd.ExtraFiles = []*os.File{b.File()}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	b.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := a.Send(&Message{Type: "subtree", ID: 1, Body: json.RawMessage(`{"x":1}`)}, w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	m, _ := recv(t, a)
	if m.ID != 1 || string(m.Body) != `{"echo":{"x":1},"nonblock":true}` {
		t.Errorf("child answered %+v", m)
	}
	if got, _ := io.ReadAll(r); string(got) != "from child" {
		t.Errorf("the child wrote %q through the passed fd", got)
	}
	a.Close()
	if err := cmd.Wait(); err != nil {
		t.Errorf("child: %v", err)
	}
}

// TestRecvWaitsWithoutABuffer: a reader blocked in Recv holds no packet
// buffer, so a parent init with many links does not keep 64 KiB for each.
func TestRecvWaitsWithoutABuffer(t *testing.T) {
	const links = 50
	var wg sync.WaitGroup
	var ends []*Conn
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range links {
		a, b := pair(t)
		ends = append(ends, a)
		wg.Go(func() { b.Recv() })
	}
	time.Sleep(200 * time.Millisecond) // every reader is waiting in Recv
	var during runtime.MemStats
	runtime.ReadMemStats(&during)
	for _, a := range ends {
		a.Send(&Message{Type: "ready"})
	}
	wg.Wait()
	if grew := int64(during.HeapInuse) - int64(before.HeapInuse); grew > links*MaxMessage/4 {
		t.Errorf("%d readers waiting in Recv took %d bytes of heap, want well under %d (one packet buffer each)", links, grew, links*MaxMessage)
	}
}
