package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// containerConsole gives a child container a /dev/console of its own: a
// fresh terminal of the container's devpts whose output feeds the
// container's log (this init's stdout, read by the parent), never the
// parent's console. It runs after pivot_root.
func containerConsole(log io.Writer) error {
	master, err := os.OpenFile("/dev/pts/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	fail := func(err error) error {
		master.Close()
		return fmt.Errorf("console: %w", err)
	}
	rc, err := master.SyscallConn()
	if err != nil {
		return fail(err)
	}
	slave := -1
	var cerr error
	rc.Control(func(fd uintptr) {
		if cerr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0); cerr != nil {
			return
		}
		// The peer by fd, not by a path in a devpts someone could swap.
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
		if errno != 0 {
			cerr = errno
			return
		}
		slave = int(r)
	})
	if cerr != nil {
		return fail(cerr)
	}
	// The log wants lines as written: no "\r\n" for "\n".
	if t, err := unix.IoctlGetTermios(slave, unix.TCGETS); err == nil {
		t.Oflag &^= unix.OPOST
		unix.IoctlSetTermios(slave, unix.TCSETS, t)
	}
	if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", slave), "/dev/console", "", unix.MS_BIND, ""); err != nil {
		unix.Close(slave)
		return fail(err)
	}
	// The init keeps the slave open, so that reads of the master wait for
	// output instead of failing when no program has the console open.
	go func() {
		io.Copy(log, master)
		unix.Close(slave)
	}()
	return nil
}
