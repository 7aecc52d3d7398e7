// Command smokeinit is the smallest possible /init for the harness's own
// tests (vmtest.TestBootSmoke): it proves that the kernel boots, that a
// static Go PID 1 runs, that ttyS1 carries output and that the verdict
// reaches the host.
//
// SMOKE_MODE on the kernel command line (the kernel passes unknown
// NAME=value words to init's environment) picks an ending, to exercise
// each way a run can end: "" passes, "fail" fails, "poweroff" powers off
// without a verdict, "panic" kills PID 1, "hang" never ends.
package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"nest/vmtest/guest"
)

func main() {
	// The initramfs has /dev/console only; ttyS1 and /dev/port come
	// from devtmpfs.
	if err := os.MkdirAll("/dev", 0o755); err != nil {
		fail(err)
	}
	if err := unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, ""); err != nil && err != unix.EBUSY {
		fail(fmt.Errorf("mount devtmpfs: %w", err))
	}
	fmt.Println("smokeinit: console works")
	guest.Phase("booted")
	if err := guest.RedirectOutput(); err != nil {
		fail(err)
	}
	fmt.Println("hello")
	if !guest.InGuest() {
		fmt.Println("smokeinit: InGuest() = false, want true")
		guest.Exit(1)
	}
	switch mode := os.Getenv("SMOKE_MODE"); mode {
	case "":
		guest.Exit(0)
	case "fail":
		guest.Exit(1)
	case "poweroff":
		guest.Phase("poweroff")
		unix.Sync()
		fail(unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF))
	case "panic":
		os.Exit(3) // PID 1 exiting panics the kernel
	case "hang":
		// Sleep rather than select{}: with no other goroutine the Go
		// runtime would call that a deadlock and exit.
		for {
			time.Sleep(time.Hour)
		}
	default:
		fail(fmt.Errorf("unknown SMOKE_MODE %q", mode))
	}
}

// fail reports on stderr and fails the VM.
func fail(err error) {
	fmt.Fprintf(os.Stderr, "smokeinit: %v\n", err)
	guest.Exit(1)
}
