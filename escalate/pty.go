package escalate

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// A pty of the parent's own devpts for an interactive session. The slave
// is reached through the master (TIOCGPTPEER, 4.13), never by a path, so
// it is the master's own even where /dev/pts is not the instance of
// /dev/ptmx. The master is non-blocking and polled: a read waits in the
// runtime, and deadlines and Close wake it.

// OpenPTY returns a new pty's master and slave, both close-on-exec. The
// slave is not the caller's controlling terminal.
func OpenPTY() (master, slave *os.File, err error) {
	m, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open /dev/ptmx: %w", err)
	}
	if err := unix.IoctlSetPointerInt(m, unix.TIOCSPTLCK, 0); err != nil {
		unix.Close(m)
		return nil, nil, fmt.Errorf("unlock pty: %w", err)
	}
	s, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(m), unix.TIOCGPTPEER, unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC)
	if errno != 0 {
		unix.Close(m)
		return nil, nil, fmt.Errorf("open the pty's slave (TIOCGPTPEER): %w", errno)
	}
	return os.NewFile(uintptr(m), "pty master"), os.NewFile(s, "pty slave"), nil
}

// SetSize sets the window of the terminal f (a pty master or a terminal);
// the kernel sends SIGWINCH to its foreground process group.
func SetSize(f *os.File, rows, cols int) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: uint16(rows), Col: uint16(cols)})
	})
	if err != nil {
		return err
	}
	return serr
}

// foreground returns the foreground process group of the terminal of the
// master f.
func foreground(f *os.File) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pgrp int
	var serr error
	err = rc.Control(func(fd uintptr) {
		pgrp, serr = unix.IoctlGetInt(int(fd), unix.TIOCGPGRP)
	})
	if err != nil {
		return 0, err
	}
	return pgrp, serr
}
