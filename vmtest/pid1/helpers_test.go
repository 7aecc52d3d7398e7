//go:build vmguest

package pid1

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"nest/supervise"
	"nest/vmtest/guest"
)

// The guest test binary is also every helper service the scenarios need:
// NEST_GUEST_HELPER picks one.
func TestMain(m *testing.M) {
	if h := os.Getenv("NEST_GUEST_HELPER"); h != "" {
		os.Exit(helper(h))
	}
	guest.Main(m)
}

func helper(name string) int {
	switch name {
	case "notify":
		// A service that takes a while to become ready, as a database does.
		time.Sleep(300 * time.Millisecond)
		notify("STATUS=warming up")
		time.Sleep(300 * time.Millisecond)
		notify("READY=1\nSTATUS=serving")
		for {
			time.Sleep(time.Hour)
		}
	case "writer":
		return writer()
	case "probe":
		return probe()
	case "userprobe":
		return userProbe()
	case "tcpsink":
		return tcpSink()
	case "tcpsource":
		return tcpSource()
	case "escalate":
		return escalateHelper()
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
	return 2
}

func notify(msg string) {
	c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "notify:", err)
		os.Exit(3)
	}
	defer c.Close()
	c.Write([]byte(msg))
}

// Files of the shutdown scenario, on the ext4 disk mounted at /var.
const (
	dataDir     = "/var/data"
	payloadFile = dataDir + "/payload"
	termFile    = dataDir + "/term"
	phaseFile   = dataDir + "/phase"
	payload     = "nest keeps what a service fsynced before the signal\n"
)

// writer writes and fsyncs the payload, reports ready, and on SIGTERM
// appends to termFile (fsynced) before it exits: what a careful service
// does, and what shutdown must not lose.
func writer() int {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := os.Stat(payloadFile); err != nil {
		if err := writeSync(payloadFile, []byte(payload), os.O_CREATE|os.O_WRONLY|os.O_TRUNC); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	notify("READY=1")
	<-term
	if err := writeSync(termFile, []byte("SIGTERM\n"), os.O_CREATE|os.O_WRONLY|os.O_APPEND); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

func writeSync(path string, data []byte, flags int) error {
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// nest runs the nest CLI and returns its output and exit code.
func nest(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command("/bin/nest", args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("nest %v: %v", args, err)
	}
	return string(out), code
}

func status(t *testing.T, name string) supervise.Status {
	t.Helper()
	out, code := nest(t, "status", "--json", name)
	if code != 0 {
		t.Fatalf("nest status %s = %d: %s", name, code, out)
	}
	var st supervise.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("nest status %s: %v in %q", name, err, out)
	}
	return st
}

// until polls cond every 20 ms for up to limit.
func until(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// zombies returns the pids of every process in state Z.
func zombies() []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); len(f) > 0 && f[0] == "Z" {
			out = append(out, pid)
		}
	}
	return out
}
