package escalate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Limits of one packet.
const (
	MaxMessage = 64 << 10 // bytes of JSON in one packet
	MaxFDs     = 3        // fds in one packet: stdin, stdout and stderr of an escalation
)

// Message is one packet. Type says which of the other fields are used. A
// request that wants an answer carries an ID other than 0; the answer
// carries the same ID.
type Message struct {
	Type  string          `json:"type"`
	ID    uint64          `json:"id,omitempty"`    // request id; a reply carries its request's id
	Error string          `json:"error,omitempty"` // in replies: what went wrong
	Body  json.RawMessage `json:"body,omitempty"`  // type-specific payload, read with DecodeBody
}

// Types is the closed set of message types: Send refuses any other and a
// received one is a protocol violation. One line per type; the comment says
// who sends it and what its Body holds.
var Types = map[string]bool{
	// The link between a child init and its parent.
	"spec":     true, // parent → child init: the container spec, in Body
	"layer":    true, // parent → child init, after a spec: one layer of its root, as the one fd
	"ready":    true, // child → parent: the child's supervisor is up
	"state":    true, // child → parent: a unit changed, in Body
	"subtree":  true, // request and reply: the child's units, for nest ls --tree
	"act":      true, // parent → child: start, stop, restart or status of a unit path, in Body; the reply: its status
	"logs":     true, // parent → child: a chunk of a unit path's log from a cursor, in Body; the reply: the chunk
	"shutdown": true, // parent → child: stop your subtree; Body says poweroff or reboot
	"shell":    true, // parent → child: a shell in a container, with the session socket attached; the reply: none
	"net":      true, // parent → child init of a veth container, once after the spec: its address, resolvers, hosts, subnet
	"hosts":    true, // parent → child init: the hosts of its bridge changed, in Body
	"subnet":   true, // child init → parent, forwarded up to the root: a /24 for a container below the child, or its release, in Body; the reply: the /24
	"error":    true, // reply: the request failed; Error says why

	// The session socket of `nest shell`, from the container's init to the CLI.
	"shell-pty":  true, // the shell's pty master, attached
	"shell-exit": true, // how the shell's command ended, in Body

	// Escalation, on a child's socket (proto.go).
	"hello":   true, // broker → client, first: Hello
	"request": true, // client → broker: Request, with stdin, stdout and stderr unless a pty
	"auth":    true, // client → broker: Auth
	"wait":    true, // broker → client: Wait (confirm)
	"started": true, // broker → client: the command runs
	"data":    true, // both ways in a pty session: Data
	"resize":  true, // client → broker: Size
	"signal":  true, // client → broker: Signal
	"eof":     true, // client → broker: stdin ended
	"exit":    true, // broker → client, last: Exit

	// Between an init and its broker (a socketpair).
	"listen":  true, // init → broker: Listen, with the listening socket
	"forget":  true, // init → broker: Forget
	"pending": true, // init → broker, and the reply: []Pending
	"decide":  true, // init → broker: Decide
}

// fields are the JSON names of Message's fields, matched exactly (encoding/json
// alone would also take "TYPE" or "Type").
var fields = map[string]bool{"type": true, "id": true, "error": true, "body": true}

// Decode reads one packet strictly: it must be a single JSON object of at
// most MaxMessage bytes, valid UTF-8, with no fields but Message's (spelt
// exactly, each at most once), no duplicate keys at any depth, nothing after
// it but white space, and a Type from Types.
func Decode(b []byte) (*Message, error) {
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("message of %d bytes is over the limit of %d", len(b), MaxMessage)
	}
	if !utf8.Valid(b) {
		return nil, errors.New("message is not valid UTF-8")
	}
	m := new(Message)
	if err := strictUnmarshal(b, m); err != nil {
		return nil, err
	}
	if err := checkKeys(b, fields); err != nil {
		return nil, err
	}
	switch {
	case m.Type == "":
		return nil, errors.New("message has no type")
	case !Types[m.Type]:
		return nil, fmt.Errorf("unknown message type %s", quote(m.Type))
	}
	return m, nil
}

// DecodeBody reads m's Body into v as strictly as Decode reads a packet:
// fields v does not have, duplicate keys and trailing data are errors, and
// so is a missing or null Body. On error v may be partly set.
// (encoding/json still matches v's field names without regard to case.)
func DecodeBody(m *Message, v any) error {
	if len(m.Body) == 0 || string(bytes.TrimSpace(m.Body)) == "null" {
		return fmt.Errorf("%s message has no body", quote(m.Type))
	}
	if err := strictUnmarshal(m.Body, v); err != nil {
		return fmt.Errorf("%s body: %w", quote(m.Type), err)
	}
	if err := checkKeys(m.Body, nil); err != nil {
		return fmt.Errorf("%s body: %w", quote(m.Type), err)
	}
	return nil
}

// strictUnmarshal decodes the one JSON value in b into v, refusing unknown
// fields and anything after the value.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON value")
	}
	return nil
}

// checkKeys refuses a key that appears twice in one object of b, which
// encoding/json has already found to be one valid JSON value. With top set,
// b must be an object whose keys are all in top. It is a linear scan with
// its own stack: json.Decoder.Token would do the same 17 times slower
// (18 ms for a 64 KiB packet, measured), a cheap way for a peer to make the
// parent burn CPU.
func checkKeys(b []byte, top map[string]bool) error {
	if top != nil {
		if t := bytes.TrimLeft(b, " \t\r\n"); len(t) == 0 || t[0] != '{' {
			return errors.New("message is not a JSON object")
		}
	}
	malformed := errors.New("malformed JSON") // not reached after encoding/json's check
	var stack []map[string]bool               // keys of each open object; nil for an array
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '{':
			stack = append(stack, map[string]bool{})
		case '[':
			stack = append(stack, nil)
		case '}', ']':
			if len(stack) == 0 {
				return malformed
			}
			stack = stack[:len(stack)-1]
		case '"':
			start := i
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++ // the escaped character, which may be a quote
				}
			}
			if i >= len(b) {
				return malformed
			}
			// In valid JSON a string is a key exactly when a colon follows it.
			next := i + 1
			for next < len(b) && isSpace(b[next]) {
				next++
			}
			if next == len(b) || b[next] != ':' {
				continue
			}
			if len(stack) == 0 || stack[len(stack)-1] == nil {
				return malformed
			}
			key := string(b[start+1 : i])
			if bytes.IndexByte(b[start:i], '\\') >= 0 {
				key = ""
				if err := json.Unmarshal(b[start:i+1], &key); err != nil {
					return err
				}
			}
			if top != nil && len(stack) == 1 && !top[key] {
				return fmt.Errorf("unknown field %s", quote(key))
			}
			keys := stack[len(stack)-1]
			if keys[key] {
				return fmt.Errorf("key %s appears twice", quote(key))
			}
			keys[key] = true
		}
	}
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// quote quotes a string that came from the peer for an error message,
// cut short so that a hostile peer cannot fill the log.
func quote(s string) string {
	const limit = 64
	if len(s) > limit {
		return fmt.Sprintf("%q…", s[:limit])
	}
	return fmt.Sprintf("%q", s)
}
