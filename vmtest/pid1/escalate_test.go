//go:build vmguest

package pid1

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"

	"nest/escalate"
)

// Scenario "escalate" (vmtest/escalate_test.go): daemon containers, one
// per policy, each running escalateHelper, which tries nest escalate from
// inside and prints what happened as "ESC name value" lines; the root's
// tests read them from the containers' logs and check them against the
// root's own view and its audit log.

// Files of the scenario (the keys are made by the host for each image).
const (
	goodKey     = "/etc/nest-test/good"  // in keyed's keys
	otherKey    = "/etc/nest-test/other" // in nobody's
	testPasswd  = "nest-test-password"
	escalateLog = "/var/log/nest/escalate.log"
)

// escalateHelper runs in a container (helper "escalate"); its host name
// says which one.
func escalateHelper() int {
	host, _ := os.Hostname()
	say := func(name string, v ...any) {
		fmt.Printf("ESC %s %s\n", name, strings.TrimSpace(fmt.Sprintln(v...)))
	}
	switch host {
	case "allow":
		out, errOut, code := escalateCmd(nil, "--", "id", "-u")
		say("id", strconv.Quote(out), code, strconv.Quote(errOut))
		out, _, _ = escalateCmd(nil, "--", "readlink", "/proc/self/ns/pid")
		say("pidns", strings.TrimSpace(out))
		_, _, code = escalateCmd(nil, "--", "sh", "-c", "exit 7")
		say("exit7", code)
		ownNS, _ := os.Readlink("/proc/self/ns/pid")
		say("ownns", ownNS)
		interactive(say)
	case "deny":
		out, errOut, code := escalateCmd(nil, "--", "id", "-u")
		say("id", strconv.Quote(out), code, strconv.Quote(strings.TrimSpace(errOut)))
		say("flood", flood())
	case "keyed":
		noHome := []string{"HOME=/nonexistent"}
		out, errOut, code := escalateCmd(noHome, "--key", goodKey, "--", "id", "-u")
		say("file", strconv.Quote(out), code, strconv.Quote(errOut))
		out, errOut, code = escalateCmd(noHome, "--key", otherKey, "--", "id", "-u")
		say("wrong", strconv.Quote(out), code, strconv.Quote(strings.TrimSpace(errOut)))
		sock, err := startAgent(goodKey)
		if err != nil {
			say("agent", "error", err)
			break
		}
		out, errOut, code = escalateCmd(append(noHome, "SSH_AUTH_SOCK="+sock), "--", "id", "-u")
		say("agent", strconv.Quote(out), code, strconv.Quote(errOut))
	case "pw":
		for i, pw := range []string{testPasswd, "wrong", "wrong", "wrong", testPasswd} {
			out, errOut, code := withPassword(pw, "id", "-u")
			say("pw"+strconv.Itoa(i), strconv.Quote(out), code, strconv.Quote(strings.TrimSpace(errOut)))
		}
	case "leaf":
		chain(say)
	case "confirm":
		for _, name := range []string{"approved", "denied"} {
			out, errOut, code := escalateCmd(nil, "--", "id", "-u")
			say(name, strconv.Quote(out), code, strconv.Quote(strings.TrimSpace(errOut)))
		}
	default:
		say("error", "unknown container", host)
	}
	fmt.Println("ESC done")
	for {
		time.Sleep(time.Hour)
	}
}

// chainReport is where the leaf's report lands in the root: written by a
// command it ran there through its parent.
const chainReport = "/run/escalate-chain"

// chain runs in leaf, a daemon container inside the user container mid:
// one escalation reaches mid, two reach the root. The report goes to the
// root the same way, on the stdin of a command two levels up (the fd
// passed on at each level).
func chain(say func(string, ...any)) {
	var report strings.Builder
	line := func(name string, v ...any) {
		say(name, v...)
		fmt.Fprintf(&report, "%s %s\n", name, strings.TrimSpace(fmt.Sprintln(v...)))
	}
	own, _ := os.Readlink("/proc/self/ns/pid")
	line("leaf-ns", own)
	out, errOut, code := escalateCmd(nil, "--", "readlink", "/proc/self/ns/pid")
	line("mid-ns", strings.TrimSpace(out), code, strconv.Quote(strings.TrimSpace(errOut)))
	out, errOut, code = escalateCmd(nil, "--", "nest", "escalate", "--", "readlink", "/proc/self/ns/pid")
	line("root-ns", strings.TrimSpace(out), code, strconv.Quote(strings.TrimSpace(errOut)))
	entries, _ := os.ReadDir("/run/nest")
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	line("run-nest", strings.Join(names, ","))
	cmd := exec.Command("/bin/nest", "escalate", "--", "nest", "escalate", "--", "sh", "-c", "cat > "+chainReport+".new && mv "+chainReport+".new "+chainReport)
	cmd.Env = []string{"PATH=/bin:/sbin"}
	cmd.Stdin = strings.NewReader(report.String())
	b, err := cmd.CombinedOutput()
	say("report", err, strconv.Quote(string(b)))
}

// escalateCmd runs nest escalate ARGS with stdin from /dev/null.
func escalateCmd(env []string, args ...string) (stdout, stderr string, code int) {
	cmd := exec.Command("/bin/nest", append([]string{"escalate"}, args...)...)
	cmd.Env = append([]string{"PATH=/bin:/sbin"}, env...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = cmd.ProcessState.ExitCode()
	if err != nil && code == 0 {
		code = -1
	}
	return o.String(), e.String(), code
}

// terminal is a pty of the container's own devpts that a command runs
// on, as a person's terminal would be.
type terminal struct {
	master *os.File
	mu     sync.Mutex
	screen bytes.Buffer
}

func newTerminal() (*terminal, *os.File, error) {
	master, slave, err := escalate.OpenPTY()
	if err != nil {
		return nil, nil, err
	}
	escalate.SetSize(master, 24, 80)
	t := &terminal{master: master}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := master.Read(buf)
			t.mu.Lock()
			t.screen.Write(buf[:n])
			t.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return t, slave, nil
}

func (t *terminal) typeIn(s string) { t.master.Write([]byte(s)) }

// wait waits until the screen shows want, from offset on.
func (t *terminal) wait(want string, from int) (int, bool) {
	for range 1500 {
		t.mu.Lock()
		s := t.screen.String()
		t.mu.Unlock()
		if i := strings.Index(s[min(from, len(s)):], want); i >= 0 {
			return from + i + len(want), true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return from, false
}

func (t *terminal) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.screen.String()
}

// onTerminal starts nest escalate ARGS with the terminal as its
// controlling terminal and stdin; stdout and stderr too when pipes is
// false.
func onTerminal(slave *os.File, pipes bool, args ...string) (*exec.Cmd, *bytes.Buffer, error) {
	cmd := exec.Command("/bin/nest", append([]string{"escalate"}, args...)...)
	cmd.Env = []string{"PATH=/bin:/sbin", "TERM=xterm"}
	var out bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	if pipes {
		cmd.Stdout, cmd.Stderr = &out, &out
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err := cmd.Start()
	slave.Close()
	return cmd, &out, err
}

// interactive drives a login shell in the parent through a pty: the
// window size, its change, ^C and the exit status.
func interactive(say func(string, ...any)) {
	term, slave, err := newTerminal()
	if err != nil {
		say("pty", "error", err)
		return
	}
	defer term.master.Close()
	cmd, _, err := onTerminal(slave, false)
	if err != nil {
		say("pty", "error", err)
		return
	}
	at := 0
	step := func(name, input, want string) {
		term.typeIn(input)
		var ok bool
		if at, ok = term.wait(want, at); !ok {
			say(name, "missing", strconv.Quote(want), "screen", strconv.Quote(term.String()))
			return
		}
		say(name, "ok")
	}
	step("pty-size", "stty size\r", "24 80")
	step("pty-ns", "readlink /proc/self/ns/pid; tty\r", "/dev/pts/")
	escalate.SetSize(term.master, 40, 100) // SIGWINCH to nest escalate, which passes it on
	time.Sleep(500 * time.Millisecond)
	step("pty-resize", "stty size\r", "40 100")
	// ^C only once the job runs: typed while the shell still edits its
	// line, it would be a byte in the queue, not a signal.
	step("pty-job", "echo job; sleep 1000\r", "job\r\n")
	time.Sleep(500 * time.Millisecond)
	step("pty-interrupt", "\x03", "# ")
	step("pty-ctrl-c", "echo rc=$?\r", "rc=130")
	term.typeIn("exit 3\r")
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
		say("pty-exit", cmd.ProcessState.ExitCode())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		say("pty-exit", "timeout", strconv.Quote(term.String()))
	}
	say("pty-screen", strconv.Quote(term.String()))
}

// withPassword runs nest escalate ARGS on pipes, with a terminal to ask
// the password on, and types pw when it asks.
func withPassword(pw string, args ...string) (string, string, int) {
	term, slave, err := newTerminal()
	if err != nil {
		return "", err.Error(), -1
	}
	defer term.master.Close()
	cmd, out, err := onTerminal(slave, true, append([]string{"--"}, args...)...)
	if err != nil {
		return "", err.Error(), -1
	}
	done := make(chan struct{})
	go func() {
		if _, ok := term.wait("password of container pw", 0); ok {
			term.typeIn(pw + "\r")
		}
		close(done)
	}()
	cmd.Wait()
	<-done
	// The command's output and nest's own errors share the pipe.
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	var stdout, stderr []string
	for _, l := range lines {
		if strings.HasPrefix(l, "nest escalate:") {
			stderr = append(stderr, l)
		} else if l != "" {
			stdout = append(stdout, l)
		}
	}
	return strings.Join(stdout, "\n"), strings.Join(stderr, "\n"), cmd.ProcessState.ExitCode()
}

// startAgent serves an ssh-agent holding the key in file on a socket in
// /tmp, as ssh-agent would.
func startAgent(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err
	}
	key, err := ssh.ParseRawPrivateKey(b)
	if err != nil {
		return "", err
	}
	kr := agent.NewKeyring()
	if err := kr.Add(agent.AddedKey{PrivateKey: key}); err != nil {
		return "", err
	}
	path := "/tmp/agent.sock"
	l, err := net.Listen("unix", path)
	if err != nil {
		return "", err
	}
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
	return path, nil
}

// flood sends the parent 1,000 broken packets, one connection each, then
// a real request: the broker must still answer it with the policy.
func flood() string {
	bad := [][]byte{
		[]byte(`not json`), []byte(`{"type":"request"`), []byte(`{"type":"nope"}`), []byte(`{"type":"request","body":{"argv":[]}}`),
		[]byte(`{"type":"request","body":{"argv":["id"],"as":"root"}}`), []byte(`{"type":"data","body":{"data":"AA=="}}`),
		bytes.Repeat([]byte("["), 70000), {}, []byte("\xff\xfe"),
	}
	for i := range 1000 {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "socket: " + err.Error()
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: escalate.ParentSocket}); err != nil {
			unix.Close(fd)
			return "connect: " + err.Error()
		}
		unix.Sendmsg(fd, bad[i%len(bad)], nil, nil, unix.MSG_NOSIGNAL)
		unix.Close(fd)
	}
	// The broker may still be taking the flood's connections (at most 8
	// of one child at once): "too many" is the cap working; then it must
	// answer by the policy.
	var errOut string
	var code int
	for range 300 {
		_, errOut, code = escalateCmd(nil, "--", "id", "-u")
		if !strings.Contains(errOut, "too many escalations") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code != 1 || !strings.Contains(errOut, "is denied") {
		return fmt.Sprintf("after the flood: %d %q", code, errOut)
	}
	return "ok"
}

// escLines reads the ESC lines of a container's log once it is done.
func escLines(t *testing.T, container string) map[string]string {
	t.Helper()
	var out string
	until(t, 3*time.Minute, container+"'s report", func() bool {
		out, _ = nest(t, "logs", container)
		return strings.Contains(out, "ESC done")
	})
	lines := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(l, "ESC "); ok {
			name, value, _ := strings.Cut(rest, " ")
			lines[name] = value
		}
	}
	return lines
}

func want(t *testing.T, container string, lines map[string]string, name, value string) {
	t.Helper()
	if got := lines[name]; got != value {
		t.Errorf("%s: %s = %s, want %s", container, name, got, value)
	}
}

func wantPrefix(t *testing.T, container string, lines map[string]string, name, prefix string) {
	t.Helper()
	if got := lines[name]; !strings.HasPrefix(got, prefix) {
		t.Errorf("%s: %s = %s, want %s…", container, name, got, prefix)
	}
}

// auditHas fails unless one line of the audit log has all of parts.
func auditHas(t *testing.T, parts ...string) {
	t.Helper()
	b, _ := os.ReadFile(escalateLog)
	for _, line := range strings.Split(string(b), "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return
		}
	}
	t.Errorf("no line of %s has %q:\n%s", escalateLog, parts, b)
}

func TestEscalateAllow(t *testing.T) {
	l := escLines(t, "allow")
	ownNS, _ := os.Readlink("/proc/self/ns/pid")
	want(t, "allow", l, "id", `"0\n" 0 ""`)
	want(t, "allow", l, "pidns", ownNS)
	if l["ownns"] == ownNS {
		t.Errorf("the container shares the root's pid namespace: the test proves nothing")
	}
	want(t, "allow", l, "exit7", "7")
	for _, step := range []string{"pty-size", "pty-ns", "pty-resize", "pty-job", "pty-interrupt", "pty-ctrl-c"} {
		want(t, "allow", l, step, "ok")
	}
	want(t, "allow", l, "pty-exit", "3")
	if !strings.Contains(l["pty-screen"], ownNS) {
		t.Errorf("the interactive shell is not in the root's pid namespace %s: %s", ownNS, l["pty-screen"])
	}
	auditHas(t, "child=allow", `command="id -u"`, "result=allowed", "method=allow")
	auditHas(t, "child=allow", `command="(login shell)"`, "pty=yes", `result=exited reason="exit code 3"`)
	// The child's root, as the parent sees it: its mapped uid.
	b, _ := os.ReadFile(escalateLog)
	for _, line := range strings.Split(string(b), "\n") {
		if i := strings.Index(line, " uid="); strings.Contains(line, "child=allow") && i >= 0 {
			uid, _ := strconv.Atoi(strings.Fields(line[i+5:])[0])
			if uid < 100000 {
				t.Errorf("the audit gives the child's root as uid %d, want its mapped uid: %s", uid, line)
			}
		}
	}
}

func TestEscalateDeny(t *testing.T) {
	l := escLines(t, "deny")
	want(t, "deny", l, "id", `"" 1 "nest escalate: escalation from container \"deny\" is denied (escalate = \"deny\" in the parent's config)"`)
	want(t, "deny", l, "flood", "ok")
	auditHas(t, "child=deny", "method=deny", `command="id -u"`, "result=refused", `is denied`)
}

func TestEscalateKey(t *testing.T) {
	l := escLines(t, "keyed")
	want(t, "keyed", l, "file", `"0\n" 0 ""`)
	wantPrefix(t, "keyed", l, "wrong", `"" 1 "nest escalate: the parent wants a signature by one of SHA256:`)
	want(t, "keyed", l, "agent", `"0\n" 0 ""`)
	auditHas(t, "child=keyed", "method=key", "key=SHA256:", "result=allowed")
}

func TestEscalatePassword(t *testing.T) {
	l := escLines(t, "pw")
	want(t, "pw", l, "pw0", `"0" 0 ""`)
	for _, n := range []string{"pw1", "pw2", "pw3"} {
		want(t, "pw", l, n, `"" 1 "nest escalate: wrong password"`)
	}
	wantPrefix(t, "pw", l, "pw4", `"" 1 "nest escalate: locked out after 3 failed attempts; try again in `)
	auditHas(t, "child=pw", "method=password", "result=failed", `reason="wrong password"`)
	auditHas(t, "child=pw", "method=password", "result=refused", "locked out")
}

// TestEscalateConfirm answers the requests of container confirm from the
// root: nest approve, then nest deny.
func TestEscalateConfirm(t *testing.T) {
	for _, verb := range []string{"approve", "deny"} {
		var id string
		until(t, 2*time.Minute, "a pending request of confirm", func() bool {
			out, _ := nest(t, "approve")
			for _, line := range strings.Split(out, "\n") {
				if f := strings.Fields(line); len(f) > 2 && f[1] == "confirm" {
					id = f[0]
					return true
				}
			}
			return false
		})
		if out, code := nest(t, verb, id); code != 0 {
			t.Fatalf("nest %s %s = %d: %s", verb, id, code, out)
		}
		if verb == "approve" {
			// Let the next request come.
			until(t, time.Minute, "the approved request's end", func() bool {
				out, _ := nest(t, "logs", "confirm")
				return strings.Contains(out, "ESC approved")
			})
		}
	}
	l := escLines(t, "confirm")
	wantPrefix(t, "confirm", l, "approved", `"0\n" 0 "nest escalate: waiting for approval: someone in the parent runs nest approve `)
	wantPrefix(t, "confirm", l, "denied", `"" 1 "nest escalate: waiting for approval`)
	if !strings.Contains(l["denied"], "denied in the parent") {
		t.Errorf("confirm: denied = %s, want it to say so", l["denied"])
	}
	auditHas(t, "child=confirm", "method=confirm", "result=exited")
	auditHas(t, "child=confirm", "method=confirm", "result=refused", "denied in the parent")
}

// TestEscalateChain: from leaf (root → mid → leaf) one nest escalate
// reaches mid, two reach the root; the root hears only of mid.
func TestEscalateChain(t *testing.T) {
	var b []byte
	until(t, 3*time.Minute, "the leaf's report in the root", func() bool {
		var err error
		b, err = os.ReadFile(chainReport)
		return err == nil
	})
	l := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		name, value, _ := strings.Cut(line, " ")
		l[name] = value
	}
	ownNS, _ := os.Readlink("/proc/self/ns/pid")
	want(t, "leaf", l, "root-ns", ownNS+` 0 ""`)
	midNS, _, _ := strings.Cut(l["mid-ns"], " ")
	if !strings.HasSuffix(l["mid-ns"], ` 0 ""`) || midNS == ownNS || midNS == l["leaf-ns"] || !strings.HasPrefix(midNS, "pid:[") {
		t.Errorf("one level up from leaf: %q; want mid's own pid namespace (leaf %s, root %s)", l["mid-ns"], l["leaf-ns"], ownNS)
	}
	// The root's audit: mid asked (twice, for leaf); leaf never did.
	auditHas(t, "child=mid", `command="readlink /proc/self/ns/pid"`, "result=exited")
	log, _ := os.ReadFile(escalateLog)
	if strings.Contains(string(log), "child=leaf") {
		t.Errorf("the root heard from leaf directly:\n%s", log)
	}
	// leaf's /run/nest holds its parent's directory, nothing of the root.
	want(t, "leaf", l, "run-nest", "nest.sock,parent")
}

// TestEscalateLogin: the console's login prompt, run here on a pty of the
// test's: a wrong password is refused, mid's right one lands in a shell
// inside mid.
func TestEscalateLogin(t *testing.T) {
	term, slave, err := newTerminal()
	if err != nil {
		t.Fatal(err)
	}
	defer term.master.Close()
	cmd := exec.Command("/bin/nest", "login", "-c", "/etc/nest/nest.toml")
	cmd.Env = []string{"PATH=/bin:/sbin", "TERM=xterm"}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	slave.Close()
	defer cmd.Process.Kill()
	step := func(input, want string, at int) int {
		t.Helper()
		term.typeIn(input)
		next, ok := term.wait(want, at)
		if !ok {
			t.Fatalf("typed %q: no %q on the screen: %q", input, want, term.String())
		}
		return next
	}
	at, ok := term.wait("nestvm login: ", 0)
	if !ok {
		t.Fatalf("no prompt: %q", term.String())
	}
	at = step("mid\n", "Password: ", at)
	at = step("wrong\n", "Login incorrect", at)
	at = step("mid\n", "Password: ", at)
	term.typeIn(testPasswd + "\n")
	time.Sleep(2 * time.Second) // nest shell takes the terminal
	ownNS, _ := os.Readlink("/proc/self/ns/pid")
	at = step("hostname; id -u; readlink /proc/self/ns/pid\r", "mid\r\n0\r\npid:[", at)
	if strings.Contains(term.String()[at:], ownNS) {
		t.Errorf("the login's shell runs in the root's pid namespace: %q", term.String())
	}
	term.typeIn("exit 4\r")
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
		if code := cmd.ProcessState.ExitCode(); code != 4 {
			t.Errorf("the login ended %d, want 4 (the shell's)", code)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("the login's shell did not end: %q", term.String())
	}
}
