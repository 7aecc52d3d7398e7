package mounts

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Kernel features used here: open_tree, move_mount (5.2), mount_setattr
// (5.12), openat2 with RESOLVE_IN_ROOT (5.6), pivot_root(".", ".").

// Root is a container's file-system view, built by the container's own
// init inside its new user and mount namespaces. Every field is decided by
// the parent; everything the container could control (its rootfs's
// symlinks) is resolved through file descriptors, never followed out of
// the new root (the runc CVE class of 2019–2025).
type Root struct {
	// Base is a detached mount tree (from CloneBase in the parent) that
	// becomes /. The parent makes it: inside a user namespace every copied
	// mount is locked, and a bind without the submounts is refused.
	Base int
	// Overlay, when set, makes / a writable overlay instead of Base.
	Overlay *Overlay
	// Nesting keeps what this init's children need to build their roots:
	// the overlay's layers and a full proc, under LayerDir, hidden.
	Nesting bool
	Binds   []Bind
	// PrivateTmp mounts fresh tmpfs on /tmp, /var/tmp and /run.
	PrivateTmp bool
	// MinimalDev mounts a tmpfs /dev with null zero full random urandom
	// tty, a new devpts, ptmx, shm and mqueue; otherwise the parent's /dev
	// is bound (read-only, with its submounts).
	MinimalDev bool
	// ProtectProc masks /proc files that reveal or touch the host
	// (MaskedProc) and makes ReadOnlyProc read-only.
	ProtectProc bool
	// ProtectSys makes /sys read-only. A fresh sysfs needs the container's
	// own network namespace (OwnNet); without it the parent's is bound.
	ProtectSys bool
	OwnNet     bool
	// Console makes an empty /dev/console in a minimal /dev, for the init
	// to bind a terminal of its own on.
	Console bool
	// Hide covers these directories of the rootfs with an empty read-only
	// tmpfs where the container could reach them (one that does not exist
	// or that the container may not search is hidden already).
	Hide []string
}

// Bind is one path of the parent shown in the container.
type Bind struct {
	Source   string // in the parent's view
	Target   string // in the container's view; resolved inside the new root
	Writable bool
}

// CheckBind refuses binds that would undo the sandbox: a target on or under
// /proc, /sys or /dev (the container's own API file systems, which carry
// the masks) or / itself, and a source under the parent's /proc, whose
// magic links lead into the parent.
func CheckBind(b Bind) error {
	target := filepath.Clean(b.Target)
	if !filepath.IsAbs(target) || target == "/" {
		return fmt.Errorf("bind target %q: want an absolute path other than /", b.Target)
	}
	for _, api := range []string{"/proc", "/sys", "/dev"} {
		if target == api || strings.HasPrefix(target, api+"/") {
			return fmt.Errorf("bind target %s: %s is the container's own and holds its masks; bind somewhere else", b.Target, api)
		}
	}
	source := filepath.Clean(b.Source)
	if source == "/proc" || strings.HasPrefix(source, "/proc/") {
		return fmt.Errorf("bind source %s: the parent's /proc leads into the parent; bind what it points at instead", b.Source)
	}
	return nil
}

// MaskedProc are hidden behind /dev/null (files) or an empty read-only
// tmpfs (directories) when they exist.
var MaskedProc = []string{"kcore", "keys", "timer_list", "sched_debug", "sysrq-trigger", "latency_stats", "timer_stats", "acpi", "scsi"}

// ReadOnlyProc are made read-only.
var ReadOnlyProc = []string{"sys", "irq", "bus", "fs"}

// devNodes are bound from the parent's /dev: a user namespace cannot mknod.
var devNodes = []string{"null", "zero", "full", "random", "urandom", "tty"}

// staging is where the new root is assembled: a tmpfs over /tmp of the
// container's private copy of the mount table, so nothing is written into
// the parent's file systems.
const staging = "/tmp"

// Build assembles the root and pivots into it. It must run in a fresh
// mount namespace (and, for /proc, a fresh pid namespace). On error the
// namespace is half built and must be abandoned: the caller exits.
func (r Root) Build() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	// Bind sources are paths of the parent's view: take them before the
	// staging tmpfs covers the parent's /tmp.
	trees := make([]int, len(r.Binds))
	for _, b := range r.Binds {
		if err := CheckBind(b); err != nil {
			return err
		}
	}
	for i, b := range r.Binds {
		a := attrRecursive
		if !b.Writable {
			a |= attrReadOnly
		}
		tree, err := detachedTree(b.Source, a)
		if err != nil {
			closeAll(trees[:i])
			return fmt.Errorf("bind %s: %w", b.Source, err)
		}
		trees[i] = tree
	}
	defer closeAll(trees)
	if err := unix.Mount("tmpfs", staging, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		return fmt.Errorf("staging tmpfs on %s: %w", staging, err)
	}
	root := filepath.Join(staging, "root")
	if r.Overlay != nil {
		if err := r.Overlay.mount(staging); err != nil {
			return err
		}
	} else {
		if err := os.Mkdir(root, 0o755); err != nil {
			return fmt.Errorf("staging: %w", err)
		}
		if err := unix.MoveMount(r.Base, "", unix.AT_FDCWD, root, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
			return fmt.Errorf("attach the rootfs: %w", err)
		}
	}
	rootFD, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	defer unix.Close(rootFD)

	if r.MinimalDev {
		if err := minimalDev(rootFD, r.Console); err != nil {
			return err
		}
	} else if err := bindInto(rootFD, "/dev", "/dev", attrDev); err != nil {
		return fmt.Errorf("/dev: %w", err)
	}
	if err := mountIn(rootFD, "/proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return err
	}
	if r.ProtectProc {
		// The masks' /dev/null is this init's own (the parent's), never a
		// path of the rootfs, which the container controls.
		if err := protectProc(rootFD, "/dev/null"); err != nil {
			return err
		}
	}
	switch {
	case r.OwnNet:
		flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC)
		if r.ProtectSys {
			flags |= unix.MS_RDONLY
		}
		if err := mountIn(rootFD, "/sys", "sysfs", "sysfs", flags, ""); err != nil {
			return err
		}
	default:
		attr := attrRecursive
		if r.ProtectSys {
			attr |= attrReadOnly
		}
		if err := bindInto(rootFD, "/sys", "/sys", attr); err != nil {
			return fmt.Errorf("/sys: %w", err)
		}
	}
	if r.PrivateTmp {
		for _, t := range []struct{ path, mode string }{{"/tmp", "1777"}, {"/var/tmp", "1777"}, {"/run", "0755"}} {
			err := mountIn(rootFD, t.path, "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode="+t.mode)
			if err != nil && !(t.path == "/var/tmp" && errors.Is(err, unix.ENOENT)) {
				return err
			}
		}
	}
	for i, b := range r.Binds {
		if err := attachInto(rootFD, trees[i], b.Target); err != nil {
			return fmt.Errorf("bind %s on %s: %w", b.Source, b.Target, err)
		}
	}
	for _, p := range r.Hide {
		err := mountIn(rootFD, p, "tmpfs", "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0,mode=0755")
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EACCES) {
			return fmt.Errorf("hide %s: %w", p, err)
		}
	}
	if r.Overlay != nil {
		if err := r.Overlay.bindState(rootFD); err != nil {
			return err
		}
	}
	switch {
	case r.Nesting && r.Overlay != nil:
		if err := r.Overlay.keepLayers(rootFD); err != nil {
			return err
		}
	case r.Nesting:
		dir, err := layerDir(rootFD)
		if err != nil {
			return err
		}
		err = hiddenProc(dir)
		unix.Close(dir)
		if err != nil {
			return err
		}
	}
	return pivot(root)
}

// openIn opens path inside the root at rootFD without ever leaving it:
// "..", absolute symlinks and symlinks out of the root all resolve within.
func openIn(rootFD int, path string, flags int) (int, error) {
	how := unix.OpenHow{Flags: uint64(flags | unix.O_CLOEXEC), Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS}
	rel := strings.TrimLeft(path, "/")
	if rel == "" {
		rel = "."
	}
	fd, err := unix.Openat2(rootFD, rel, &how)
	if err != nil {
		return -1, fmt.Errorf("%s in the container's root: %w", path, err)
	}
	return fd, nil
}

// mountIn mounts a new file system on path inside the root.
func mountIn(rootFD int, path, source, fstype string, flags uintptr, data string) error {
	fd, err := openIn(rootFD, path, unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return fmt.Errorf("mount %s: %w", fstype, err)
	}
	defer unix.Close(fd)
	// The target is named by its fd, so nothing can swap it for a symlink
	// between the check and the mount.
	if err := unix.Mount(source, fdPath(fd), fstype, flags, data); err != nil {
		return fmt.Errorf("mount %s on %s: %w", fstype, path, err)
	}
	return nil
}

// How a bound tree is attached.
type attrs int

const (
	attrRecursive attrs = 1 << iota // with its submounts
	attrReadOnly
	attrDev // device nodes work (no nodev)
)

// bindInto binds source (a path of the parent) onto target inside the
// root. Always nosuid; nodev unless attrDev.
func bindInto(rootFD int, source, target string, a attrs) error {
	tree, err := detachedTree(source, a)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	return attachInto(rootFD, tree, target)
}

// attachInto attaches a detached tree on target inside the root. The
// target must exist and be of the same kind (directory or not).
func attachInto(rootFD, tree int, target string) error {
	var st unix.Stat_t
	if err := unix.Fstat(tree, &st); err != nil {
		return err
	}
	flags := unix.O_PATH
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		flags |= unix.O_DIRECTORY
	}
	fd, err := openIn(rootFD, target, flags)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.MoveMount(tree, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd > 0 {
			unix.Close(fd)
		}
	}
}

// bindFD binds source onto target by path (target is ours: the staging
// area).
func bindFD(source, target string, a attrs) error {
	tree, err := detachedTree(source, a)
	if err != nil {
		return err
	}
	defer unix.Close(tree)
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, target, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount to %s: %w", target, err)
	}
	return nil
}

// CloneBase returns a detached, read-only, nosuid, nodev copy of the mount
// at path without its submounts: a container's rootfs, made by the parent
// and attached by the child's init (Root.Base). The caller owns the fd.
func CloneBase(path string) (int, error) {
	return detachedTree(path, attrReadOnly)
}

// detachedTree clones source into a mount tree attached nowhere and sets
// its attributes before anyone can see it.
func detachedTree(source string, a attrs) (int, error) {
	flags := unix.OPEN_TREE_CLONE | unix.OPEN_TREE_CLOEXEC
	setFlags := unix.AT_EMPTY_PATH
	if a&attrRecursive != 0 {
		flags |= unix.AT_RECURSIVE
		setFlags |= unix.AT_RECURSIVE
	}
	fd, err := unix.OpenTree(unix.AT_FDCWD, source, uint(flags))
	if err != nil {
		return -1, fmt.Errorf("open_tree %s: %w", source, err)
	}
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID}
	if a&attrDev == 0 {
		attr.Attr_set |= unix.MOUNT_ATTR_NODEV
	}
	if a&attrReadOnly != 0 {
		attr.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if err := unix.MountSetattr(fd, "", uint(setFlags), &attr); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("mount_setattr %s: %w", source, err)
	}
	return fd, nil
}

func fdPath(fd int) string { return fmt.Sprintf("/proc/self/fd/%d", fd) }

// minimalDev mounts a tmpfs on /dev with the few nodes a program needs.
func minimalDev(rootFD int, console bool) error {
	if err := mountIn(rootFD, "/dev", "tmpfs", "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=0755,size=64k"); err != nil {
		return err
	}
	// Everything below goes through the new tmpfs by its fd: /dev of the
	// rootfs may be a symlink that, followed as a path, would lead out of
	// the container's root.
	devFD, err := openIn(rootFD, "/dev", unix.O_PATH|unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer unix.Close(devFD)
	dev := fdPath(devFD)
	for _, n := range devNodes {
		f, err := os.OpenFile(filepath.Join(dev, n), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o666)
		if err != nil {
			return fmt.Errorf("/dev/%s: %w", n, err)
		}
		f.Close()
		if err := bindFD("/dev/"+n, filepath.Join(dev, n), attrDev); err != nil {
			return fmt.Errorf("/dev/%s: %w", n, err)
		}
	}
	for _, d := range []string{"pts", "shm", "mqueue"} {
		if err := os.Mkdir(filepath.Join(dev, d), 0o755); err != nil {
			return fmt.Errorf("/dev/%s: %w", d, err)
		}
	}
	if err := unix.Mount("devpts", filepath.Join(dev, "pts"), "devpts", unix.MS_NOSUID|unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"); err != nil {
		return fmt.Errorf("mount devpts: %w", err)
	}
	if err := unix.Mount("shm", filepath.Join(dev, "shm"), "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777"); err != nil {
		return fmt.Errorf("mount /dev/shm: %w", err)
	}
	if err := unix.Mount("mqueue", filepath.Join(dev, "mqueue"), "mqueue", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /dev/mqueue: %w", err)
	}
	// The container's console: its init binds a terminal here.
	if console {
		f, err := os.OpenFile(filepath.Join(dev, "console"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("/dev/console: %w", err)
		}
		f.Close()
	}
	links := [][2]string{{"pts/ptmx", "ptmx"}, {"/proc/self/fd", "fd"}, {"/proc/self/fd/0", "stdin"}, {"/proc/self/fd/1", "stdout"}, {"/proc/self/fd/2", "stderr"}}
	for _, l := range links {
		if err := os.Symlink(l[0], filepath.Join(dev, l[1])); err != nil {
			return fmt.Errorf("/dev/%s: %w", l[1], err)
		}
	}
	return unix.Mount("", dev, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NOEXEC, "")
}

// protectProc masks MaskedProc and makes ReadOnlyProc read-only. A mask
// that cannot be applied fails the start (fail closed).
func protectProc(rootFD int, devNull string) error {
	for _, name := range MaskedProc {
		fd, err := openIn(rootFD, "/proc/"+name, unix.O_PATH)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("mask: %w", err)
		}
		var st unix.Stat_t
		err = unix.Fstat(fd, &st)
		if err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			err = unix.Mount("tmpfs", fdPath(fd), "tmpfs", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=0")
		} else if err == nil {
			err = unix.Mount(devNull, fdPath(fd), "", unix.MS_BIND, "")
		}
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("mask /proc/%s: %w", name, err)
		}
	}
	for _, name := range ReadOnlyProc {
		fd, err := openIn(rootFD, "/proc/"+name, unix.O_PATH|unix.O_DIRECTORY)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read-only: %w", err)
		}
		err = readOnlyInPlace(fd)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("read-only /proc/%s: %w", name, err)
		}
	}
	return nil
}

// readOnlyInPlace covers the directory at fd with a read-only copy of
// itself: clone it detached, set the attributes, attach it on the original.
func readOnlyInPlace(fd int) error {
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return fmt.Errorf("open_tree: %w", err)
	}
	defer unix.Close(tree)
	attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC}
	if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH|unix.AT_RECURSIVE, &attr); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	if err := unix.MoveMount(tree, "", fd, "", unix.MOVE_MOUNT_F_EMPTY_PATH|unix.MOVE_MOUNT_T_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// pivot makes root the root of this mount namespace and detaches the old
// one. pivot_root(".", ".") stacks the old root on the new one, so a
// read-only root needs no directory to hold it.
func pivot(root string) error {
	if err := unix.Chdir(root); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the old root: %w", err)
	}
	return unix.Chdir("/")
}
