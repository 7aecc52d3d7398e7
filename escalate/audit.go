package escalate

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// Audit records every escalation attempt, one line each, in the parent's
// audit log (mode 0600, appended) and on its console. What came from the
// child (the command) is quoted, so that no child can forge a line.
type Audit struct {
	mu      sync.Mutex
	file    *os.File  // nil: console only
	console io.Writer // nil: file only
	now     func() time.Time
	shown   map[string]*shown // console lines of each child this minute
}

// shown counts a child's console lines, for the limit: the file has
// every attempt, the console at most consoleLines a minute of a child.
type shown struct {
	n    int
	from time.Time
}

const consoleLines = 20

// OpenAudit opens (creating) the audit log at path, "" for none, and
// writes every record to console too, if it is not nil.
func OpenAudit(path string, console io.Writer) (*Audit, error) {
	a := &Audit{console: console, now: time.Now}
	if path == "" {
		return a, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	a.file = f
	return a, nil
}

// Close closes the log file.
func (a *Audit) Close() error {
	if a.file == nil {
		return nil
	}
	return a.file.Close()
}

// Attempt is one audit record.
type Attempt struct {
	Child   string
	Pid     int32  // the client, in the parent's pid namespace
	UID     uint32 // the client's uid as the parent sees it
	As      string
	Method  string
	Key     string   // the fingerprint of the key that signed, method key
	Command []string // nil: a login shell
	PTY     bool
	Result  string // "allowed", "refused", "failed", "exited"
	Reason  string
}

// Record writes one attempt.
func (a *Audit) Record(e Attempt) {
	var b strings.Builder
	field := func(k, v string) {
		if v == "" {
			return
		}
		b.WriteByte(' ')
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(auditValue(v))
	}
	field("child", e.Child)
	field("pid", strconv.Itoa(int(e.Pid)))
	field("uid", strconv.FormatUint(uint64(e.UID), 10))
	field("as", e.As)
	field("method", e.Method)
	field("key", e.Key)
	if e.Command == nil {
		field("command", "(login shell)")
	} else {
		field("command", CommandString(e.Command))
	}
	if e.PTY {
		field("pty", "yes")
	}
	field("result", e.Result)
	field("reason", e.Reason)
	line := b.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.file != nil {
		fmt.Fprintf(a.file, "%s%s\n", a.now().UTC().Format(time.RFC3339), line)
	}
	if a.console == nil {
		return
	}
	if a.shown == nil {
		a.shown = make(map[string]*shown)
	}
	sh := a.shown[e.Child]
	now := a.now()
	if sh == nil || now.Sub(sh.from) > time.Minute {
		sh = &shown{from: now}
		a.shown[e.Child] = sh
	}
	sh.n++
	switch {
	case sh.n <= consoleLines:
		fmt.Fprintf(a.console, "nest: escalate:%s\n", line)
	case sh.n == consoleLines+1:
		fmt.Fprintf(a.console, "nest: escalate: child=%s: more attempts this minute are in the audit log only\n", auditValue(e.Child))
	}
}

// auditValue writes a value bare when it is one word of printable
// characters, quoted otherwise.
func auditValue(v string) string {
	for _, r := range v {
		if r == ' ' || r == '"' || r == '\\' || r == '=' || !unicode.IsPrint(r) {
			return strconv.Quote(v)
		}
	}
	return v
}

// CommandString is a command for messages: its words, each quoted when
// it is not a plain word, cut at 256 bytes.
func CommandString(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		plain := a != ""
		for _, r := range a {
			if !(unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("-_./:=+,@%", r)) {
				plain = false
				break
			}
		}
		if plain {
			b.WriteString(a)
		} else {
			b.WriteString(strconv.Quote(a))
		}
		if b.Len() > 256 {
			return b.String()[:256] + "…"
		}
	}
	return b.String()
}
