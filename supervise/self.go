package supervise

import (
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// A container whose root is the parent's root (private_users = false)
// must never run nest from a path it could write to: through
// /proc/self/exe it could replace the binary its parent runs
// (CVE-2019-5736). It runs a sealed in-memory copy instead, made once per
// init, kept open read-only for its life and shared by all its children
// (memfd_create and F_SEAL_* 3.17).
var sealed struct {
	once sync.Once
	path string
	err  error
}

// sealedSelf returns a path that execs the sealed copy of this binary.
func sealedSelf() (string, error) {
	sealed.once.Do(func() { sealed.path, sealed.err = makeSealedSelf() })
	return sealed.path, sealed.err
}

func makeSealedSelf() (string, error) {
	src, err := os.Open("/proc/self/exe")
	if err != nil {
		return "", fmt.Errorf("sealed copy of nest: %w", err)
	}
	defer src.Close()
	fd, err := unix.MemfdCreate("nest", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return "", fmt.Errorf("sealed copy of nest: memfd_create: %w", err)
	}
	// A high number: the fds a child is given are dup'ed onto 0..n, and
	// this one must survive that until execve resolves the path.
	high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 100)
	unix.Close(fd)
	if err != nil {
		return "", fmt.Errorf("sealed copy of nest: %w", err)
	}
	dst := os.NewFile(uintptr(high), "nest-sealed")
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return "", fmt.Errorf("sealed copy of nest: %w", err)
	}
	seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(uintptr(high), unix.F_ADD_SEALS, seals); err != nil {
		dst.Close()
		return "", fmt.Errorf("sealed copy of nest: seal: %w", err)
	}
	// execve refuses a file that any fd holds open for writing (ETXTBSY):
	// keep a read-only fd and close the one that wrote it.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", high), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	dst.Close()
	if err != nil {
		return "", fmt.Errorf("sealed copy of nest: reopen: %w", err)
	}
	keep, err := unix.FcntlInt(uintptr(ro), unix.F_DUPFD_CLOEXEC, 100)
	unix.Close(ro)
	if err != nil {
		return "", fmt.Errorf("sealed copy of nest: %w", err)
	}
	return fmt.Sprintf("/proc/self/fd/%d", keep), nil
}
