// Package guest owns the in-VM half of nest's VM test protocol: it sends a
// guest program's output to the results port (/dev/ttyS1), marks phases,
// and reports the final verdict to the host through QEMU's isa-debug-exit
// device so the VM ends at once.
//
// It is deliberately tiny (x/sys/unix only) because it is linked into
// every guest test binary and into test /init programs. The host half is
// nest/vmtest.
package guest

import (
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Protocol constants shared with the host (nest/vmtest).
const (
	// ResultsTTY is the second serial port; the host writes it to a file.
	ResultsTTY = "/dev/ttyS1"
	// DonePass and DoneFail are the last line the guest writes to
	// ResultsTTY. The host needs DonePass as well as ExitPass to pass.
	DonePass = "NESTVM DONE PASS"
	DoneFail = "NESTVM DONE FAIL"
	// PhasePrefix starts a line written by Phase.
	PhasePrefix = "NESTVM PHASE "

	// DebugExitPort is the isa-debug-exit I/O port (iobase=0xf4).
	DebugExitPort = 0xf4
	// VerdictPass and VerdictFail are the bytes written to DebugExitPort.
	// QEMU then exits with status (v<<1)|1. 0 is avoided on purpose:
	// it would give status 1, which is also QEMU's own error status.
	VerdictPass byte = 0x20
	VerdictFail byte = 0x21
	// ExitPass and ExitFail are the QEMU exit statuses they produce.
	ExitPass = int(VerdictPass)<<1 | 1 // 65
	ExitFail = int(VerdictFail)<<1 | 1 // 67

	// EnvVar=1 in the environment, or CmdlineFlag on the kernel command
	// line, marks a process as running inside a test VM. The host puts
	// CmdlineFlag on the command line; as an unknown NAME=value word the
	// kernel also hands it to PID 1 as an environment variable, so PID 1
	// knows before /proc is mounted.
	EnvVar      = "NEST_VMTEST"
	CmdlineFlag = EnvVar + "=1"
)

// Main runs a guest test binary from its TestMain:
//
//	func TestMain(m *testing.M) { guest.Main(m) }
//
// It sends stdout and stderr to ResultsTTY, runs the tests, writes the DONE
// line and ends the VM with the verdict. It does not return.
func Main(m interface{ Run() int }) {
	if err := RedirectOutput(); err != nil {
		// Still run: the output goes to the console, and the verdict
		// and DONE line are attempted again by Exit.
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
	}
	Exit(m.Run())
}

// RedirectOutput points file descriptors 1 and 2 (os.Stdout, os.Stderr) at
// ResultsTTY, switched to raw output so lines arrive without the '\r' the
// tty would add. devtmpfs must be mounted on /dev.
func RedirectOutput() error {
	fd, err := openResults()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	for _, target := range []int{1, 2} {
		if err := unix.Dup3(fd, target, 0); err != nil {
			return fmt.Errorf("redirect fd %d to %s: %w", target, ResultsTTY, err)
		}
	}
	return nil
}

// Phase writes "NESTVM PHASE name" to ResultsTTY without ending the VM,
// for scenarios where the guest then reboots or powers off on purpose and
// the host checks which phases were reached. Errors are reported on
// stderr only: a missing phase line fails the host's check anyway.
func Phase(name string) {
	if err := writeResultLine(PhasePrefix + name); err != nil {
		fmt.Fprintf(os.Stderr, "guest: phase %s: %v\n", name, err)
	}
}

// Exit ends the VM with a verdict: code 0 passes, anything else fails. It
// writes the DONE line, waits until the serial port has sent everything,
// then writes the verdict to the isa-debug-exit port, which stops QEMU at
// once. If that is impossible (no /dev/port, not root, no such device) it
// falls back to os.Exit(code). It does not return.
func Exit(code int) {
	line, verdict := DonePass, VerdictPass
	if code != 0 {
		line, verdict = DoneFail, VerdictFail
	}
	if err := writeResultLine(line); err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v\n", err)
	}
	// Anything a caller buffered in os.Stdout's fd is already in the tty;
	// writeResultLine drained it together with the DONE line.
	if err := debugExit(verdict); err != nil {
		fmt.Fprintf(os.Stderr, "guest: %v; exiting with status %d instead\n", err, code)
		os.Exit(code)
	}
	// QEMU normally stops inside the pwrite. Give it a moment in case the
	// write was accepted but no device listened, then give up.
	time.Sleep(time.Second)
	fmt.Fprintf(os.Stderr, "guest: wrote verdict %#x to port %#x but the VM is still running (no isa-debug-exit device?)\n", verdict, DebugExitPort)
	os.Exit(code)
}

// InGuest reports whether this process runs inside a nest test VM.
func InGuest() bool {
	if os.Getenv(EnvVar) == "1" {
		return true
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return false
	}
	for _, w := range strings.Fields(string(cmdline)) {
		if w == CmdlineFlag {
			return true
		}
	}
	return false
}

// openResults opens ResultsTTY for writing and turns off output
// post-processing (ONLCR would turn every "\n" into "\r\n"). O_NOCTTY
// keeps it from becoming PID 1's controlling terminal.
func openResults() (int, error) {
	fd, err := unix.Open(ResultsTTY, unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", ResultsTTY, err)
	}
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err == nil {
		t.Oflag &^= unix.OPOST
		err = unix.IoctlSetTermios(fd, unix.TCSETS, t)
	}
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("make %s raw: %w", ResultsTTY, err)
	}
	return fd, nil
}

// writeResultLine writes one line to ResultsTTY and waits until the UART
// has sent it (tcdrain), so a debug-exit right after cannot lose it.
func writeResultLine(line string) error {
	fd, err := openResults()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	b := []byte(line + "\n")
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", ResultsTTY, err)
		}
		b = b[n:]
	}
	// TCSBRK with a non-zero argument is tcdrain(3).
	if err := unix.IoctlSetInt(fd, unix.TCSBRK, 1); err != nil {
		return fmt.Errorf("drain %s: %w", ResultsTTY, err)
	}
	return nil
}

// debugExit writes v to the isa-debug-exit port through /dev/port, which
// needs no assembly: a 1-byte pwrite at the port's offset is an outb.
func debugExit(v byte) error {
	fd, err := unix.Open("/dev/port", unix.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("debug exit: open /dev/port: %w", err)
	}
	defer unix.Close(fd)
	if _, err := unix.Pwrite(fd, []byte{v}, DebugExitPort); err != nil {
		return fmt.Errorf("debug exit: write port %#x: %w", DebugExitPort, err)
	}
	return nil
}
