package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/escalate"
)

// TestUpEscalate: nest up on the host with daemon containers that run
// nest escalate (the binary under test, bound at /mnt): with "allow" the
// command runs as root in nest up's namespaces; with "deny" it is
// refused, naming the policy; the child sees its parent's directory read
// only; a broker killed with SIGKILL is restarted and serves again; with
// "confirm" the request waits for nest approve. Every attempt is on the
// console.
func TestUpEscalate(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: containers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	f := newServicesFixture(t)
	bin := filepath.Dir(nestBin)
	os.Chmod(bin, 0o755) // the containers' mapped root enters it
	again := filepath.Join(bin, "again-"+f.suffix)
	allow, deny, confirm := f.name("allow"), f.name("deny"), f.name("confirm")
	script := `/mnt/nest escalate -- sh -c 'id -u; readlink /proc/self/ns/pid'; echo rc=$?
touch /run/nest/parent/x 2>/dev/null && echo WRITABLE
while [ ! -e /mnt/` + filepath.Base(again) + ` ]; do sleep 0.05; done
/mnt/nest escalate -- sh -c 'exit 7'; echo again rc=$?
exec sleep 1000`
	conf := fmt.Sprintf(`console = "none"

[container.%[1]s]
kind     = "daemon"
exec     = ["/bin/sh", "-c", %[4]q]
bind     = [{ source = %[5]q, target = "/mnt" }]
escalate = "allow"
restart  = "no"

[container.%[2]s]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "/mnt/nest escalate -- id -u; echo rc=$?; exec sleep 1000"]
bind    = [{ source = %[5]q, target = "/mnt" }]
restart = "no"

[container.%[3]s]
kind     = "daemon"
exec     = ["/bin/sh", "-c", "/mnt/nest escalate -- id -u; echo rc=$?; exec sleep 1000"]
bind     = [{ source = %[5]q, target = "/mnt" }]
escalate = "confirm"
restart  = "no"
`, allow, deny, confirm, script, bin)
	if err := os.WriteFile(f.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// In a mount namespace of its own, with /var/log/nest in memory: the
	// audit log stays the test's.
	r, _ := upInNamespace(t, ctx, f)
	logs := func(name string) string {
		out, _, _ := nestCLI(ctx, "--socket", f.sock, "logs", name)
		return out
	}
	waitLog := func(name, want string) string {
		t.Helper()
		for {
			out := logs(name)
			if strings.Contains(out, want) {
				return out
			}
			select {
			case <-ctx.Done():
				t.Fatalf("the log of %s never showed %q:\n%s\n%s", name, want, out, r.describe())
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	out := waitLog(allow, "rc=")
	ownPid, _ := os.Readlink("/proc/self/ns/pid")
	if !strings.Contains(out, "\n0\n"+ownPid+"\nrc=0\n") {
		t.Errorf("allow: the command did not run as root in the parent's pid namespace (%s):\n%s", ownPid, out)
	}
	if strings.Contains(out, "WRITABLE") {
		t.Errorf("the child could write in its parent's escalation directory")
	}
	out = waitLog(deny, "rc=")
	if !strings.Contains(out, `nest escalate: escalation from container "`+deny+`" is denied (escalate = "deny" in the parent's config)`) || !strings.Contains(out, "rc=1") {
		t.Errorf("deny: %s", out)
	}

	// confirm: the request waits until nest approve in the parent.
	var id string
	for id == "" {
		list, _, _ := nestCLI(ctx, "--socket", f.sock, "approve")
		for _, line := range strings.Split(list, "\n") {
			if fields := strings.Fields(line); len(fields) > 2 && fields[1] == confirm {
				id = fields[0]
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no pending request of %s:\n%s\n%s", confirm, list, r.describe())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if strings.Contains(logs(confirm), "rc=") {
		t.Fatalf("confirm ran before it was approved")
	}
	if out, errOut, code := nestCLI(ctx, "--socket", f.sock, "approve", id); code != 0 {
		t.Fatalf("nest approve %s = %d: %s%s", id, code, out, errOut)
	}
	if out := waitLog(confirm, "rc="); !strings.Contains(out, "0\nrc=0") {
		t.Errorf("confirm after approval: %s", out)
	}
	if _, errOut, code := nestCLI(ctx, "--socket", f.sock, "deny", id); code != 1 || !strings.Contains(errOut, "no request "+id+" is waiting") {
		t.Errorf("nest deny of a finished request = %d: %s", code, errOut)
	}

	// The broker dies; nest up starts another, which serves the same
	// sockets.
	broker := brokerPid(t, r.cmd.Process.Pid)
	unix.Kill(broker, unix.SIGKILL)
	for brokerPid(t, r.cmd.Process.Pid) == broker || brokerPid(t, r.cmd.Process.Pid) == 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("no new broker:\n%s", r.describe())
		case <-time.After(20 * time.Millisecond):
		}
	}
	os.WriteFile(again, nil, 0o644)
	defer os.Remove(again)
	if out := waitLog(allow, "again rc="); !strings.Contains(out, "again rc=7") {
		t.Errorf("after the broker's restart: %s", out)
	}
	for _, want := range []string{
		"escalation broker: killed by SIGKILL, restarting in",
		"escalate: child=" + allow + " ",
		"escalate: child=" + deny + " ",
		"result=refused",
		"nest approve " + id + ", or nest deny " + id,
	} {
		if !strings.Contains(r.stderr.String(), want) {
			t.Errorf("the console lacks %q:\n%s", want, r.stderr)
		}
	}
}

// brokerPid finds the escalation broker among the children of pid; 0 if
// there is none.
func brokerPid(t *testing.T, pid int) int {
	for _, kid := range procChildren()[pid] {
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(kid) + "/cmdline")
		if args := strings.Split(string(b), "\x00"); len(args) > 1 && args[1] == brokerMode {
			return kid
		}
	}
	return 0
}

// TestPasswdAndUsage: nest passwd prints an argon2id hash of the line on
// stdin that nest takes; nest escalate's usage errors exit 2; without a
// parent it says so and exits 1.
func TestPasswdAndUsage(t *testing.T) {
	t.Parallel()
	cmd := exec.Command(nestBin, "passwd")
	cmd.Stdin = strings.NewReader("correct horse\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nest passwd: %v", err)
	}
	hash := strings.TrimSpace(string(out))
	if ok, err := escalate.VerifyPassword(hash, "correct horse"); err != nil || !ok || !strings.HasPrefix(hash, "$argon2id$") {
		t.Errorf("nest passwd printed %q (%v, %v)", hash, ok, err)
	}
	for _, tc := range []struct {
		args []string
		env  string
		code int
		want string
	}{
		{[]string{"passwd", "x"}, "", 2, "usage: nest passwd"},
		{[]string{"escalate", "--bogus"}, "", 2, "usage: nest escalate"},
		{[]string{"escalate", "--", "id"}, "NEST_ESCALATE_SOCKET=/nonexistent/sock", 1, "no parent to escalate to: /nonexistent/sock does not exist"},
		{[]string{"approve", "x"}, "", 2, `"x" is not a request id`},
		{[]string{"deny"}, "", 2, "want one request id"},
	} {
		cmd := exec.Command(nestBin, tc.args...)
		cmd.Env = append(os.Environ(), tc.env)
		out, _ := cmd.CombinedOutput()
		if code := cmd.ProcessState.ExitCode(); code != tc.code || !strings.Contains(string(out), tc.want) {
			t.Errorf("nest %v = %d %q; want %d and %q", tc.args, code, out, tc.code, tc.want)
		}
	}
}
