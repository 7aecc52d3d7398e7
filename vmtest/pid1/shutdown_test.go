//go:build vmguest

package pid1

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nest/supervise"
	"nest/vmtest/guest"
)

// TestShutdown runs once per boot of the shutdown scenario, on the same
// ext4 disk (mounted at /var by the config): boot 1 sends SIGTERM to PID 1
// (poweroff), boot 2 checks that nothing was lost and sends SIGINT
// (reboot), boot 3 — the same VM after the reboot — checks again and
// passes.
func TestShutdown(t *testing.T) {
	until(t, 10*time.Second, "writer ready", func() bool { return status(t, "writer").State == supervise.StateRunning })
	phase := 0
	if b, err := os.ReadFile(phaseFile); err == nil {
		phase, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	if got := readFile(t, payloadFile); got != payload {
		t.Fatalf("payload = %q, want %q", got, payload)
	}
	// Each earlier boot ended with an orderly stop: writer got SIGTERM
	// and what it fsynced then is here.
	if got := strings.Count(readFileOr(termFile), "SIGTERM"); got != phase {
		t.Errorf("writer saw SIGTERM %d times in %d earlier boots", got, phase)
	}

	switch phase {
	case 0:
		advance(t, 1, "poweroff", syscall.SIGTERM)
	case 1:
		advance(t, 2, "reboot", syscall.SIGINT)
	case 2:
		// After the reboot: done.
	default:
		t.Fatalf("phase %d", phase)
	}
}

// advance records the next phase on disk, tells the host, and asks PID 1
// to shut down. It never returns: shutdown stops this test.
func advance(t *testing.T, next int, name string, sig syscall.Signal) {
	if err := writeSync(phaseFile, []byte(strconv.Itoa(next)), os.O_CREATE|os.O_WRONLY|os.O_TRUNC); err != nil {
		t.Fatal(err)
	}
	guest.Phase(name)
	if err := syscall.Kill(1, sig); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
	t.Fatalf("still running a minute after %s", name)
}

func readFileOr(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// TestEmergency runs from /etc/profile of the console shell in the broken
// config scenario: the system came up with the built-in config and a shell.
func TestEmergency(t *testing.T) {
	if h, _ := os.Hostname(); h != "nest" {
		t.Errorf("hostname = %q, want the built-in config's nest", h)
	}
	out, code := nest(t, "status")
	if code != 0 || !strings.Contains(out, "console") || !strings.Contains(out, "running") {
		t.Errorf("nest status = %d %q, want the console shell running", code, out)
	}
	// The built-in config: the console shell and the demo's daemon
	// containers, nothing of the broken file.
	if lines := strings.Count(strings.TrimSpace(out), "\n"); lines != 3 || !strings.Contains(out, "hello") || !strings.Contains(out, "web") {
		t.Errorf("nest status shows %d units, want the console, hello and web:\n%s", lines, out)
	}
	// The demo's web answers on its published port.
	var body string
	until(t, 60*time.Second, "the demo's web on 127.0.0.1:8080", func() bool {
		body, _ = get("http://127.0.0.1:8080/")
		return body != ""
	})
	if !strings.Contains(body, "hello from web, a daemon container at 10.88.0.") {
		t.Errorf("the demo's web says %q", body)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}

func parseHex(s string) (uint64, error) {
	return strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
}
