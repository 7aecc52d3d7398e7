package escalate

import (
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"
	"golang.org/x/term"
)

// ParentSocket is where a child container finds its parent's escalation
// socket: a directory the parent made and bound there.
const ParentSocket = "/run/nest/parent/sock"

// Client is one `nest escalate`: it asks the parent, proves what the
// parent's policy asks for, and runs the command there on a pty of the
// parent (all of stdin, stdout and stderr terminals) or on its own stdin,
// stdout and stderr, passed as they are.
type Client struct {
	Socket string   // default ParentSocket
	Argv   []string // nil: the parent user's login shell
	Stdin  *os.File
	Stdout *os.File
	Stderr *os.File
	// AgentSocket is an ssh-agent's ($SSH_AUTH_SOCK); KeyFiles are tried
	// after the agent's keys (default ~/.ssh/id_ed25519, id_ecdsa,
	// id_rsa).
	AgentSocket string
	KeyFiles    []string
	// Ask asks the user for a secret (a password, a key's passphrase)
	// without echo; nil: no secret can be asked.
	Ask func(prompt string) (string, error)
	// Notify tells the user how the request goes (waiting for
	// approval); nil: nothing is said.
	Notify func(msg string)
	// ForwardSignals sends SIGINT, SIGTERM, SIGHUP and SIGQUIT that this
	// process gets to the session, and SIGWINCH as a new window size.
	ForwardSignals bool
	// Env is the locale and COLORTERM to pass (LANG, LANGUAGE, LC_*).
	Env  map[string]string
	Term string
}

// helloWait bounds the wait for the parent's first word: a broker
// restarting, or busy on a slow machine.
const helloWait = 30 * time.Second

// ExitError is a refusal or failure the parent reported.
type ExitError struct{ Msg string }

func (e *ExitError) Error() string { return e.Msg }

// Dial connects to an escalation socket.
func Dial(path string) (*Conn, error) {
	return dialSend(path, nil, nil)
}

// dialSend connects to an escalation socket and, if packet is not nil,
// sends it with fds attached before the socket goes to the runtime's
// poller: the request is on its way before anything else is set up.
func dialSend(path string, packet []byte, fds []*os.File) (*Conn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("escalate: socket: %w", err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("escalate: connect %s: %w", path, err)
	}
	if packet != nil {
		// A new connection's queue is empty: this send does not wait.
		err := withFDs(fds, nil, func(nums []int) error {
			var oob []byte
			if len(nums) > 0 {
				oob = unix.UnixRights(nums...)
			}
			for {
				err := unix.Sendmsg(fd, packet, oob, nil, unix.MSG_NOSIGNAL)
				if err != unix.EINTR {
					return err
				}
			}
		})
		if err != nil && !errors.Is(err, unix.EPIPE) && !errors.Is(err, unix.ECONNRESET) {
			unix.Close(fd)
			return nil, fmt.Errorf("escalate: send request: %w", err)
		}
		if err != nil {
			// The parent hung up before it read the request; why, if
			// it said, waits to be read.
			unix.SetNonblock(fd, true)
			conn := newConn(os.NewFile(uintptr(fd), path))
			conn.SetReadDeadline(time.Now().Add(helloWait))
			m, _, rerr := conn.Recv()
			conn.Close()
			if rerr == nil && m.Type == MsgError {
				return nil, &ExitError{Msg: m.Error}
			}
			return nil, fmt.Errorf("escalate: send request: %w", err)
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("escalate: %w", err)
	}
	return newConn(os.NewFile(uintptr(fd), path)), nil
}

// Run asks for the escalation and returns the command's exit code (128 +
// the signal that killed it). A refusal is an *ExitError.
func (c *Client) Run() (int, error) {
	path := c.Socket
	if path == "" {
		path = ParentSocket
	}
	var warm <-chan map[string]ssh.Signer
	if c.mayUseKeyFile() {
		warm = c.warmUp()
	}

	// The request goes out at once, without waiting for the hello: a round
	// trip less. Its proof, if the parent's method wants one, follows the
	// hello (a signature covers the hello's nonce).
	pty := isTerminal(c.Stdin) && isTerminal(c.Stdout) && isTerminal(c.Stderr)
	q := Request{Argv: c.Argv, PTY: pty, Env: c.Env}
	if pty {
		q.Term = c.Term
		if cols, rows, err := term.GetSize(int(c.Stdout.Fd())); err == nil {
			q.Rows, q.Cols = rows, cols
		}
	}
	packet, body, err := requestPacket(&q)
	if err != nil {
		return 1, err
	}
	if len(packet) > MaxMessage {
		return 1, fmt.Errorf("the request of %d bytes is over the limit of %d", len(packet), MaxMessage)
	}
	var fds []*os.File
	if !pty {
		fds = []*os.File{c.Stdin, c.Stdout, c.Stderr}
	}
	conn, err := dialSend(path, packet, fds)
	if errors.Is(err, unix.ENOENT) {
		return 1, fmt.Errorf("no parent to escalate to: %s does not exist (the root container has none)", path)
	}
	if err != nil {
		return 1, err
	}
	defer conn.Close()

	conn.SetReadDeadline(time.Now().Add(helloWait))
	m, err := c.recv(conn)
	if err != nil {
		return 1, err
	}
	if m.Type != MsgHello {
		return 1, fmt.Errorf("escalate: the parent said %s first, want hello", m.Type)
	}
	var h Hello
	if err := DecodeBody(m, &h); err != nil {
		return 1, err
	}
	conn.SetReadDeadline(time.Time{})
	if h.Version != ProtocolVersion {
		return 1, fmt.Errorf("escalate: the parent speaks version %d, this nest %d", h.Version, ProtocolVersion)
	}
	var auth *Auth
	switch h.Method {
	case MethodKey:
		sig, err := c.sign(&h, SignedMessage(h.Nonce, body), warm)
		if err != nil {
			return 1, err
		}
		auth = &Auth{Signature: sig}
	case MethodPassword:
		if c.Ask == nil {
			return 1, errors.New("the parent asks for a password, and there is no terminal to ask it on")
		}
		pw, err := c.Ask(fmt.Sprintf("[nest] password of container %s, to run as %s in the parent: ", h.Child, h.As))
		if err != nil {
			return 1, err
		}
		auth = &Auth{Password: pw}
	}
	if auth != nil {
		if err := sendBody(conn, MsgAuth, auth); err != nil {
			return 1, err
		}
	}
	for {
		m, err := c.recv(conn)
		if err != nil {
			return 1, err
		}
		switch m.Type {
		case MsgWait:
			var w Wait
			if DecodeBody(m, &w) == nil && c.Notify != nil {
				c.Notify(fmt.Sprintf("waiting for approval: someone in the parent runs nest approve %d (or nest deny %d)", w.ID, w.ID))
			}
		case MsgStarted:
			if pty {
				return c.ptySession(conn)
			}
			return c.fdSession(conn)
		default:
			return 1, fmt.Errorf("escalate: unexpected %s from the parent", m.Type)
		}
	}
}

// recv reads one message; an "error" becomes an *ExitError.
func (c *Client) recv(conn *Conn) (*Message, error) {
	m, fds, err := conn.Recv()
	for _, f := range fds {
		f.Close() // the parent sends none
	}
	if errors.Is(err, io.EOF) {
		return nil, errors.New("escalate: the parent hung up")
	}
	if err != nil {
		return nil, err
	}
	if m.Type == MsgError {
		return nil, &ExitError{Msg: printableText(m.Error)}
	}
	return m, nil
}

// exitCode reads the exit message.
func exitCode(m *Message) (int, error) {
	var e Exit
	if err := DecodeBody(m, &e); err != nil {
		return 1, err
	}
	if e.Code < 0 || e.Code > 255 {
		return 1, fmt.Errorf("escalate: exit code %d from the parent", e.Code)
	}
	return e.Code, nil
}

var forwarded = []os.Signal{unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT}

// fdSession waits for the command, which runs on this process's own
// stdin, stdout and stderr, forwarding signals. The exit message is read
// here, not handed over by another goroutine: it ends nest escalate, and
// each hop between threads is time.
func (c *Client) fdSession(conn *Conn) (int, error) {
	if c.ForwardSignals {
		fw := forwardSignals(conn, forwarded)
		defer fw.stop()
	}
	for {
		m, err := c.recv(conn)
		if err != nil {
			return 1, err
		}
		if m.Type == MsgExit {
			return exitCode(m)
		}
	}
}

// A forwarder sends the signals this process gets to a session.
type forwarder struct {
	ch    chan os.Signal
	ready chan struct{} // closed once the signals are caught

	mu       sync.Mutex
	stopped  bool
	catching bool
}

// forwardSignals forwards sigs to the session on conn until stop. It
// starts to catch them in the background: os/signal costs 0.6 ms here (it
// starts two threads and hands each signal to one of them and back), a
// tenth of an escalation of true, which then overlaps with the command.
// A signal that comes first ends nest escalate as if it caught none, and
// the parent hangs the session up, as for any client that goes away: the
// command gets SIGHUP.
func forwardSignals(conn *Conn, sigs []os.Signal) *forwarder {
	fw := &forwarder{ch: make(chan os.Signal, 8), ready: make(chan struct{})}
	go func() {
		fw.mu.Lock()
		defer fw.mu.Unlock()
		if fw.stopped {
			return
		}
		signal.Notify(fw.ch, sigs...)
		fw.catching = true
		close(fw.ready)
		go func() {
			for sig := range fw.ch {
				if name := SignalName(sig.(unix.Signal)); name != "" {
					sendBody(conn, MsgSignal, Signal{Name: name})
				}
			}
		}()
	}()
	return fw
}

// stop ends the forwarding. It does not wait for os/signal to let go of
// the signals (signal.Stop hands each to a thread of the runtime's and
// back, 0.2 ms here, and nest escalate exits right after): until it has,
// a signal is caught and dropped.
func (fw *forwarder) stop() {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.stopped = true
	if fw.catching {
		go func() {
			signal.Stop(fw.ch)
			close(fw.ch) // ends the forwarding goroutine: nothing sends on ch after Stop
		}()
	}
}

type received struct {
	m   *Message
	err error
}

// messages delivers the parent's messages until an error.
func (c *Client) messages(conn *Conn) <-chan received {
	out := make(chan received, 16)
	go func() {
		for {
			m, err := c.recv(conn)
			out <- received{m, err}
			if err != nil {
				return
			}
		}
	}()
	return out
}

// ptySession puts this terminal in raw mode and carries bytes, the
// window size and signals to the parent's pty until the command exits.
func (c *Client) ptySession(conn *Conn) (int, error) {
	if old, err := term.MakeRaw(int(c.Stdin.Fd())); err == nil {
		defer term.Restore(int(c.Stdin.Fd()), old)
	}
	sigs := make(chan os.Signal, 8)
	if c.ForwardSignals {
		signal.Notify(sigs, append([]os.Signal{unix.SIGWINCH}, forwarded...)...)
		defer signal.Stop(sigs)
	}
	go func() {
		buf := make([]byte, dataChunk)
		for {
			n, err := c.Stdin.Read(buf)
			if n > 0 {
				if sendBody(conn, MsgData, Data{Data: buf[:n]}) != nil {
					return
				}
			}
			if err != nil {
				conn.Send(&Message{Type: MsgEOF})
				return
			}
		}
	}()
	msgs := c.messages(conn)
	for {
		select {
		case sig := <-sigs:
			if sig == unix.SIGWINCH {
				if cols, rows, err := term.GetSize(int(c.Stdout.Fd())); err == nil {
					sendBody(conn, MsgResize, Size{Rows: rows, Cols: cols})
				}
				continue
			}
			if name := SignalName(sig.(unix.Signal)); name != "" {
				sendBody(conn, MsgSignal, Signal{Name: name})
			}
		case r := <-msgs:
			if r.err != nil {
				return 1, r.err
			}
			switch r.m.Type {
			case MsgData:
				var d Data
				if err := DecodeBody(r.m, &d); err != nil {
					return 1, err
				}
				c.Stdout.Write(d.Data)
			case MsgExit:
				return exitCode(r.m)
			}
		}
	}
}

// Resize tells the parent a new window size of this session (for a
// caller that does not use ForwardSignals).
func Resize(conn *Conn, rows, cols int) error {
	return sendBody(conn, MsgResize, Size{Rows: rows, Cols: cols})
}

func isTerminal(f *os.File) bool { return f != nil && term.IsTerminal(int(f.Fd())) }

// sign makes the SSHSIG of message with a key the parent accepts: one of
// the agent's, else one of the key files.
func (c *Client) sign(h *Hello, message []byte, warm <-chan map[string]ssh.Signer) ([]byte, error) {
	accepted := func(k ssh.PublicKey) bool {
		return len(h.Keys) == 0 || slices.Contains(h.Keys, ssh.FingerprintSHA256(k))
	}
	var tried []string
	if c.AgentSocket != "" {
		ac, err := net.Dial("unix", c.AgentSocket)
		if err == nil {
			defer ac.Close()
			ag := agent.NewClient(ac)
			keys, err := ag.List()
			if err != nil {
				tried = append(tried, "the agent: "+err.Error())
			}
			for _, k := range keys {
				if !accepted(k) {
					tried = append(tried, "the agent's "+ssh.FingerprintSHA256(k))
					continue
				}
				var flags agent.SignatureFlags
				if k.Type() == ssh.KeyAlgoRSA {
					flags = agent.SignatureFlagRsaSha512
				}
				return Sign(k, func(d []byte) (*ssh.Signature, error) { return ag.SignWithFlags(k, d, flags) }, SigNamespace, message)
			}
		} else {
			tried = append(tried, "the agent: "+err.Error())
		}
	}
	files := c.KeyFiles
	if files == nil {
		if home, err := os.UserHomeDir(); err == nil {
			for _, n := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
				files = append(files, filepath.Join(home, ".ssh", n))
			}
		}
	}
	var loaded map[string]ssh.Signer
	if warm != nil {
		loaded = <-warm
	}
	for _, f := range files {
		signer, err := loaded[f], error(nil)
		if signer == nil {
			signer, err = c.loadKey(f)
		}
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			tried = append(tried, err.Error())
			continue
		}
		if !accepted(signer.PublicKey()) {
			tried = append(tried, f+" ("+ssh.FingerprintSHA256(signer.PublicKey())+")")
			continue
		}
		sign := signer.Sign
		if as, ok := signer.(ssh.AlgorithmSigner); ok && signer.PublicKey().Type() == ssh.KeyAlgoRSA {
			sign = func(_ io.Reader, d []byte) (*ssh.Signature, error) {
				return as.SignWithAlgorithm(nil, d, ssh.KeyAlgoRSASHA512)
			}
		}
		return Sign(signer.PublicKey(), func(d []byte) (*ssh.Signature, error) { return sign(nil, d) }, SigNamespace, message)
	}
	want := "the keys in its config"
	if len(h.Keys) > 0 {
		want = strings.Join(h.Keys, ", ")
	}
	if len(tried) == 0 {
		return nil, fmt.Errorf("the parent wants a signature by one of %s, and there is no ssh-agent ($SSH_AUTH_SOCK) and no key in ~/.ssh", want)
	}
	return nil, fmt.Errorf("the parent wants a signature by one of %s; tried %s", want, strings.Join(tried, ", "))
}

// mayUseKeyFile says whether this escalation may sign with a key file:
// --key was given, or there is no agent and ~/.ssh/id_ed25519 exists.
func (c *Client) mayUseKeyFile() bool {
	if len(c.KeyFiles) > 0 {
		return true
	}
	if c.AgentSocket != "" {
		return false
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	_, err = os.Stat(filepath.Join(home, ".ssh", "id_ed25519"))
	return err == nil
}

// warmUp does, while the request travels and the parent answers, what
// signing with a key file costs the first time in a process: it reads
// and parses the --key files that need no passphrase (delivered on the
// channel, for sign) and pages in the signing code and the JSON encoder
// of the auth message. Nothing of the user's is signed; if the parent's
// method is not key, the work is lost, on another CPU.
func (c *Client) warmUp() <-chan map[string]ssh.Signer {
	out := make(chan map[string]ssh.Signer, 1)
	files := slices.Clone(c.KeyFiles)
	go func() {
		loaded := make(map[string]ssh.Signer)
		for _, f := range files {
			if b, err := os.ReadFile(f); err == nil {
				if s, err := parseKey(b, nil); err == nil {
					loaded[f] = s
				}
			}
		}
		signEd25519(make(ed25519.PrivateKey, ed25519.PrivateKeySize), nil)
		if body, err := jsonBody(Auth{Signature: make([]byte, 64)}); err == nil {
			json.Marshal(&Message{Type: MsgAuth, Body: body})
		}
		out <- loaded
	}()
	return out
}

// parseKey reads a private key, with its passphrase if not nil.
func parseKey(b, passphrase []byte) (ssh.Signer, error) {
	var key any
	var err error
	if passphrase == nil {
		key, err = ssh.ParseRawPrivateKey(b)
	} else {
		key, err = ssh.ParseRawPrivateKeyWithPassphrase(b, passphrase)
	}
	if err != nil {
		return nil, err
	}
	return signerOf(key)
}

// loadKey reads a private key file, asking for its passphrase if it has
// one.
func (c *Client) loadKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s, err := parseKey(b, nil)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		if c.Ask == nil {
			return nil, fmt.Errorf("%s needs a passphrase and there is no terminal to ask it on", path)
		}
		pass, aerr := c.Ask(fmt.Sprintf("[nest] passphrase of %s: ", path))
		if aerr != nil {
			return nil, aerr
		}
		s, err = parseKey(b, []byte(pass))
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return s, nil
}

// printableText cleans a message of the parent for the terminal.
func printableText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
