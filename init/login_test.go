package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"nest/escalate"
)

// TestLogin: the console's login prompt (nest login, as console = "login"
// runs it) refuses a wrong password and an unknown user alike, and with
// the right password of a user container becomes a login shell inside
// that container.
func TestLogin(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	f := newServicesFixture(t)
	a := "a-" + f.suffix
	hash, err := escalate.HashPassword("open sesame")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf("console = \"none\"\n\n[container.%s]\nkind = \"user\"\npassword_hash = %q\n", a, hash)
	if err := os.WriteFile(f.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	r, _ := upInNamespace(t, ctx, f)
	f.waitUnits(t, ctx, r, a+" running", running(a))

	cmd := exec.CommandContext(ctx, nestBin, "login", "-c", f.conf)
	cmd.Env = []string{"TERM=xterm", "NEST_SOCKET=" + f.sock}
	term := onPTY(t, 24, 80, cmd)
	expect := func(want string) {
		t.Helper()
		if !term.out.waitFor(ctx, want) {
			t.Fatalf("no %q on the terminal: %q\n%s", want, term.out, r.describe())
		}
	}
	expect(" login: ")
	for _, try := range []struct{ user, password string }{{a, "open says me"}, {"nobody-" + f.suffix, "open sesame"}} {
		before := len(term.out.String())
		term.master.Write([]byte(try.user + "\n"))
		expect("Password: ")
		term.master.Write([]byte(try.password + "\n"))
		if !term.out.waitUntil(ctx, func(s string) bool { return len(s) > before && strings.Contains(s[before:], "Login incorrect") }) {
			t.Fatalf("%s with a wrong password: %q", try.user, term.out)
		}
	}
	term.master.Write([]byte(a + "\n"))
	term.master.Write([]byte("open sesame\n"))
	term.waitRaw(t, ctx) // nest shell's own terminal handling
	term.typeUntil(t, ctx, "hostname; id -u\r", a+"\r\n0")
	term.master.Write([]byte("exit 5\r"))
	if code := term.wait(t); code != 5 {
		t.Errorf("the login's shell ended %d, want 5: %q", code, term.out)
	}
}
