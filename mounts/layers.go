package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A user container's root is one overlay (notes in docs/decisions.md,
// "User containers and nesting"): its lowers are the layers its parent
// hands it as detached mount trees — the parent's own upper layer and the
// parent's lowers, down to the base that the root init cloned (idmapped
// for the child's user namespace) — and its upper is a directory of the
// state tree the parent keeps for it. Overlay on overlay stops at depth 2
// on this kernel, so each level mounts one flat overlay over real
// directories.

// MaxLayers bounds the lowers of one overlay: the depth of a tree of
// containers (one upper per level) plus the base.
const MaxLayers = 16

// Overlay says how a user container's root is made.
type Overlay struct {
	// State is a detached tree of the container's state directory (see
	// package rootfs): its "upper" and "work" entries become the overlay's
	// upper and work directories.
	State int
	// Lowers are detached read-only trees, the topmost first.
	Lowers []int
	// Binds attach entries of the state directory inside the root:
	// entry name -> target (home, the container's own /etc/nest …). A
	// missing target directory is made in the overlay.
	Binds []StateBind
}

// StateBind shows one entry of the state directory at Target.
type StateBind struct {
	Entry, Target string
}

// Layers are the mounts an init keeps of its own root so that it can
// hand them to its children: its state tree and its lowers, attached
// under the hidden LayerDir. The fds stay valid as long as the mounts are
// part of this mount namespace.
type Layers struct {
	State  int
	Lowers []int
}

// LayerDir holds an init's own layers and a full proc that lets its
// children mount theirs (see Root.KeepLayers). A tmpfs over it hides
// them from everything the init runs.
const LayerDir = "/run/.nest"

// ChildLowers returns fresh detached, read-only clones of the layers for
// one child's overlay: this init's upper, then its own lowers. The caller
// owns the fds (and closes them after sending).
func (l *Layers) ChildLowers() ([]int, error) {
	if len(l.Lowers)+1 > MaxLayers {
		return nil, fmt.Errorf("a container at this depth would have %d layers, over the limit of %d", len(l.Lowers)+1, MaxLayers)
	}
	var out []int
	upper, err := cloneAt(l.State, "upper")
	if err != nil {
		return nil, fmt.Errorf("own upper layer: %w", err)
	}
	out = append(out, upper)
	for i, fd := range l.Lowers {
		tree, err := cloneAt(fd, "")
		if err != nil {
			closeAll(out)
			return nil, fmt.Errorf("own layer %d: %w", i, err)
		}
		out = append(out, tree)
	}
	return out, nil
}

// cloneAt returns a detached read-only clone of path under the mount at
// fd ("" for the mount itself), never following a symlink at path.
func cloneAt(fd int, path string) (int, error) {
	flags := uint(unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC | unix.AT_SYMLINK_NOFOLLOW)
	if path == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	tree, err := unix.OpenTree(fd, path, flags)
	if err != nil {
		return -1, fmt.Errorf("open_tree: %w", err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(tree)
		return -1, fmt.Errorf("mount_setattr: %w", err)
	}
	return tree, nil
}

// IdmappedBase returns a detached, read-only clone of the mount at path
// (without submounts) whose ids are shifted by the user namespace userns:
// files the parent's root owns are owned by the child's root. Only the
// initial user namespace's root may do this, and only on file systems
// that allow it (ext4, btrfs, xfs; tmpfs from Linux 6.3).
func IdmappedBase(path string, userns int) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, path, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", path, err)
	}
	attr := unix.MountAttr{
		Attr_set:  unix.MOUNT_ATTR_IDMAP | unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV,
		Userns_fd: uint64(userns),
	}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(tree)
		var st unix.Statfs_t
		fs := ""
		if unix.Statfs(path, &st) == nil {
			fs = fmt.Sprintf(" (file system 0x%x)", st.Type)
		}
		return -1, fmt.Errorf("idmapped mount of %s%s: %w: user containers need their base on a file system that allows idmapped mounts (ext4, btrfs, xfs; tmpfs from Linux 6.3)", path, fs, err)
	}
	return tree, nil
}

// StateTree returns a detached, writable, nosuid, nodev clone of a
// container's state directory.
func StateTree(dir string) (int, error) {
	tree, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", dir, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &attr); err != nil {
		unix.Close(tree)
		return -1, fmt.Errorf("mount_setattr %s: %w", dir, err)
	}
	return tree, nil
}

// mount attaches the layers under dir/layers and mounts the
// overlay on dir/root.
func (o *Overlay) mount(dir string) error {
	if len(o.Lowers) == 0 || len(o.Lowers) > MaxLayers {
		return fmt.Errorf("overlay: %d lower layers, want 1 to %d", len(o.Lowers), MaxLayers)
	}
	layers := filepath.Join(dir, "layers")
	attach := func(fd int, name string) (string, error) {
		p := filepath.Join(layers, name)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return "", err
		}
		if err := unix.MoveMount(fd, "", unix.AT_FDCWD, p, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return "", fmt.Errorf("attach layer %s: %w", name, err)
		}
		return p, nil
	}
	state, err := attach(o.State, "state")
	if err != nil {
		return err
	}
	lowers := make([]string, len(o.Lowers))
	for i, fd := range o.Lowers {
		if lowers[i], err = attach(fd, strconv.Itoa(i)); err != nil {
			return err
		}
	}
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return fmt.Errorf("staging: %w", err)
	}
	// userxattr: the kernel refuses trusted.* xattrs to a user namespace;
	// without it the mount succeeds but cannot record whiteouts and
	// opaque directories.
	data := "lowerdir=" + strings.Join(lowers, ":") +
		",upperdir=" + filepath.Join(state, "upper") + ",workdir=" + filepath.Join(state, "work") + ",userxattr"
	if err := unix.Mount("overlay", root, "overlay", 0, data); err != nil {
		if errors.Is(err, unix.ELOOP) {
			return fmt.Errorf("mount the overlay root: %w: a layer lies inside another one on the same file system (the state of user containers, %s, inside the base they see): give the state its own file system", err, "/var/lib/nest")
		}
		return fmt.Errorf("mount the overlay root: %w", err)
	}
	return nil
}

// keepLayers moves the overlay's layers under LayerDir inside the new
// root, mounts a full proc there (a proc that is fully visible somewhere
// in a mount namespace is what lets its child namespaces mount theirs
// under masks), and hides it all under an empty read-only tmpfs.
func (o *Overlay) keepLayers(rootFD int) error {
	dir, err := layerDir(rootFD)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	move := func(fd int, name string) error {
		sub, err := subdir(dir, name)
		if err != nil {
			return err
		}
		defer unix.Close(sub)
		if err := unix.MoveMount(fd, "", sub, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
			return fmt.Errorf("keep layer %s: %w", name, err)
		}
		return nil
	}
	if err := move(o.State, "state"); err != nil {
		return err
	}
	for i, fd := range o.Lowers {
		if err := move(fd, strconv.Itoa(i)); err != nil {
			return err
		}
	}
	return hiddenProc(dir)
}

// layerDir makes LayerDir inside the root and opens it.
func layerDir(rootFD int) (int, error) {
	if err := mkdirIn(rootFD, LayerDir); err != nil {
		return -1, err
	}
	return openIn(rootFD, LayerDir, unix.O_PATH|unix.O_DIRECTORY)
}

// subdir makes the directory name in dir (if missing) and opens it.
func subdir(dir int, name string) (int, error) {
	if err := unix.Mkdirat(dir, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
		return -1, fmt.Errorf("%s/%s: %w", LayerDir, name, err)
	}
	fd, err := unix.Openat(dir, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("%s/%s: %w", LayerDir, name, err)
	}
	return fd, nil
}

// hiddenProc mounts a full proc in the directory dir and covers dir with
// an empty read-only tmpfs.
func hiddenProc(dir int) error {
	proc, err := subdir(dir, "proc")
	if err != nil {
		return err
	}
	defer unix.Close(proc)
	if err := unix.Mount("proc", fdPath(proc), "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("hidden proc: %w", err)
	}
	if err := unix.Mount("tmpfs", fdPath(dir), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=0"); err != nil {
		return fmt.Errorf("cover %s: %w", LayerDir, err)
	}
	return nil
}

// bindState attaches the state entries at their targets inside the root,
// making missing target directories.
func (o *Overlay) bindState(rootFD int) error {
	for _, b := range o.Binds {
		if err := mkdirIn(rootFD, b.Target); err != nil {
			return err
		}
		tree, err := unix.OpenTree(o.State, b.Entry, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_SYMLINK_NOFOLLOW)
		if err != nil {
			return fmt.Errorf("state %s: open_tree: %w", b.Entry, err)
		}
		err = attachInto(rootFD, tree, b.Target)
		unix.Close(tree)
		if err != nil {
			return fmt.Errorf("state %s on %s: %w", b.Entry, b.Target, err)
		}
	}
	return nil
}

// mkdirIn makes path and its missing parents inside the root, each step
// resolved inside it.
func mkdirIn(rootFD int, path string) error {
	cur := ""
	for _, part := range strings.Split(strings.Trim(filepath.Clean(path), "/"), "/") {
		parent, err := openIn(rootFD, "/"+cur, unix.O_PATH|unix.O_DIRECTORY)
		if err != nil {
			return fmt.Errorf("mkdir %s: %w", path, err)
		}
		err = unix.Mkdirat(parent, part, 0o755)
		unix.Close(parent)
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %s: %w", path, err)
		}
		cur = filepath.Join(cur, part)
	}
	return nil
}
