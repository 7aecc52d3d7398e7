package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// openPTY opens a new pseudo-terminal pair. The master is non-blocking
// (through Go's poller, so Close ends a pending Read).
func openPTY() (master, slave *os.File, err error) {
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("pty number: %w", err)
	}
	name := fmt.Sprintf("/dev/pts/%d", n)
	sfd, err := unix.Open(name, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return nil, nil, fmt.Errorf("open %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		unix.Close(sfd)
		return nil, nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), os.NewFile(uintptr(sfd), name), nil
}

// foregroundScript says whether CMD's process group is the terminal's
// foreground group: fields 5 (pgrp) and 8 (tpgid) of /proc/$$/stat, counted
// after the command name, which ends at the last ')'. Then it becomes sleep,
// which dies of SIGINT (a shell running -c catches SIGINT and may act on it
// only once its current command is done).
const foregroundScript = `
read -r stat < /proc/$$/stat
set -- ${stat##*) }
if [ "$3" = "$6" ]; then echo "fg-check: foreground"; else echo "fg-check: background (pgrp $3, tpgid $6)"; fi
exec sleep 30
`

// foregroundComm is the command name of the leader of the terminal's
// foreground process group, seen from the test (the host's pids).
func foregroundComm(master *os.File) string {
	pgrp, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPGRP)
	if err != nil {
		return ""
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pgrp))
	return strings.TrimSpace(string(b))
}

// TestUpTerminal: on a terminal, CMD runs in the foreground process group,
// so Ctrl-C reaches it (not nest): it dies of SIGINT and nest exits 130.
func TestUpTerminal(t *testing.T) {
	t.Parallel()
	for _, m := range upModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			m.require(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			master, slave, err := openPTY()
			if err != nil {
				t.Skipf("no pseudo-terminal: %v", err)
			}
			t.Cleanup(func() { master.Close() })

			cmd := m.command(ctx, "up", "--", "sh", "-c", foregroundScript)
			cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
			r, err := launch(t, m, cmd)
			slave.Close()
			if err != nil {
				t.Fatal(err)
			}
			// A pty whose master is not read can block its writers.
			term := newOutput()
			go io.Copy(term, master)

			if !term.waitUntil(ctx, func(s string) bool {
				i := strings.Index(s, "fg-check: ")
				return i >= 0 && strings.Contains(s[i:], "\n")
			}) {
				t.Fatalf("%s on a terminal: no answer from CMD: %q, %s", r.name, term, r.describe())
			}
			if !strings.Contains(term.String(), "fg-check: foreground") {
				t.Fatalf("%s on a terminal: %q, want CMD in the foreground process group", r.name, term)
			}
			// Ctrl-C once CMD has become sleep.
			for foregroundComm(master) != "sleep" {
				select {
				case <-ctx.Done():
					t.Fatalf("%s on a terminal: foreground process group led by %q, want sleep", r.name, foregroundComm(master))
				case <-time.After(5 * time.Millisecond):
				}
			}
			if _, err := master.Write([]byte{3}); err != nil {
				t.Fatalf("write ^C to the pty: %v", err)
			}
			if got := r.wait(); got != 130 {
				t.Errorf("%s on a terminal after Ctrl-C = %d, want 130\nterminal: %q\n%s", r.name, got, term, r.describe())
			}
		})
	}
}
