package mounts

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"

	"golang.org/x/sys/unix"
)

// Kernel features used here: fsopen, fsconfig, fsmount (5.2); tmpfs may
// be made inside a user namespace.

// Files are files a container's init generates for itself (/etc/hosts,
// /etc/resolv.conf): they live on a small tmpfs that is attached nowhere,
// and each is bound over a file of the container's root. The init keeps
// the tmpfs to rewrite them in place later; nothing else can reach it but
// through the bound files.
type Files struct {
	fd int // the detached tmpfs
}

// NewFiles makes the detached tmpfs.
func NewFiles() (*Files, error) {
	fs, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("generated files: fsopen tmpfs: %w", err)
	}
	defer unix.Close(fs)
	for _, kv := range [][2]string{{"size", "1m"}, {"nr_inodes", "64"}, {"mode", "0755"}} {
		if err := unix.FsconfigSetString(fs, kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("generated files: tmpfs %s=%s: %w", kv[0], kv[1], err)
		}
	}
	if err := unix.FsconfigCreate(fs); err != nil {
		return nil, fmt.Errorf("generated files: tmpfs: %w", err)
	}
	mnt, err := unix.Fsmount(fs, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOEXEC)
	if err != nil {
		return nil, fmt.Errorf("generated files: fsmount: %w", err)
	}
	return &Files{fd: mnt}, nil
}

// Write replaces the content of the file name in place: a file bound
// somewhere shows the new content at once. name is a plain file name.
func (f *Files) Write(name string, data []byte) error {
	fd, err := unix.Openat(f.fd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("generated %s: %w", name, err)
	}
	defer unix.Close(fd)
	for len(data) > 0 {
		n, err := unix.Write(fd, data)
		if err != nil {
			return fmt.Errorf("generated %s: %w", name, err)
		}
		data = data[n:]
	}
	return nil
}

// Bind binds each file named in targets (name → target) over its target,
// a path in the root of the calling process resolved without leaving it.
// A target must exist: a read-only root cannot grow one. A missing target
// is an error for which errors.Is(err, fs.ErrNotExist) holds; the other
// files are bound all the same. Bind works once.
//
// Linux before 6.15 clones only mounts of the caller's mount namespace, so
// the tmpfs is attached on via (a directory that exists, such as /tmp)
// while the binds are made, and detached again: via shows what it showed
// before, and the tmpfs lives on in the bound files and in f.
func (f *Files) Bind(via string, targets map[string]string) error {
	root, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("generated files: %w", err)
	}
	defer unix.Close(root)
	at, err := openIn(root, via, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("generated files: %w", err)
	}
	err = unix.MoveMount(f.fd, "", at, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH)
	unix.Close(at)
	if err != nil {
		return fmt.Errorf("generated files: attach on %s: %w", via, err)
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(targets)) {
		if err := f.bind(root, name, targets[name]); err != nil {
			errs = append(errs, err)
			if !errors.Is(err, fs.ErrNotExist) {
				break
			}
		}
	}
	if err := unix.Unmount(fdPath(f.fd), unix.MNT_DETACH); err != nil {
		errs = append(errs, fmt.Errorf("generated files: detach from %s: %w", via, err))
	}
	return errors.Join(errs...)
}

func (f *Files) bind(root int, name, target string) error {
	tree, err := unix.OpenTree(f.fd, name, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("generated %s: open_tree: %w", name, err)
	}
	defer unix.Close(tree)
	if err := attachInto(root, tree, target); err != nil {
		return fmt.Errorf("generated %s on %s: %w", name, target, err)
	}
	return nil
}

// Close lets go of the tmpfs; files bound somewhere stay.
func (f *Files) Close() {
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
}
