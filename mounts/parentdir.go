package mounts

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The escalation directory: a parent makes one directory per child (with
// the child's escalation socket in it) and gives the child a detached,
// read-only copy of it, which the child's init attaches at
// /run/nest/parent. A directory rather than the socket itself, so that a
// new socket in it would show without a new mount.

// ParentDir is where a child container finds its parent's directory.
const ParentDir = "/run/nest/parent"

// DetachDir returns a detached read-only, nosuid, nodev, noexec copy of
// the directory at path (without what is mounted below it). The caller
// owns the fd.
func DetachDir(path string) (int, error) {
	fd, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", path, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount_setattr %s: %w", path, err)
	}
	return fd, nil
}

// AttachParentDir attaches the detached tree at fd on ParentDir, making
// the directory. It runs in the child's init once its root is built, on
// the child's own /run; the fd is closed.
func AttachParentDir(fd int) error {
	defer unix.Close(fd)
	if err := os.MkdirAll(ParentDir, 0o755); err != nil {
		return fmt.Errorf("escalation directory: %w", err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, ParentDir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("escalation directory on %s: move_mount: %w", ParentDir, err)
	}
	return nil
}
