package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// terminal is a nest shell run on a pseudo-terminal the test drives.
type terminal struct {
	master *os.File
	run    *nestRun
	out    *output
	read   chan struct{} // closed when the terminal hung up and all is read
}

// shellOnPTY starts `nest --socket f.sock shell ARGS` as the session leader
// of a new pty of rows×cols, the way a person's terminal runs it.
func shellOnPTY(t *testing.T, ctx context.Context, f *servicesFixture, rows, cols uint16, args ...string) *terminal {
	t.Helper()
	cmd := exec.CommandContext(ctx, nestBin, append([]string{"--socket", f.sock, "shell"}, args...)...)
	cmd.Env = append(os.Environ(), "TERM=xterm-test")
	return onPTY(t, rows, cols, cmd)
}

// onPTY starts cmd as the session leader of a new pty of rows×cols.
func onPTY(t *testing.T, rows, cols uint16, cmd *exec.Cmd) *terminal {
	t.Helper()
	master, slave, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	t.Cleanup(func() { master.Close() })
	if err := unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
		t.Fatal(err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	cmd.WaitDelay = 3 * time.Second
	r, err := launch(t, upModes[0], cmd)
	slave.Close()
	if err != nil {
		t.Fatal(err)
	}
	term := &terminal{master: master, run: r, out: newOutput(), read: make(chan struct{})}
	go func() {
		io.Copy(term.out, master)
		close(term.read)
	}()
	return term
}

// wait waits for nest shell to exit and for its output to be read, and
// returns its status.
func (term *terminal) wait(t *testing.T) int {
	t.Helper()
	code := term.run.wait()
	select {
	case <-term.read:
	case <-time.After(5 * time.Second):
		t.Errorf("the terminal is still open 5 s after nest shell exited")
	}
	return code
}

// waitRaw waits until nest shell has put the terminal in raw mode: from
// then on a ^C is a byte for the container, not a SIGINT for the CLI.
func (term *terminal) waitRaw(t *testing.T, ctx context.Context) {
	t.Helper()
	for {
		tio, err := unix.IoctlGetTermios(int(term.master.Fd()), unix.TCGETS)
		if err == nil && tio.Lflag&(unix.ICANON|unix.ISIG) == 0 {
			return
		}
		if term.run.exited() {
			t.Fatalf("nest shell exited before raw mode: %q\n%s", term.out, term.run.describe())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the terminal never went raw: %q", term.out)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// typeUntil writes line to the terminal until want shows in the output
// after what was there before (an answer may need a signal to land first).
func (term *terminal) typeUntil(t *testing.T, ctx context.Context, line, want string) {
	t.Helper()
	before := len(term.out.String())
	for {
		if _, err := term.master.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		ok := term.out.waitUntil(wctx, func(s string) bool { return strings.Contains(s[before:], want) })
		cancel()
		if ok {
			return
		}
		if ctx.Err() != nil || term.run.exited() {
			t.Fatalf("typed %q: no %q in the output %q\n%s", line, want, term.out.String()[before:], term.run.describe())
		}
	}
}

// TestShell: nest shell runs a login shell or a command on a fresh
// terminal inside a container: its output and exit status come back, the
// terminal has the caller's size and follows a resize (SIGWINCH), Ctrl-C
// reaches the command, piped input ends with the end of file, and what
// cannot be had is an error.
func TestShell(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f := newServicesFixture(t)
	svc, d, u, a := f.name("svc"), "d-"+f.suffix, "u-"+f.suffix, "a-"+f.suffix
	f.write(t, service{name: svc, script: "exec sleep 1000"})
	conf, _ := os.ReadFile(f.conf)
	conf = append(conf, fmt.Sprintf("\n[container.%s]\nkind = \"user\"\n\n[container.%s.container.dev]\nkind = \"user\"\n", a, a)...)
	if err := os.WriteFile(f.conf, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := upInNamespace(t, ctx, f)
	f.waitUnits(t, ctx, r, svc+" and "+a+" running", running(svc, a))
	for _, args := range [][]string{
		{"create", d, "--kind", "daemon", "--", "/bin/sleep", "1000"},
		{"create", u, "--kind", "user"},
	} {
		if out, code := f.cli(ctx, args...); code != 0 {
			t.Fatalf("nest %s = %d: %s\n%s", strings.Join(args, " "), code, out, r.describe())
		}
	}

	t.Run("status", func(t *testing.T) {
		term := shellOnPTY(t, ctx, f, 30, 100, d, "--", "/bin/sh", "-c", "stty size; echo TERM=$TERM; hostname; exit 7")
		if code := term.wait(t); code != 7 {
			t.Errorf("nest shell %s -- sh -c '…; exit 7' = %d, want 7\n%q\n%s", d, code, term.out, term.run.describe())
		}
		for _, want := range []string{"30 100\r\n", "TERM=xterm-test\r\n", d + "\r\n"} {
			if !strings.Contains(term.out.String(), want) {
				t.Errorf("nest shell %s: output %q, want %q in it", d, term.out, want)
			}
		}
	})

	t.Run("interactive", func(t *testing.T) {
		term := shellOnPTY(t, ctx, f, 24, 80, u)
		term.waitRaw(t, ctx)
		term.typeUntil(t, ctx, "echo ready-$((40+2))\r", "ready-42")
		term.typeUntil(t, ctx, "stty size\r", "24 80\r\n")
		if err := unix.IoctlSetWinsize(int(term.master.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 120}); err != nil {
			t.Fatal(err)
		}
		term.typeUntil(t, ctx, "stty size\r", "40 120\r\n")
		term.typeUntil(t, ctx, "whoami; hostname\r", u+"\r\n")
		if _, err := term.master.Write([]byte("exit 3\r")); err != nil {
			t.Fatal(err)
		}
		if code := term.wait(t); code != 3 {
			t.Errorf("nest shell %s, then exit 3 = %d\n%q\n%s", u, code, term.out, term.run.describe())
		}
		// The caller's terminal is back as it was.
		if tio, err := unix.IoctlGetTermios(int(term.master.Fd()), unix.TCGETS); err == nil && tio.Lflag&unix.ICANON == 0 {
			t.Error("the terminal is still raw after nest shell ended")
		}
	})

	t.Run("ctrl-c", func(t *testing.T) {
		term := shellOnPTY(t, ctx, f, 24, 80, d, "--", "sleep", "100")
		term.waitRaw(t, ctx)
		if _, err := term.master.Write([]byte{3}); err != nil {
			t.Fatal(err)
		}
		if code := term.wait(t); code != 130 {
			t.Errorf("nest shell %s -- sleep 100, then ^C = %d, want 130\n%q\n%s", d, code, term.out, term.run.describe())
		}
	})

	t.Run("grandchild", func(t *testing.T) {
		// dev is reached through a's link; its init may still be starting.
		path := a + "/dev"
		var term *terminal
		for {
			term = shellOnPTY(t, ctx, f, 24, 80, path, "--", "/bin/sh", "-c", "hostname; whoami; exit 4")
			if code := term.wait(t); code != 1 || !strings.Contains(term.out.String(), "not running") || ctx.Err() != nil {
				if code != 4 {
					t.Fatalf("nest shell %s -- sh -c '…; exit 4' = %d, want 4\n%q", path, code, term.out)
				}
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if out := term.out.String(); !strings.Contains(out, "dev\r\ndev\r\n") {
			t.Errorf("nest shell %s: %q, want hostname and user dev", path, out)
		}
	})

	t.Run("piped", func(t *testing.T) {
		cmd := exec.CommandContext(ctx, nestBin, "--socket", f.sock, "shell", d)
		cmd.Stdin = strings.NewReader("echo piped-$((2+3))")
		cmd.WaitDelay = 3 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "piped-5") {
			t.Errorf("echo … | nest shell %s = %v, %q; want piped-5 and status 0", d, err, out)
		}
	})

	t.Run("errors", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			code int
			want string
		}{
			{[]string{svc}, 1, "is a service, not a container"},
			{[]string{"nope"}, 1, `no unit named "nope"`},
			{[]string{d + "/x"}, 1, d + `: no unit named "x"`},
			{[]string{d, "--", "/nonexistent"}, 1, "/nonexistent"},
			{[]string{d, "--", "no-such-command-nest"}, 1, "no-such-command-nest: not found"},
			{[]string{}, 2, "usage: nest shell NAME"},
			{[]string{d, "--"}, 2, "usage: nest shell NAME"},
		} {
			out, code := f.cli(ctx, append([]string{"shell"}, tc.args...)...)
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Errorf("nest shell %s = %d %q, want %d with %q", strings.Join(tc.args, " "), code, out, tc.code, tc.want)
			}
		}
	})

	if err := r.signal(ctx, unix.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code, ok := r.waitExit(10 * time.Second); !ok || code != 0 {
		t.Errorf("nest up after SIGTERM = %d, %v\n%s", code, ok, r.describe())
	}
}
