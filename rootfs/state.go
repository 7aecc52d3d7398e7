// Package rootfs is where a container's root comes from and the state an
// init keeps for each of its user containers: the overlay's upper layer
// (what the user changed in their view of the system), its work directory,
// the home, and the container's own nest directories, all under
// StateRoot/NAME on the parent's side.
package rootfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// StateRoot holds one directory per user container of an init.
const StateRoot = "/var/lib/nest"

// The entries of a container's state directory. Each is owned by the
// container's root; the directory itself stays the parent's (mode 0711),
// so the container can never swap an entry for a symlink that the parent
// would then follow.
const (
	Upper = "upper" // the overlay's upper layer: the container's changes
	Work  = "work"  // the overlay's work directory
	Home  = "home"  // bound at /home/USER; kept by reset and rm
	Etc   = "etc"   // bound at /etc/nest: the container's own config
	Lib   = "lib"   // bound at /var/lib/nest: state of its own children
	Log   = "log"   // bound at /var/log/nest: logs of its own units
)

// entries are the state entries, in the order Prepare makes them.
var entries = []string{Upper, Work, Home, Etc, Lib, Log}

// State is the state directory of one container.
type State struct {
	Dir string // StateRoot/NAME
}

// StateOf returns the state of container name of the init whose state
// root is root ("" means StateRoot).
func StateOf(root, name string) State {
	if root == "" {
		root = StateRoot
	}
	return State{Dir: filepath.Join(root, name)}
}

// Path returns the path of one entry.
func (s State) Path(entry string) string { return filepath.Join(s.Dir, entry) }

// Prepare makes the state directory and every entry that is missing,
// entries owned by uid (the container's root as the parent sees it). An
// entry that exists is left as it is, whatever the container put there.
func (s State) Prepare(uid int) error {
	if err := os.MkdirAll(filepath.Dir(s.Dir), 0o755); err != nil {
		return fmt.Errorf("state of %s: %w", filepath.Base(s.Dir), err)
	}
	if err := os.Mkdir(s.Dir, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("state of %s: %w", filepath.Base(s.Dir), err)
	}
	dir, err := unix.Open(s.Dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("state of %s: %w", filepath.Base(s.Dir), err)
	}
	defer unix.Close(dir)
	var st unix.Stat_t
	if err := unix.Fstat(dir, &st); err != nil {
		return fmt.Errorf("state %s: %w", s.Dir, err)
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("state %s: owned by uid %d, not by this init: refusing to use it", s.Dir, st.Uid)
	}
	for _, e := range entries {
		err := unix.Mkdirat(dir, e, 0o755)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err == nil {
			err = unix.Fchownat(dir, e, uid, uid, unix.AT_SYMLINK_NOFOLLOW)
		}
		if err != nil {
			return fmt.Errorf("state %s: %w", s.Path(e), err)
		}
	}
	return nil
}

// Reset drops what the container changed in its view of the system (the
// upper and work directories) and keeps its home and its own nest
// directories. The container must not be running.
func (s State) Reset() error {
	return s.remove(Upper, Work)
}

// Remove deletes the state of a removed container; the home stays unless
// purge, and then the directory goes too.
func (s State) Remove(purge bool) error {
	if err := s.remove(Upper, Work, Etc, Lib, Log); err != nil {
		return err
	}
	if !purge {
		return nil
	}
	if err := s.remove(Home); err != nil {
		return err
	}
	if err := os.Remove(s.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", s.Dir, err)
	}
	return nil
}

// remove deletes entries. os.RemoveAll never follows a symlink the
// container may have left inside them.
func (s State) remove(names ...string) error {
	for _, n := range names {
		if err := os.RemoveAll(s.Path(n)); err != nil {
			return fmt.Errorf("remove %s: %w", s.Path(n), err)
		}
	}
	return nil
}
