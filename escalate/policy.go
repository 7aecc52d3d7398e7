package escalate

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// SecurePath is the PATH of every escalated command and the only place a
// command name is looked up: in the parent's file system, never the
// child's (the CVE-2025-32463 class).
const SecurePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Limits of a request.
const (
	maxArgs    = 4096
	maxEnvVars = 32
	maxWindow  = 10000 // rows or columns
)

// AnyArgs, as the last word of a Policy.Commands rule, allows any further
// arguments.
const AnyArgs = "..."

// target is the parent-side user a command runs as, from the parent's
// /etc/passwd (pure Go: no NSS module is ever loaded).
type target struct {
	name     string
	uid, gid uint32
	groups   []uint32
	home     string
	shell    string
}

// lookupTarget finds the user name in the parent's user database. root
// works without one (an initramfs has no /etc/passwd).
func lookupTarget(name string) (target, error) {
	if name == "" {
		name = "root"
	}
	u, err := user.Lookup(name)
	if err != nil {
		if name == "root" {
			return target{name: "root", home: "/root", shell: "/bin/sh"}, nil
		}
		return target{}, fmt.Errorf("user %s of the parent: %w", quote(name), err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return target{}, fmt.Errorf("user %s of the parent: bad uid or gid", quote(name))
	}
	t := target{name: name, uid: uint32(uid), gid: uint32(gid), home: u.HomeDir, shell: loginShell(name)}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				t.groups = append(t.groups, uint32(g))
			}
		}
	}
	if t.home == "" {
		t.home = "/"
	}
	return t, nil
}

// loginShell reads name's shell from the parent's /etc/passwd (os/user
// does not give it); /bin/sh when there is none.
func loginShell(name string) string {
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return "/bin/sh"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == name && filepath.IsAbs(f[6]) {
			return f[6]
		}
	}
	return "/bin/sh"
}

// plan is a checked request: what exactly runs in the parent.
type plan struct {
	path string   // absolute, in the parent
	argv []string // argv[0] as the child gave it, or "-sh" for a login shell
	env  []string
	dir  string
	as   target
	pty  bool
	rows int
	cols int
}

// checkRequest turns a request of the child into a plan under policy p,
// or says why it may not run. Nothing of the child's file system is
// read; the environment is built from scratch.
func checkRequest(q *Request, p *Policy, child string) (*plan, error) {
	if len(q.Argv) > maxArgs {
		return nil, fmt.Errorf("%d arguments, more than %d", len(q.Argv), maxArgs)
	}
	for i, a := range q.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, fmt.Errorf("argument %d holds a NUL byte", i)
		}
	}
	if q.Argv != nil && len(q.Argv) == 0 {
		return nil, errors.New("an empty command") // argv of length 0 (PwnKit)
	}
	if len(q.Argv) > 0 && q.Argv[0] == "" {
		return nil, errors.New("an empty command name")
	}
	if q.PTY {
		if q.Rows < 0 || q.Cols < 0 || q.Rows > maxWindow || q.Cols > maxWindow {
			return nil, fmt.Errorf("window %dx%d out of range", q.Cols, q.Rows)
		}
	} else if q.Rows != 0 || q.Cols != 0 {
		return nil, errors.New("a window size without a pty")
	}
	as, err := lookupTarget(p.As)
	if err != nil {
		return nil, err
	}
	pl := &plan{as: as, pty: q.PTY, rows: q.Rows, cols: q.Cols, dir: "/"}
	if fi, err := os.Stat(as.home); err == nil && fi.IsDir() {
		pl.dir = as.home
	}
	if len(q.Argv) == 0 {
		if len(p.Commands) > 0 {
			return nil, errors.New("only the commands the parent's config lists may run here, no shell")
		}
		pl.path = as.shell
		pl.argv = []string{"-" + filepath.Base(as.shell)}
	} else {
		path, err := lookPath(q.Argv[0])
		if err != nil {
			return nil, err
		}
		if len(p.Commands) > 0 && !allowedCommand(path, q.Argv[1:], p.Commands) {
			return nil, fmt.Errorf("%s is not among the commands the parent's config allows", quote(CommandString(q.Argv)))
		}
		pl.path = path
		pl.argv = slices.Clone(q.Argv)
	}
	pl.env, err = buildEnv(q, as, child)
	if err != nil {
		return nil, err
	}
	return pl, nil
}

// lookPath finds a command in the parent: an absolute path as it is, a
// name in SecurePath. A relative path with a slash means nothing in the
// parent and is refused.
func lookPath(name string) (string, error) {
	if strings.Contains(name, "/") {
		if !filepath.IsAbs(name) {
			return "", fmt.Errorf("command %s: want a name or an absolute path (the parent has no working directory of yours)", quote(name))
		}
		if err := executable(name); err != nil {
			return "", fmt.Errorf("command %s: %w", quote(name), err)
		}
		return filepath.Clean(name), nil
	}
	for _, dir := range filepath.SplitList(SecurePath) {
		p := filepath.Join(dir, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("command %s not found in the parent's PATH (%s)", quote(name), SecurePath)
}

func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return errors.Unwrap(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not an executable file")
	}
	return nil
}

// allowedCommand reports whether the command at path with args matches a
// rule: the rule's command resolves to the same path, and its arguments
// are args exactly, or a prefix of them when the rule ends in AnyArgs.
func allowedCommand(path string, args []string, rules [][]string) bool {
	for _, r := range rules {
		if len(r) == 0 {
			continue
		}
		rp, err := lookPath(r[0])
		if err != nil || rp != path {
			continue
		}
		want := r[1:]
		if n := len(want); n > 0 && want[n-1] == AnyArgs {
			if len(args) >= n-1 && slices.Equal(args[:n-1], want[:n-1]) {
				return true
			}
			continue
		}
		if slices.Equal(args, want) {
			return true
		}
	}
	return false
}

// buildEnv makes a session's environment from scratch, as sudo's
// env_reset does: the target's HOME, USER, LOGNAME and SHELL, the secure
// PATH, and of the child's only TERM, COLORTERM and the locale, each
// checked.
func buildEnv(q *Request, as target, child string) ([]string, error) {
	env := []string{
		"HOME=" + as.home, "USER=" + as.name, "LOGNAME=" + as.name, "SHELL=" + as.shell,
		"PATH=" + SecurePath, "NEST_ESCALATED_FROM=" + child,
	}
	if q.Term != "" {
		if !safeWord(q.Term, 64) {
			return nil, fmt.Errorf("TERM %s: want letters, digits and -._+", quote(q.Term))
		}
		env = append(env, "TERM="+q.Term)
	}
	if len(q.Env) > maxEnvVars {
		return nil, fmt.Errorf("%d environment variables, more than %d", len(q.Env), maxEnvVars)
	}
	for _, k := range slices.Sorted(maps.Keys(q.Env)) {
		v := q.Env[k]
		switch {
		case k == "LANG" || k == "LANGUAGE" || k == "COLORTERM" || (strings.HasPrefix(k, "LC_") && safeWord(k, 32)):
		default:
			return nil, fmt.Errorf("environment variable %s may not cross (only LANG, LANGUAGE, LC_* and COLORTERM do)", quote(k))
		}
		if !safeLocale(v) {
			return nil, fmt.Errorf("%s=%s: want letters, digits and -._+@:", k, quote(v))
		}
		env = append(env, k+"="+v)
	}
	return env, nil
}

// safeWord: 1 to max characters of letters, digits and -._+.
func safeWord(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._+", r)) {
			return false
		}
	}
	return true
}

// safeLocale: a locale value (no slash: a locale path would load files).
func safeLocale(s string) bool {
	if len(s) > 64 || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-._+@:", r)) {
			return false
		}
	}
	return true
}

// authorizedKeys are the keys of a policy: its lines, then its file's,
// read now, in the parent.
func authorizedKeys(p *Policy) ([]ssh.PublicKey, error) {
	keys, err := ParseKeys(p.Keys, "keys")
	if err != nil {
		return nil, err
	}
	if p.KeysFile != "" {
		b, err := readSmall(p.KeysFile, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("keys_file: %w", err)
		}
		more, err := ParseKeys(strings.Split(string(b), "\n"), p.KeysFile)
		if err != nil {
			return nil, err
		}
		keys = append(keys, more...)
	}
	return keys, nil
}

// readSmall reads a file of the parent of at most limit bytes.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() || fi.Size() > limit {
		return nil, fmt.Errorf("%s: want a regular file of at most %d bytes", path, limit)
	}
	b := make([]byte, fi.Size())
	n, err := f.ReadAt(b, 0)
	if err != nil && n != len(b) {
		return nil, err
	}
	return b[:n], nil
}

// CheckPolicy says what is wrong with a policy, if anything (PID 1's
// config validation says it with a position first; the broker checks
// again).
func CheckPolicy(p *Policy) error {
	if !slices.Contains(Methods, p.Method) {
		return fmt.Errorf("method %s: want one of %s", quote(p.Method), strings.Join(Methods, ", "))
	}
	if _, err := ParseKeys(p.Keys, "keys"); err != nil {
		return err
	}
	if p.Method == MethodKey && len(p.Keys) == 0 && p.KeysFile == "" {
		return errors.New("method key needs keys or keys_file")
	}
	if p.Method == MethodPassword {
		if err := CheckHashFormat(p.PasswordHash); err != nil {
			return fmt.Errorf("password_hash: %w", err)
		}
	}
	for i, r := range p.Commands {
		if len(r) == 0 || r[0] == "" || r[0] == AnyArgs {
			return fmt.Errorf("commands[%d]: want a command and its arguments", i)
		}
	}
	return nil
}
