package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sysroot is where the real root is mounted before nest moves onto it.
const sysroot = "/sysroot"

// rootWait bounds the wait for the root device to appear.
const rootWait = 10 * time.Second

// switchRoot leaves the initramfs for the root file system the kernel
// command line names (root=/dev/X, rootfstype=, rootflags=, ro): it loads
// the modules the initramfs's config lists (the disk and file system
// drivers) and nest's own, mounts the root on /sysroot, moves /dev, /proc, /sys and /run
// onto it, makes it / and execs nest again from memory, which then boots
// from the disk's own /etc/nest/nest.toml. It returns only on failure;
// the boot then goes on from the initramfs.
func (b *booter) switchRoot() error {
	c := b.cmdline
	if !strings.HasPrefix(c.root, "/dev/") {
		return fmt.Errorf("root=%s: want a device path such as /dev/vda (UUID= and LABEL= are not supported)", c.root)
	}
	fstype := c.rootType
	if fstype == "" {
		fstype = "ext4"
	}
	var modules []string
	if cfg, err := loadConfig(b.cfgPath, false); err == nil {
		modules = cfg.Modules
	} else if !errors.Is(err, os.ErrNotExist) {
		b.logf("root=%s: the initramfs's config: %v", c.root, err)
	}
	// nest's own modules too: the disk may have no /lib/modules of this
	// kernel (an appliance image), and they are needed after the switch.
	b.loadModules(append(append(modules, fstype), ownModules...))

	deadline := time.Now().Add(rootWait)
	for {
		if _, err := os.Stat(c.root); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root=%s: no such device after %s (are its drivers in the initramfs's modules?)", c.root, rootWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.MkdirAll(sysroot, 0o755); err != nil {
		return fmt.Errorf("root=%s: %w", c.root, err)
	}
	flags := uintptr(0)
	if c.rootRO {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(c.root, sysroot, fstype, flags, c.rootFlags); err != nil {
		return fmt.Errorf("root=%s: mount %s on %s: %w", c.root, fstype, sysroot, err)
	}
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		target := sysroot + m
		if err := os.MkdirAll(target, 0o755); err != nil {
			return b.undoRoot(fmt.Errorf("root=%s: %s: %w", c.root, target, err))
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return b.undoRoot(fmt.Errorf("root=%s: move %s: %w", c.root, m, err))
		}
	}
	if err := unix.Chdir(sysroot); err != nil {
		return fmt.Errorf("root=%s: %w", c.root, err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("root=%s: move to /: %w", c.root, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("root=%s: chroot: %w", c.root, err)
	}
	unix.Chdir("/")
	b.logf("root=%s: %s mounted as /, starting again from it", c.root, fstype)
	// The binary in memory is the initramfs's; the config is the disk's.
	err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	return fmt.Errorf("root=%s: exec: %w (the initramfs is gone: booting from the disk with this process)", c.root, err)
}

// undoRoot moves the API file systems back after a failed switch, so the
// boot can go on from the initramfs.
func (b *booter) undoRoot(err error) error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		unix.Mount(sysroot+m, m, "", unix.MS_MOVE, "")
	}
	unix.Unmount(sysroot, unix.MNT_DETACH)
	return err
}
