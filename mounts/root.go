package mounts

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// InRamRoot reports whether / is the kernel's initial rootfs (an initramfs
// unpacked into ramfs or tmpfs). pivot_root(2) refuses that root with
// EINVAL because it has no parent mount, so children could never pivot.
func InRamRoot() bool {
	var fs unix.Statfs_t
	if err := unix.Statfs("/", &fs); err != nil {
		return false
	}
	return fs.Type == unix.RAMFS_MAGIC || fs.Type == unix.TMPFS_MAGIC
}

// LeaveRamRoot makes / a bind mount of itself (the systemd initrd
// transition, without a new root to switch to): bind / on a directory,
// move that mount onto /, and chroot into it. Afterwards / is a real mount
// with a parent, and pivot_root works below it. Call it before any other
// mount, so that nothing is left on the hidden rootfs.
func LeaveRamRoot() error {
	const dir = "/.nest-root"
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return fmt.Errorf("leave initramfs root: %w", err)
	}
	if err := unix.Mount("/", dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("leave initramfs root: bind / on %s: %w", dir, err)
	}
	if err := unix.Chdir(dir); err != nil {
		return fmt.Errorf("leave initramfs root: %w", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("leave initramfs root: move to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("leave initramfs root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("leave initramfs root: %w", err)
	}
	// The directory shows up again inside the new root (it is the same
	// file system); it is empty and no longer needed.
	os.Remove(dir)
	return nil
}
