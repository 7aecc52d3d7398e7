package escalate

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"
)

// Host tests of the broker: it runs in this process (as its init would
// start it, on a control socketpair), serves sockets the test makes, and
// runs real sessions as root. The client is the package's own Client, or
// raw packets where a hostile child is played.

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: sessions change credentials and cgroups")
	}
}

// lockedBuffer is a log that goroutines may write while the test reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type testBroker struct {
	b     *Broker
	ctl   *Conn // the init's end
	audit *lockedBuffer
	log   *lockedBuffer
	dir   string // 0755, so that a process of another user namespace can reach the sockets
}

func newTestBroker(t testing.TB) *testBroker {
	t.Helper()
	return newTestBrokerWith(t, "")
}

// newTestBrokerWith is newTestBroker with the broker's LimitsFile.
func newTestBrokerWith(t testing.TB, limitsFile string) *testBroker {
	t.Helper()
	requireRoot(t)
	init, end := pair(t)
	tb := &testBroker{ctl: init, audit: new(lockedBuffer), log: new(lockedBuffer)}
	tb.b = &Broker{
		Logf:       func(format string, args ...any) { fmt.Fprintf(tb.log, format+"\n", args...) },
		Audit:      &Audit{console: tb.audit, now: time.Now},
		LimitsFile: limitsFile,
	}
	done := make(chan error, 1)
	go func() { done <- tb.b.Serve(end) }()
	t.Cleanup(func() {
		init.Close()
		<-done
		if t.Failed() {
			t.Logf("broker log:\n%s\naudit:\n%s", tb.log, tb.audit)
		}
	})
	dir, err := os.MkdirTemp("", "nest-escalate-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	tb.dir = dir
	return tb
}

// control sends one request to the broker as its init does.
func (tb *testBroker) control(t testing.TB, typ string, v any, fds ...*os.File) (*Message, error) {
	t.Helper()
	body, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.ctl.Send(&Message{Type: typ, ID: 1, Body: body}, fds...); err != nil {
		t.Fatal(err)
	}
	m, _ := recv(t, tb.ctl)
	if m.Type == MsgError {
		return nil, errors.New(m.Error)
	}
	if m.Type != typ {
		t.Fatalf("%s answered with %s", typ, m.Type)
	}
	return m, nil
}

// listen makes a socket for child, hands it to the broker with p and
// returns its path.
func (tb *testBroker) listen(t testing.TB, child string, p Policy) string {
	t.Helper()
	path := filepath.Join(tb.dir, child+".sock")
	ln := listenSocket(t, path)
	if _, err := tb.control(t, MsgListen, Listen{Child: child, Policy: p}, ln); err != nil {
		t.Fatalf("listen %s: %v", child, err)
	}
	return path
}

func listenSocket(t testing.TB, path string) *os.File {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o666)
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), path)
	t.Cleanup(func() { f.Close() })
	return f
}

// result is one client run.
type result struct {
	out  string // stdout and stderr
	code int
	err  error
}

// run runs a Client on sock with stdin from /dev/null and stdout and
// stderr into a pipe.
func run(t *testing.T, sock string, argv []string, opts ...func(*Client)) result {
	t.Helper()
	null, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Socket: sock, Argv: argv, Stdin: null, Stdout: w, Stderr: w}
	for _, o := range opts {
		o(c)
	}
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		r.Close()
		out <- string(b)
	}()
	code, err := c.Run()
	w.Close()
	return result{out: <-out, code: code, err: err}
}

func (r result) ok(t *testing.T, what string) string {
	t.Helper()
	if r.err != nil {
		t.Fatalf("%s: %v (output %q)", what, r.err, r.out)
	}
	return r.out
}

func (r result) refused(t *testing.T, what, want string) {
	t.Helper()
	var ee *ExitError
	if !errors.As(r.err, &ee) || !strings.Contains(ee.Msg, want) {
		t.Fatalf("%s = %d, %v (output %q); want a refusal saying %q", what, r.code, r.err, r.out, want)
	}
}

func (r result) fails(t *testing.T, what, want string) {
	t.Helper()
	if r.err == nil || !strings.Contains(r.err.Error(), want) {
		t.Fatalf("%s = %d, %v (output %q); want an error saying %q", what, r.code, r.err, r.out, want)
	}
}

// waitAudit waits for a line of the audit that has every one of want.
func (tb *testBroker) waitAudit(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, line := range strings.Split(tb.audit.String(), "\n") {
			all := true
			for _, w := range want {
				all = all && strings.Contains(line, w)
			}
			if all {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no audit line with %q:\n%s", want, tb.audit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestBrokerAllow(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "alice", Policy{Method: MethodAllow})
	out := run(t, sock, []string{"id", "-u"}).ok(t, "id -u")
	if out != "0\n" {
		t.Errorf("id -u in the parent printed %q, want 0", out)
	}
	tb.waitAudit(t, "child=alice", "as=root", "method=allow", `command="id -u"`, "result=allowed")
	tb.waitAudit(t, "child=alice", "result=exited", `reason="exit code 0"`)
	// The exit status travels: a code, or 128 + a signal.
	for _, tc := range []struct {
		script string
		code   int
	}{{"exit 7", 7}, {"kill -TERM $$", 128 + 15}, {"exit 0", 0}} {
		r := run(t, sock, []string{"sh", "-c", tc.script})
		if r.err != nil || r.code != tc.code {
			t.Errorf("sh -c %q = %d, %v; want %d", tc.script, r.code, r.err, tc.code)
		}
	}
	// stdin, stdout and stderr are the client's own fds.
	r, w, _ := os.Pipe()
	fmt.Fprint(w, "through the client's stdin")
	w.Close()
	got := run(t, sock, []string{"sh", "-c", "cat; echo; echo to stderr >&2"}, func(c *Client) { c.Stdin = r }).ok(t, "cat")
	r.Close()
	if got != "through the client's stdin\nto stderr\n" {
		t.Errorf("cat in the parent printed %q", got)
	}
}

// The environment is built from scratch: the client's locale crosses,
// nothing else of it does.
func TestBrokerEnvironment(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "alice", Policy{Method: MethodAllow})
	os.Setenv("NEST_TEST_SECRET", "x") // the broker's own environment stays its own too
	defer os.Unsetenv("NEST_TEST_SECRET")
	out := run(t, sock, []string{"env"}, func(c *Client) { c.Env = map[string]string{"LANG": "C.UTF-8", "LC_TIME": "C"} }).ok(t, "env")
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, v, _ := strings.Cut(line, "=")
		got[k] = v
	}
	want := map[string]string{"HOME": "/root", "USER": "root", "LOGNAME": "root", "PATH": SecurePath,
		"NEST_ESCALATED_FROM": "alice", "LANG": "C.UTF-8", "LC_TIME": "C"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q in the session, want %q", k, got[k], v)
		}
		delete(got, k)
	}
	delete(got, "SHELL")
	delete(got, "PWD") // sh's own
	if len(got) > 0 {
		t.Errorf("more in the session's environment: %v", got)
	}
	for _, env := range []map[string]string{
		{"LD_PRELOAD": "/tmp/x.so"}, {"PATH": "/tmp"}, {"GCONV_PATH": "."}, {"LANG": "../../../tmp/x"}, {"EDITOR": "vi -- /etc/shadow"},
	} {
		run(t, sock, []string{"true"}, func(c *Client) { c.Env = env }).refused(t, fmt.Sprint(env), "")
	}
}

func TestBrokerDeny(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "bob", Policy{Method: MethodDeny})
	run(t, sock, []string{"id"}).refused(t, "id", `escalation from container "bob" is denied`)
	tb.waitAudit(t, "child=bob", "method=deny", "command=id", "result=refused")
	if strings.Contains(tb.audit.String(), "result=allowed") {
		t.Errorf("a denied child was allowed:\n%s", tb.audit)
	}
}

func TestBrokerCommands(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "web", Policy{Method: MethodAllow, Commands: [][]string{{"id", "-u"}, {"echo", "hello", AnyArgs}}})
	for _, tc := range []struct {
		argv []string
		ok   bool
	}{
		{[]string{"id", "-u"}, true},
		{[]string{"/usr/bin/id", "-u"}, true},
		{[]string{"id"}, false},
		{[]string{"id", "-u", "-n"}, false},
		{[]string{"echo", "hello"}, true},
		{[]string{"echo", "hello", "world", "again"}, true},
		{[]string{"echo", "bye"}, false},
		{nil, false}, // no shell when commands are listed
	} {
		r := run(t, sock, tc.argv)
		if tc.ok && r.err != nil {
			t.Errorf("%q: %v, want it to run", tc.argv, r.err)
		}
		if !tc.ok {
			r.refused(t, fmt.Sprintf("%q", tc.argv), "")
		}
	}
}

// An ed25519 key, its authorized_keys line and its private key file.
type testKey struct {
	signer ssh.Signer
	priv   ed25519.PrivateKey
	line   string
	file   string
}

func newTestKey(t testing.TB, dir, name string) testKey {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, name)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, name)
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))) + " " + name
	return testKey{signer: signer, priv: priv, line: line, file: file}
}

// keyBroker serves child alice with method key and the key good; other
// is a key it does not take. Failures are not delayed.
func keyBroker(t *testing.T) (tb *testBroker, sock string, good, other testKey) {
	tb = newTestBroker(t)
	good = newTestKey(t, tb.dir, "good")
	other = newTestKey(t, tb.dir, "other")
	sock = tb.listen(t, "alice", Policy{Method: MethodKey, Keys: []string{good.line}})
	failureDelay = time.Millisecond
	t.Cleanup(func() { failureDelay = 500 * time.Millisecond })
	return tb, sock, good, other
}

func TestBrokerKey(t *testing.T) {
	tb, sock, good, other := keyBroker(t)

	// A key file.
	withFile := func(f string) func(*Client) { return func(c *Client) { c.KeyFiles = []string{f} } }
	if out := run(t, sock, []string{"id", "-u"}, withFile(good.file)).ok(t, "key file"); out != "0\n" {
		t.Errorf("id -u = %q", out)
	}
	tb.waitAudit(t, "method=key", "key="+ssh.FingerprintSHA256(good.signer.PublicKey()), "result=allowed")
	// The signature covers the request's bytes as sent, whatever JSON
	// escapes in them.
	if out := run(t, sock, []string{"echo", "<&>", "é\u2028\x01"}, withFile(good.file)).ok(t, "escaped argv"); out != "<&> é\u2028\x01\n" {
		t.Errorf("echo printed %q", out)
	}
	// The wrong key: the client finds none the parent takes.
	run(t, sock, []string{"id"}, withFile(other.file)).fails(t, "wrong key file", "the parent wants a signature by one of "+ssh.FingerprintSHA256(good.signer.PublicKey()))

	// An agent, as $SSH_AUTH_SOCK gives it: the key never leaves it.
	agentSock := filepath.Join(tb.dir, "agent")
	serveAgent(t, agentSock, other.priv, good.priv)
	withAgent := func(c *Client) { c.AgentSocket = agentSock; c.KeyFiles = []string{} }
	if out := run(t, sock, []string{"id", "-u"}, withAgent).ok(t, "agent"); out != "0\n" {
		t.Errorf("id -u through the agent = %q", out)
	}
	// keys_file is read in the parent at each request.
	keysFile := filepath.Join(tb.dir, "authorized")
	os.WriteFile(keysFile, []byte("# comment\n\n"+other.line+"\n"), 0o600)
	sock2 := tb.listen(t, "bob", Policy{Method: MethodKey, KeysFile: keysFile})
	run(t, sock2, []string{"true"}, withFile(other.file)).ok(t, "keys_file")
	run(t, sock2, []string{"true"}, withFile(good.file)).fails(t, "key not in keys_file", "tried "+good.file)
	// A keys_file the parent cannot read: refused, and no failure counted
	// against the child.
	os.Remove(keysFile)
	for range MaxFailures + 1 {
		run(t, sock2, []string{"true"}, withFile(other.file)).refused(t, "no keys_file", "the parent has no key for this container")
	}
	os.WriteFile(keysFile, []byte(other.line+"\n"), 0o600)
	run(t, sock2, []string{"true"}, withFile(other.file)).ok(t, "keys_file back")
}

// A signature the client forges past its own checks: a signature by a
// key the parent does not take, over the wrong nonce, or for another
// namespace, each fails, and the third failure locks the child out.
func TestBrokerKeyForged(t *testing.T) {
	tb, sock, good, other := keyBroker(t)
	signWith := func(s ssh.Signer, ns string, nonce func([]byte) []byte) (*Message, error) {
		conn, h := dialHello(t, sock)
		defer conn.Close()
		body, _ := json.Marshal(Request{Argv: []string{"true"}, PTY: true})
		sig, err := Sign(s.PublicKey(), func(d []byte) (*ssh.Signature, error) { return s.Sign(rand.Reader, d) }, ns, SignedMessage(nonce(h.Nonce), body))
		if err != nil {
			t.Fatal(err)
		}
		conn.Send(&Message{Type: MsgRequest, Body: body})
		sendBody(conn, MsgAuth, Auth{Signature: sig})
		m, _, err := conn.Recv()
		return m, err
	}
	same := func(n []byte) []byte { return n }
	for _, tc := range []struct {
		name  string
		s     ssh.Signer
		ns    string
		nonce func([]byte) []byte
		want  string
	}{
		{"other key", other.signer, SigNamespace, same, "is not among the keys"},
		{"old nonce", good.signer, SigNamespace, func([]byte) []byte { return make([]byte, NonceSize) }, "bad signature"},
		{"namespace", good.signer, "file", same, "namespace"},
	} {
		m, err := signWith(tc.s, tc.ns, tc.nonce)
		if err != nil || m.Type != MsgError || !strings.Contains(m.Error, tc.want) {
			t.Errorf("%s: %+v, %v; want an error saying %q", tc.name, m, err, tc.want)
		}
	}
	tb.waitAudit(t, "method=key", "result=failed")
	// Locked out now, the right key too.
	m, err := signWith(good.signer, SigNamespace, same)
	if err != nil || m.Type != MsgError || !strings.Contains(m.Error, "locked out") {
		t.Errorf("after %d failures: %+v, %v; want locked out", MaxFailures, m, err)
	}
}

// serveAgent serves an ssh-agent with keys on path.
func serveAgent(t *testing.T, path string, keys ...ed25519.PrivateKey) {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				agent.ServeAgent(kr, c)
			}()
		}
	}()
}

// dialHello connects as a client and reads the hello.
func dialHello(t *testing.T, sock string) (*Conn, Hello) {
	t.Helper()
	conn, err := Dial(sock)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := recv(t, conn)
	var h Hello
	if m.Type != MsgHello || DecodeBody(m, &h) != nil {
		t.Fatalf("first message %+v, want hello", m)
	}
	return conn, h
}

func TestBrokerPassword(t *testing.T) {
	tb := newTestBroker(t)
	hash, err := HashPassword("right")
	if err != nil {
		t.Fatal(err)
	}
	sock := tb.listen(t, "carol", Policy{Method: MethodPassword, PasswordHash: hash})
	failureDelay = 20 * time.Millisecond
	defer func() { failureDelay = 500 * time.Millisecond }()
	with := func(pw string) func(*Client) {
		return func(c *Client) { c.Ask = func(string) (string, error) { return pw, nil } }
	}
	if out := run(t, sock, []string{"id", "-u"}, with("right")).ok(t, "right password"); out != "0\n" {
		t.Errorf("id -u = %q", out)
	}
	// Failures are delayed, growing, and the third locks the child out.
	var took []time.Duration
	for range MaxFailures {
		start := time.Now()
		run(t, sock, []string{"true"}, with("wrong")).refused(t, "wrong password", "wrong password")
		took = append(took, time.Since(start))
	}
	for i, d := range took {
		if want := failureDelay << i; d < want {
			t.Errorf("failure %d answered after %s, want at least %s", i+1, d, want)
		}
	}
	run(t, sock, []string{"true"}, with("right")).refused(t, "right password after lockout", "locked out")
	tb.waitAudit(t, "child=carol", "method=password", "result=failed", `reason="wrong password"`)
	tb.waitAudit(t, "child=carol", "result=refused", "locked out")
	// No terminal to ask on: a clear error, nothing sent.
	run(t, sock, []string{"true"}).fails(t, "no Ask", "no terminal to ask it on")
}

// TestBrokerLimitsSurviveRestart: a child's failures and lockout are in
// the limits file, so a new broker (after the old one died) goes on
// counting and keeps the lockout; a file that is not JSON starts anew.
func TestBrokerLimitsSurviveRestart(t *testing.T) {
	limits := filepath.Join(t.TempDir(), "limits.json")
	hash, err := HashPassword("right")
	if err != nil {
		t.Fatal(err)
	}
	failureDelay = time.Millisecond
	defer func() { failureDelay = 500 * time.Millisecond }()
	with := func(pw string) func(*Client) {
		return func(c *Client) { c.Ask = func(string) (string, error) { return pw, nil } }
	}
	policy := Policy{Method: MethodPassword, PasswordHash: hash}

	first := newTestBrokerWith(t, limits)
	sock := first.listen(t, "carol", policy)
	for range MaxFailures - 1 {
		run(t, sock, []string{"true"}, with("wrong")).refused(t, "wrong password", "wrong password")
	}
	second := newTestBrokerWith(t, limits)
	sock = second.listen(t, "carol", policy)
	run(t, sock, []string{"true"}, with("wrong")).refused(t, "last wrong password", "wrong password")
	third := newTestBrokerWith(t, limits)
	sock = third.listen(t, "carol", policy)
	run(t, sock, []string{"true"}, with("right")).refused(t, "right password after lockout and restart", "locked out")

	if err := os.WriteFile(limits, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	fourth := newTestBrokerWith(t, limits)
	sock = fourth.listen(t, "carol", policy)
	run(t, sock, []string{"true"}, with("right")).ok(t, "right password, counts lost")
	if !strings.Contains(fourth.log.String(), "they start anew") {
		t.Errorf("an unreadable limits file is not reported: %q", fourth.log.String())
	}
}

func TestBrokerConfirm(t *testing.T) {
	tb := newTestBroker(t)
	helloTimeout = 50 * time.Millisecond
	defer func() { helloTimeout = 5 * time.Second }()
	sock := tb.listen(t, "dave", Policy{Method: MethodConfirm})
	for _, approve := range []bool{true, false} {
		notes := make(chan string, 1)
		done := make(chan result, 1)
		go func() {
			done <- run(t, sock, []string{"id", "-u"}, func(c *Client) { c.Notify = func(s string) { notes <- s } })
		}()
		var note string
		select {
		case note = <-notes:
		case r := <-done:
			t.Fatalf("finished without waiting: %+v", r)
		case <-time.After(10 * time.Second):
			t.Fatal("no wait message")
		}
		m, err := tb.control(t, MsgPending, struct{}{})
		if err != nil {
			t.Fatal(err)
		}
		var list []Pending
		json.Unmarshal(m.Body, &list)
		if len(list) != 1 || list[0].Child != "dave" || strings.Join(list[0].Command, " ") != "id -u" {
			t.Fatalf("pending = %+v", list)
		}
		if !strings.Contains(note, "nest approve "+strconv.FormatUint(list[0].ID, 10)) {
			t.Errorf("the client was told %q", note)
		}
		if !strings.Contains(tb.log.String(), fmt.Sprintf("nest approve %d, or nest deny %d", list[0].ID, list[0].ID)) {
			t.Errorf("the console does not show the request:\n%s", tb.log)
		}
		time.Sleep(2 * helloTimeout) // a slow decision: no deadline of the wait may run on
		if _, err := tb.control(t, MsgDecide, Decide{ID: list[0].ID, Approve: approve}); err != nil {
			t.Fatal(err)
		}
		r := <-done
		if approve {
			if r.ok(t, "approved") != "0\n" {
				t.Errorf("approved id -u = %q", r.out)
			}
		} else {
			r.refused(t, "denied", "denied in the parent")
		}
	}
	if _, err := tb.control(t, MsgDecide, Decide{ID: 99, Approve: true}); err == nil || !strings.Contains(err.Error(), "no request 99") {
		t.Errorf("decide of an unknown id = %v", err)
	}
}

// A request is checked before anything is proven or run.
func TestBrokerRequestChecks(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "eve", Policy{Method: MethodAllow})
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	stdio := []*os.File{null, null, null}
	for _, tc := range []struct {
		name string
		body string
		fds  []*os.File
		want string
	}{
		{"empty argv", `{"argv":[]}`, stdio, "empty command"},
		{"empty name", `{"argv":[""]}`, stdio, "empty command name"},
		{"relative path", `{"argv":["./x"]}`, stdio, "absolute path"},
		{"not found", `{"argv":["no-such-command-here"]}`, stdio, "not found in the parent's PATH"},
		{"NUL", `{"argv":["id","a\u0000b"]}`, stdio, "NUL"},
		{"no fds", `{"argv":["id"]}`, nil, "carries stdin, stdout and stderr"},
		{"pty with fds", `{"argv":["id"],"pty":true}`, stdio, "carries no fds"},
		{"window without pty", `{"argv":["id"],"rows":5,"cols":5}`, stdio, "window size without a pty"},
		{"huge window", `{"argv":["id"],"pty":true,"rows":100000,"cols":5}`, nil, "out of range"},
		{"bad TERM", `{"argv":["id"],"pty":true,"term":"x;rm"}`, nil, "TERM"},
		{"claims a child", `{"argv":["id"],"child":"root"}`, stdio, `unknown field "child"`},
		{"claims a user", `{"argv":["id"],"as":"root"}`, stdio, `unknown field "as"`},
		{"twice", `{"argv":["id"],"argv":["sh"]}`, stdio, "appears twice"},
	} {
		conn, _ := dialHello(t, sock)
		conn.Send(&Message{Type: MsgRequest, Body: json.RawMessage(tc.body)}, tc.fds...)
		m, _ := recv(t, conn)
		if m.Type != MsgError || !strings.Contains(m.Error, tc.want) {
			t.Errorf("%s: %+v, want an error saying %q", tc.name, m, tc.want)
		}
		conn.Close()
	}
	if strings.Contains(tb.audit.String(), "result=allowed") {
		t.Errorf("a bad request ran:\n%s", tb.audit)
	}
}

// Signals travel in fd mode; a client that hangs up takes its session
// with it.
func TestBrokerSignalsAndHangup(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "eve", Policy{Method: MethodAllow})
	null, _ := os.Open(os.DevNull)
	defer null.Close()
	pidFile := filepath.Join(tb.dir, "pid")
	start := func() *Conn {
		os.Remove(pidFile)
		conn, _ := dialHello(t, sock)
		body, _ := json.Marshal(Request{Argv: []string{"sh", "-c", "echo $$ > " + pidFile + "; exec sleep 100"}})
		if err := conn.Send(&Message{Type: MsgRequest, Body: body}, null, null, null); err != nil {
			t.Fatal(err)
		}
		if m, _ := recv(t, conn); m.Type != MsgStarted {
			t.Fatalf("got %+v, want started", m)
		}
		return conn
	}
	readPid := func() int {
		for range 500 {
			b, err := os.ReadFile(pidFile)
			if n, err2 := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && err2 == nil {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no pid file")
		return 0
	}

	conn := start()
	readPid()
	sendBody(conn, MsgSignal, Signal{Name: "INT"})
	m, _ := recv(t, conn)
	var e Exit
	if m.Type != MsgExit || DecodeBody(m, &e) != nil || e.Code != 130 || e.Signal != "INT" {
		t.Errorf("after INT: %+v, want exit 130 by INT", m)
	}
	conn.Close()

	conn = start()
	pid := readPid()
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	conn.Close()
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(p, int((hangupGrace + 5*time.Second).Milliseconds())); n != 1 {
		t.Errorf("the session's command lives on after its client hung up")
	}
}

// The session's terminal is a new pty of the parent: bytes, the window
// size, ^C and the exit status travel.
func TestBrokerPTY(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "alice", Policy{Method: MethodAllow})
	master, slave, err := OpenPTY()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer slave.Close()
	SetSize(master, 24, 80)
	var screen lockedBuffer
	go io.Copy(&screen, master)
	waitScreen := func(want string) {
		t.Helper()
		for range 1000 {
			if strings.Contains(screen.String(), want) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("the terminal never showed %q:\n%s", want, screen.String())
	}
	done := make(chan result, 1)
	go func() {
		c := &Client{Socket: sock, Argv: []string{"/bin/sh"}, Stdin: slave, Stdout: slave, Stderr: slave,
			ForwardSignals: true, Term: "xterm"}
		code, err := c.Run()
		done <- result{code: code, err: err}
	}()
	type_ := func(s string) { master.Write([]byte(s)) }
	type_("tty; stty size; echo term=$TERM\r")
	waitScreen("24 80")
	waitScreen("term=xterm")
	if strings.Contains(screen.String(), "not a tty") {
		t.Errorf("the session has no terminal:\n%s", screen.String())
	}
	SetSize(master, 40, 100)
	unix.Kill(os.Getpid(), unix.SIGWINCH)
	time.Sleep(100 * time.Millisecond)
	type_("stty size\r")
	waitScreen("40 100")
	// ^C once the job runs (typed while the shell reads its line, it is
	// a byte, not a signal).
	type_("echo job; sleep 100\r")
	waitScreen("job\r\n")
	time.Sleep(100 * time.Millisecond)
	type_("\x03")
	type_("echo rc=$?\r")
	waitScreen("rc=130")
	type_("exit 3\r")
	select {
	case r := <-done:
		if r.err != nil || r.code != 3 {
			t.Errorf("the session ended %d, %v; want 3", r.code, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end")
	}
	tb.waitAudit(t, "pty=yes", "result=exited", `reason="exit code 3"`)
}

// The control side: what the init sends is checked too.
func TestBrokerControl(t *testing.T) {
	tb := newTestBroker(t)
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	for _, tc := range []struct {
		name string
		l    Listen
		fds  []*os.File
		want string
	}{
		{"no socket", Listen{Child: "a", Policy: Policy{Method: MethodAllow}}, nil, "want one listening socket"},
		{"a pipe", Listen{Child: "a", Policy: Policy{Method: MethodAllow}}, []*os.File{r}, "not a socket"},
		{"bad method", Listen{Child: "a", Policy: Policy{Method: "maybe"}}, []*os.File{r}, "method"},
		{"key without keys", Listen{Child: "a", Policy: Policy{Method: MethodKey}}, []*os.File{r}, "needs keys"},
		{"bad hash", Listen{Child: "a", Policy: Policy{Method: MethodPassword, PasswordHash: "plain"}}, []*os.File{r}, "unknown hash"},
	} {
		if _, err := tb.control(t, MsgListen, tc.l, tc.fds...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	tb.listen(t, "a", Policy{Method: MethodAllow})
	tb.listen(t, "b", Policy{Method: MethodAllow})
	if got := strings.Join(tb.b.Children(), " "); got != "a b" {
		t.Errorf("children = %q", got)
	}
	if _, err := tb.control(t, MsgForget, Forget{Child: "a"}); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(tb.b.Children(), " "); got != "b" {
		t.Errorf("children after forget = %q", got)
	}
	if _, err := tb.control(t, "hello", struct{}{}); err == nil {
		t.Errorf("the broker took a hello from its init")
	}
}

// A hostile child: 10,000 malformed, truncated or wrongly attached
// packets, each on a connection of its own, leave the broker serving with
// no descriptor or goroutine more than before.
func TestBrokerMalformed(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "mallory", Policy{Method: MethodDeny})
	null, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(null)
	valid := []byte(`{"type":"request","body":{"argv":["id","-u"],"env":{"LANG":"C"}}}`)
	rawConn := func() int {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: sock}); err != nil {
			t.Fatal(err)
		}
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 10})
		return fd
	}
	buf := make([]byte, MaxMessage+1)
	// read reads n packets: the hello, and the answer to what was sent.
	read := func(fd, n int) {
		for range n {
			if n, err := unix.Read(fd, buf); n <= 0 || err != nil {
				return
			}
		}
	}
	// One round first: the runtime's poller, the accept goroutine.
	fd := rawConn()
	read(fd, 1)
	unix.Close(fd)
	fds, goroutines := openFDs(t), goroutinesSettled()
	seed := time.Now().UnixNano()
	rng := newRand(seed)
	for i := range 10000 {
		fd := rawConn()
		var b []byte
		switch rng.IntN(5) {
		case 0:
			b = hostile[rng.IntN(len(hostile))]
		case 1:
			b = valid[:rng.IntN(len(valid))]
		case 2:
			b = append([]byte(nil), valid...)
			b[rng.IntN(len(b))] = byte(rng.IntN(256))
		case 3:
			b = []byte(`{"type":"data","body":{"data":"AAAA"}}`)
		default:
			b = bytes.Repeat([]byte{'x'}, MaxMessage+1+rng.IntN(100))
		}
		var attach []int
		if rng.IntN(3) == 0 {
			for range 1 + rng.IntN(MaxFDs+2) {
				attach = append(attach, null)
			}
		}
		sent := false
		if rng.IntN(50) != 0 { // now and then: hang up without a word
			var oob []byte
			if len(attach) > 0 {
				oob = unix.UnixRights(attach...)
			}
			// A packet over the socket's buffer fails here (EMSGSIZE).
			sent = unix.Sendmsg(fd, b, oob, nil, unix.MSG_NOSIGNAL) == nil
		}
		if sent && rng.IntN(2) == 0 {
			read(fd, 2)
		}
		unix.Close(fd)
		if i%1000 == 999 && tb.b.conns > maxConnsPerChild {
			t.Fatalf("seed %d: %d connections open", seed, tb.b.conns)
		}
	}
	// Still serving, and refusing by the policy (once the flood's last
	// connections are done: 8 of one child at once).
	r := run(t, sock, []string{"id"})
	for i := 0; i < 100 && r.err != nil && strings.Contains(r.err.Error(), "too many"); i++ {
		time.Sleep(10 * time.Millisecond)
		r = run(t, sock, []string{"id"})
	}
	r.refused(t, "after the flood", "denied")
	waitNoLeaks(t, fds, goroutines)
	if n := strings.Count(tb.log.String(), "\n"); n > 100 {
		t.Errorf("the flood wrote %d lines to the console, want it limited", n)
	}
}

func newRand(seed int64) *mrand.Rand { return mrand.New(mrand.NewPCG(uint64(seed), 1)) }

func numGoroutine() int { return runtime.NumGoroutine() }

// goroutinesSettled counts goroutines once the ones that are ending have
// ended.
func goroutinesSettled() int {
	time.Sleep(50 * time.Millisecond)
	return numGoroutine()
}

func waitNoLeaks(t *testing.T, fds, goroutines int) {
	t.Helper()
	for i := 0; ; i++ {
		f, g := openFDs(t), numGoroutine()
		if f <= fds && g <= goroutines {
			return
		}
		if i == 500 {
			t.Fatalf("leak: %d fds open (was %d), %d goroutines (was %d)", f, fds, g, goroutines)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The client's own view: no parent socket is a clear error.
func TestClientNoParent(t *testing.T) {
	r := run(t, filepath.Join(t.TempDir(), "none"), []string{"id"})
	if r.err == nil || !strings.Contains(r.err.Error(), "no parent to escalate to") {
		t.Errorf("Run without a socket = %v", r.err)
	}
}

// clientHelper is nest escalate in a process of its own (helper
// "client"): it says who it is where it runs, then runs the command of
// NEST_ESCALATE_TEST_ARGV through the socket NEST_ESCALATE_TEST_SOCKET.
func clientHelper() int {
	ns, _ := os.Readlink("/proc/self/ns/pid")
	fmt.Printf("client uid=%d pid=%d %s\n", os.Getuid(), os.Getpid(), ns)
	var argv []string
	json.Unmarshal([]byte(os.Getenv("NEST_ESCALATE_TEST_ARGV")), &argv)
	c := &Client{Socket: os.Getenv("NEST_ESCALATE_TEST_SOCKET"), Argv: argv, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr}
	code, err := c.Run()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}

// A client in a child's namespaces (its own user namespace, mapped to an
// unprivileged range, and pid namespace): the parent sees the mapped
// uid, and the command runs as the parent's root in the parent's
// namespaces.
func TestBrokerFromUserNamespace(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "alice", Policy{Method: MethodAllow})
	// The test binary, where the mapped root can exec it.
	bin := filepath.Join(tb.dir, "escalate.test")
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	const base = 300000
	argv, _ := json.Marshal([]string{"sh", "-c", "id -u; readlink /proc/self/ns/pid /proc/self/ns/user"})
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = []string{helperEnv + "=client", "NEST_ESCALATE_TEST_SOCKET=" + sock, "NEST_ESCALATE_TEST_ARGV=" + string(argv)}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  unix.CLONE_NEWUSER | unix.CLONE_NEWPID | unix.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: base, Size: 65536}},
		Credential:  &syscall.Credential{Uid: 0, Gid: 0, NoSetGroups: true},
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client in a user namespace: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	ownPid, _ := os.Readlink("/proc/self/ns/pid")
	ownUser, _ := os.Readlink("/proc/self/ns/user")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "client uid=0 pid=1 ") || strings.HasSuffix(lines[0], ownPid) {
		t.Fatalf("output %q; want the client as root and pid 1 of its own namespaces, then the command's", lines)
	}
	if lines[1] != "0" || lines[2] != ownPid || lines[3] != ownUser {
		t.Errorf("the command printed %q; want uid 0 in the parent's namespaces (%s, %s)", lines[1:], ownPid, ownUser)
	}
	tb.waitAudit(t, "child=alice", fmt.Sprintf("uid=%d", base), "result=exited")
}

// TestBrokerConnectionCap: a child holds maxConnsPerChild connections
// that send nothing; one more is told why it is turned away (never a bare
// broken pipe, though the parent may hang up before it read the request),
// and once they are gone the child is served again.
func TestBrokerConnectionCap(t *testing.T) {
	tb := newTestBroker(t)
	sock := tb.listen(t, "alice", Policy{Method: MethodAllow})
	var held []*Conn
	for range maxConnsPerChild {
		c, err := Dial(sock)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if m, _, err := c.Recv(); err != nil || m.Type != MsgHello {
			t.Fatalf("a held connection: %+v, %v; want a hello", m, err)
		}
	}
	for range 20 {
		run(t, sock, []string{"true"}).fails(t, "one too many", "too many escalations of this container under way")
	}
	for _, c := range held {
		c.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		r := run(t, sock, []string{"true"})
		if r.err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the held connections closed: %v", r.err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
