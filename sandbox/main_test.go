package sandbox

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// helperEnv names the helper a re-executed test binary runs instead of the
// tests; its arguments are the binary's arguments.
const helperEnv = "NEST_SANDBOX_TEST_HELPER"

// helpers are the commands a test may run in a fresh process of the test
// binary (per-thread and per-process state must not touch the test's own).
var helpers = map[string]func(args ...string) int{
	"acquire":    helperAcquire,
	"temp":       helperTemp,
	"limit-caps": helperLimitCaps,
}

var helperUsed sync.Map

func TestMain(m *testing.M) {
	if name := os.Getenv(helperEnv); name != "" {
		h, ok := helpers[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
			os.Exit(2)
		}
		os.Exit(h(os.Args[1:]...))
	}
	code := m.Run()
	if code == 0 && flag.Lookup("test.run").Value.String() == "" && flag.Lookup("test.skip").Value.String() == "" {
		for name := range helpers {
			if _, ok := helperUsed.Load(name); !ok {
				fmt.Fprintf(os.Stderr, "helper %s was not used by any test; remove it\n", name)
				code = 1
			}
		}
	}
	os.Exit(code)
}

// helperCommand returns a command that runs the helper name in a new
// process of the test binary.
func helperCommand(t testing.TB, name string, args ...string) *exec.Cmd {
	t.Helper()
	if _, ok := helpers[name]; !ok {
		t.Fatalf("no helper %q", name)
	}
	helperUsed.Store(name, true)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	// Under -race a process waits a second at exit by default.
	race := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), helperEnv+"="+name, "GORACE="+race)
	return cmd
}
