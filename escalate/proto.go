package escalate

import "time"

// The escalation protocol on a child's socket (docs/control-api.md,
// "Escalation"). Both sides speak at once: the broker its hello, the
// client its request.
//
//	broker → client  hello    Hello: the method this child must use, a fresh nonce
//	client → broker  request  Request (+ stdin, stdout, stderr unless PTY)
//	client → broker  auth     Auth, for the key and password methods
//	broker → client  wait     Wait, for confirm: the request waits for `nest approve ID`
//	broker → client  started  the command runs
//	both             data     Data: terminal bytes (pty sessions)
//	client → broker  resize   Size; signal Signal; eof (pty: ^D)
//	broker → client  exit     Exit, last
//
// A refusal is an "error" message; the broker closes the connection after
// it. Between PID 1 and its broker (a socketpair, fd 3 of the broker):
// listen (Listen + the listening socket), forget (Forget), pending (reply:
// []Pending) and decide (Decide), each answered with its own type or
// "error".

// ProtocolVersion is Hello.Version.
const ProtocolVersion = 1

// Methods of a policy (Policy.Method): how a child proves it may escalate.
const (
	MethodDeny     = "deny"     // never (the default)
	MethodAllow    = "allow"    // always: the child's root is trusted as the parent's
	MethodKey      = "key"      // an SSH signature by one of Policy.Keys over the nonce and the request
	MethodPassword = "password" // the container's password_hash
	MethodConfirm  = "confirm"  // someone in the parent runs nest approve ID
)

// Methods lists every method, in the order the docs give them.
var Methods = []string{MethodDeny, MethodAllow, MethodKey, MethodPassword, MethodConfirm}

// Message types of escalation (see Types).
const (
	MsgHello   = "hello"
	MsgRequest = "request"
	MsgAuth    = "auth"
	MsgWait    = "wait"
	MsgStarted = "started"
	MsgData    = "data"
	MsgResize  = "resize"
	MsgSignal  = "signal"
	MsgEOF     = "eof"
	MsgExit    = "exit"
	MsgError   = "error"

	MsgListen  = "listen"
	MsgForget  = "forget"
	MsgPending = "pending"
	MsgDecide  = "decide"
)

// Hello opens every escalation connection.
type Hello struct {
	Version int    `json:"version"`
	Child   string `json:"child"`  // the name the parent gives this container
	Method  string `json:"method"` // one of Methods
	As      string `json:"as"`     // the parent-side user the command runs as
	Nonce   []byte `json:"nonce"`  // NonceSize random bytes, new for each connection
	// Keys are the SHA256 fingerprints of the keys the parent accepts
	// (method key), so that a client with several picks the right one.
	Keys []string `json:"keys,omitempty"`
}

// NonceSize is the length of Hello.Nonce.
const NonceSize = 32

// Request is what a client asks for. With PTY false it carries the
// client's stdin, stdout and stderr, which the command gets as they are.
type Request struct {
	// Argv is the command to run in the parent; empty for the target
	// user's login shell. Argv[0] is a path or a name looked up in the
	// parent's secure PATH, never in the child's.
	Argv []string `json:"argv,omitempty"`
	// PTY asks for a terminal in the parent: the client's stdin, stdout
	// and stderr are all terminals.
	PTY  bool   `json:"pty,omitempty"`
	Term string `json:"term,omitempty"` // TERM for the session
	Rows int    `json:"rows,omitempty"` // the window, for a PTY
	Cols int    `json:"cols,omitempty"`
	// Env may carry LANG, LANGUAGE, LC_* and COLORTERM; nothing else of the
	// child's environment crosses.
	Env map[string]string `json:"env,omitempty"`
}

// Auth proves a request: an SSHSIG signature (method key) or a password.
type Auth struct {
	Signature []byte `json:"signature,omitempty"`
	Password  string `json:"password,omitempty"`
}

// Wait tells a client that its request waits for a person in the parent.
type Wait struct {
	ID uint64 `json:"id"`
}

// Data carries terminal bytes of a PTY session.
type Data struct {
	Data []byte `json:"data"`
}

// Size is a terminal's window.
type Size struct {
	Rows int `json:"rows"`
	Cols int `json:"cols"`
}

// Signal names a signal for the session: INT, TERM, HUP, QUIT, TSTP,
// CONT, WINCH, USR1 or USR2.
type Signal struct {
	Name string `json:"name"`
}

// Exit ends a session: the command's exit code, or the signal that
// killed it (then Code is 128 + the signal, as a shell says it).
type Exit struct {
	Code   int    `json:"code"`
	Signal string `json:"signal,omitempty"`
}

// Policy is what one child may do: from the parent's config, sent by PID 1
// with the child's listening socket. Nothing in a request changes it.
type Policy struct {
	Method string `json:"method"`
	// Keys are authorized_keys lines; KeysFile, a path in the parent
	// read at every request, adds its lines.
	Keys     []string `json:"keys,omitempty"`
	KeysFile string   `json:"keys_file,omitempty"`
	As       string   `json:"as,omitempty"` // default root
	// Commands, if any, are the only commands that may run (no shell):
	// an exact argv, or a prefix followed by "..." for any further
	// arguments.
	Commands     [][]string `json:"commands,omitempty"`
	PasswordHash string     `json:"password_hash,omitempty"`
}

// Listen gives the broker one child's listening socket and policy; a
// second Listen for the same child replaces both.
type Listen struct {
	Child  string `json:"child"`
	Policy Policy `json:"policy"`
}

// Forget closes a child's socket in the broker.
type Forget struct {
	Child string `json:"child"`
}

// Pending is one request waiting for nest approve or nest deny.
type Pending struct {
	ID      uint64    `json:"id"`
	Child   string    `json:"child"`
	Pid     int32     `json:"pid"`
	UID     uint32    `json:"uid"`
	As      string    `json:"as"`
	Command []string  `json:"command"`
	Since   time.Time `json:"since"`
}

// Decide answers a pending request.
type Decide struct {
	ID      uint64 `json:"id"`
	Approve bool   `json:"approve"`
}
