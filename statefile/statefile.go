// Package statefile keeps the small files an init persists (id ranges,
// network leases): replaced atomically, changed under a file lock. It
// never interprets what the files hold.
package statefile

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Write replaces path with data so that a reader, or a crash, sees the old
// file or the new one and never a mix: a temp file in the same directory,
// renamed over path. durable makes the new file survive a crash too
// (fsync of the file before the rename and of the directory after).
func Write(path string, data []byte, durable bool) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if !durable {
		return nil
	}
	// The rename is durable only once the directory is.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock takes an exclusive flock(2) of path (created if missing), blocking
// until it is free. flock belongs to the open file description, so two
// Locks in one process exclude each other as two processes do.
func Lock(path string) (unlock func(), err error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	for {
		if err = unix.Flock(fd, unix.LOCK_EX); err != unix.EINTR {
			break
		}
	}
	if err != nil {
		unix.Close(fd)
		return nil, &os.PathError{Op: "flock", Path: path, Err: err}
	}
	return func() { unix.Close(fd) }, nil
}
