package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Escalation: how a child container may run commands in the init that
// starts it (`nest escalate`). The keys live in the parent's table of the
// child and never reach the child (Container.ForChild).

// Escalate.Method values.
const (
	EscalateDeny     = "deny" // the default
	EscalateAllow    = "allow"
	EscalateKey      = "key"
	EscalatePassword = "password"
	EscalateConfirm  = "confirm"
)

var escalateMethods = []string{EscalateDeny, EscalateAllow, EscalateKey, EscalatePassword, EscalateConfirm}

// AnyArgs ends a command rule that allows any further arguments.
const AnyArgs = "..."

// escalateKeys are the container keys of this file.
var escalateKeys = []string{"escalate", "keys", "keys_file", "as", "commands", "password_hash"}

// Escalate is a child's escalation policy.
type Escalate struct {
	Method string // one of the Escalate* methods; "" reads as deny
	// Keys are authorized_keys lines (method key); KeysFile is a file of
	// such lines in the parent, read at each request.
	Keys     []string
	KeysFile string
	// As is the parent-side user commands run as ("" is root).
	As string
	// Commands, if any, are the only commands that may run: each an argv,
	// its last word AnyArgs for any further arguments.
	Commands [][]string
}

// ForChild is the container as its own init receives it: without its
// escalation policy and password hash, which are its parent's business
// (a child could try the hash offline). Its children keep theirs: the
// child is their parent.
func (c Container) ForChild() Container {
	c.Escalate, c.PasswordHash = Escalate{}, ""
	return c
}

// escalateKey decodes one of escalateKeys of the container c at p.
func (d *decoder) escalateKey(ctx string, p path, k string, v any, c *Container) {
	switch k {
	case "escalate":
		c.Escalate.Method, _ = d.str(ctx, p, k, v)
	case "keys":
		c.Escalate.Keys, _ = d.strs(ctx, p, k, v)
	case "keys_file":
		c.Escalate.KeysFile, _ = d.str(ctx, p, k, v)
	case "as":
		c.Escalate.As, _ = d.str(ctx, p, k, v)
	case "password_hash":
		c.PasswordHash, _ = d.str(ctx, p, k, v)
	case "commands":
		a, ok := v.([]any)
		if !ok {
			d.val([]path{p}, `%scommands = %s: want an array of commands, like [["nest", "restart", "web"]]`, ctx, render(v))
			return
		}
		c.Escalate.Commands = [][]string{}
		for i, e := range a {
			argv, ok := d.strs(ctx, p.idx(i), fmt.Sprintf("commands[%d]", i), e)
			if !ok {
				return
			}
			c.Escalate.Commands = append(c.Escalate.Commands, argv)
		}
	}
}

// validateEscalate checks c's escalation keys.
func (c *Container) validateEscalate(v *problems, ctx string) {
	e := &c.Escalate
	p := c.at
	method := e.Method
	switch {
	case method == "":
		method = EscalateDeny
	case !slices.Contains(escalateMethods, method):
		v.val([]path{p.key("escalate"), p}, "%sescalate = %s: want one of %s", ctx, strconv.Quote(method), quoteList(escalateMethods))
		return
	}
	for i, line := range e.Keys {
		kp := []path{p.key("keys").idx(i), p.key("keys"), p}
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "#") {
			v.val(kp, "%skeys[%d]: want an SSH public key, like \"ssh-ed25519 AAAA… you@laptop\"", ctx, i)
			continue
		}
		_, _, options, rest, err := ssh.ParseAuthorizedKey([]byte(t))
		switch {
		case err != nil:
			v.val(kp, "%skeys[%d] = %s: not an SSH public key (%v); copy a line of ~/.ssh/id_ed25519.pub", ctx, i, render(line), err)
		case len(options) > 0:
			v.val(kp, "%skeys[%d]: options before the key are not supported; give the key alone", ctx, i)
		case len(strings.TrimSpace(string(rest))) > 0:
			v.val(kp, "%skeys[%d]: one key per entry", ctx, i)
		}
	}
	if e.KeysFile != "" {
		if why := pathProblem(e.KeysFile); why != "" {
			v.val([]path{p.key("keys_file"), p}, "%skeys_file = %s: %s (a file of the parent)", ctx, strconv.Quote(e.KeysFile), why)
		}
	}
	if (len(e.Keys) > 0 || e.KeysFile != "") && method != EscalateKey {
		at := p.key("keys")
		if len(e.Keys) == 0 {
			at = p.key("keys_file")
		}
		v.key([]path{at, p}, `%skeys are only for escalate = "key" (escalate is %s); set escalate = "key" or drop them`, ctx, strconv.Quote(method))
	}
	if method == EscalateKey && len(e.Keys) == 0 && e.KeysFile == "" {
		v.val([]path{p.key("escalate"), p}, `%sescalate = "key" needs keys = ["ssh-ed25519 …"] or keys_file`, ctx)
	}
	if e.As != "" && !validUserName(e.As) {
		v.val([]path{p.key("as"), p}, "%sas = %s: want a user name of the parent, like \"root\"", ctx, strconv.Quote(e.As))
	}
	if c.PasswordHash != "" {
		if why := hashProblem(c.PasswordHash); why != "" {
			v.val([]path{p.key("password_hash"), p}, "%spassword_hash: %s; make one with nest passwd", ctx, why)
		}
	}
	if method == EscalatePassword && c.PasswordHash == "" {
		v.val([]path{p.key("escalate"), p}, `%sescalate = "password" needs password_hash (make one with nest passwd)`, ctx)
	}
	if e.Commands != nil && len(e.Commands) == 0 {
		v.val([]path{p.key("commands"), p}, "%scommands = []: no command could run; list the commands allowed, or drop commands to allow any", ctx)
	}
	if e.Commands != nil && method == EscalateDeny {
		v.key([]path{p.key("commands"), p}, `%scommands: escalate is "deny", so nothing runs; set another escalate method or drop commands`, ctx)
	}
	for i, argv := range e.Commands {
		cp := []path{p.key("commands").idx(i), p.key("commands"), p}
		switch {
		case len(argv) == 0 || argv[0] == "" || argv[0] == AnyArgs:
			v.val(cp, `%scommands[%d]: want a command and its arguments, like ["nest", "restart", "web"]`, ctx, i)
		case strings.Contains(argv[0], "/") && !strings.HasPrefix(argv[0], "/"):
			v.val(cp, "%scommands[%d]: %s: want a command name or an absolute path", ctx, i, strconv.Quote(argv[0]))
		case slices.ContainsFunc(argv, hasNUL):
			v.val(cp, "%scommands[%d]: a word holds a NUL byte", ctx, i)
		default:
			if j := slices.Index(argv, AnyArgs); j >= 0 && j != len(argv)-1 {
				v.val(cp, `%scommands[%d]: "..." stands for any further arguments and must come last`, ctx, i)
			}
		}
	}
}

// hashProblem checks the form of a password hash (escalate.VerifyPassword
// checks the rest when a password comes).
func hashProblem(h string) string {
	switch {
	case h[0] == '!' || h[0] == '*':
		return "" // locked, as in a shadow file
	case strings.ContainsAny(h, " \t\n\x00"):
		return "holds white space"
	}
	for _, prefix := range []string{"$argon2id$v=19$", "$y$", "$6$", "$5$", "$2a$", "$2b$", "$2y$"} {
		if strings.HasPrefix(h, prefix) && len(h) > len(prefix)+8 {
			return ""
		}
	}
	return "want an argon2id hash ($argon2id$v=19$…) or a crypt hash of a shadow file ($y$, $6$, $5$ or $2b$)"
}

// validUserName: a user name as useradd takes it.
func validUserName(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || (c == '$' && i == len(s)-1)) {
			return false
		}
	}
	return true
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = strconv.Quote(s)
	}
	return strings.Join(q, ", ")
}
