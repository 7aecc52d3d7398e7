package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// DirFor returns the containers.d of an init whose config file is path:
// the directory beside it (/etc/nest/containers.d for /etc/nest/nest.toml).
func DirFor(path string) string {
	return filepath.Join(filepath.Dir(path), "containers.d")
}

// FileFor returns the file of container name in the containers.d dir.
func FileFor(dir, name string) string { return filepath.Join(dir, name+".toml") }

// NewContainer is what `nest create` says about a new container; every
// other key takes its default. Strings are as the config writes them
// (Memory "512M"); "" leaves a key out.
type NewContainer struct {
	Kind    string
	Rootfs  string
	Binds   []Bind
	Network string
	Memory  string
	Pids    int64    // 0: no limit
	Exec    []string // a daemon's command
}

// FormatContainer writes n as a containers.d file, with the newest
// sandbox level written out (SandboxLevel), so that the hardening of a
// later release never changes what this file means. Strings must be
// valid UTF-8.
func FormatContainer(n NewContainer) ([]byte, error) {
	all := append([]string{n.Kind, n.Rootfs, n.Network, n.Memory}, n.Exec...)
	for _, bd := range n.Binds {
		all = append(all, bd.Source, bd.Target)
	}
	for _, v := range all {
		if !utf8.ValidString(v) {
			return nil, fmt.Errorf("%q is not valid UTF-8", v)
		}
	}
	var b strings.Builder
	b.WriteString("# Written by nest create. Edit it and run nest reload, or remove it with nest rm.\n")
	str := func(key, v string) {
		if v != "" {
			fmt.Fprintf(&b, "%s = %s\n", key, tomlString(v))
		}
	}
	str("kind", n.Kind)
	fmt.Fprintf(&b, "level = %d\n", SandboxLevel)
	str("rootfs", n.Rootfs)
	str("network", n.Network)
	str("memory", n.Memory)
	if n.Pids != 0 {
		fmt.Fprintf(&b, "pids = %d\n", n.Pids)
	}
	if len(n.Exec) > 0 {
		q := make([]string, len(n.Exec))
		for i, a := range n.Exec {
			q[i] = tomlString(a)
		}
		fmt.Fprintf(&b, "exec = [%s]\n", strings.Join(q, ", "))
	}
	if len(n.Binds) > 0 {
		q := make([]string, len(n.Binds))
		for i, bd := range n.Binds {
			t := "source = " + tomlString(bd.Source)
			if bd.Target != bd.Source {
				t += ", target = " + tomlString(bd.Target)
			}
			if bd.Writable {
				t += ", writable = true"
			}
			q[i] = "{ " + t + " }"
		}
		fmt.Fprintf(&b, "bind = [%s]\n", strings.Join(q, ", "))
	}
	return []byte(b.String()), nil
}

// tomlString quotes s as a TOML basic string: Go's strconv.Quote would
// write escapes TOML does not have (\x00, \a, \v).
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// ParseNew formats n as the file of container name and parses it back, as
// the file will be read: the one validation of a file and of `nest
// create` (then CheckPaths). Errors say what is wrong without a line and
// column, since the file does not exist yet. The container's File is
// file.
func ParseNew(name, file string, n NewContainer) (*Container, []byte, error) {
	data, err := FormatContainer(n)
	if err != nil {
		return nil, nil, err
	}
	c, err := ParseContainer(name, file, data)
	if err != nil {
		return nil, nil, Unplaced(err)
	}
	// The positions are those of the formatted text: drop them.
	c.ix = nil
	return c, data, nil
}

// Unplaced returns err with the places (file, line, column) of its
// *Error values removed: the message alone, for a config that was not
// written by the person who reads the message (`nest create` flags).
func Unplaced(err error) error {
	if e, ok := err.(*Error); ok {
		return errors.New(e.Msg)
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var list []error
		for _, x := range j.Unwrap() {
			list = append(list, Unplaced(x))
		}
		return errors.Join(list...)
	}
	return err
}

// Place is where the container is defined: FILE:LINE:COL of its table
// header in nest.toml, or its containers.d file.
func (c *Container) Place() string {
	line, col := c.ix.pos(true, c.at)
	if line == 0 {
		return c.File
	}
	return fmt.Sprintf("%s:%d:%d", c.File, line, col)
}

// Steps of WriteFile, for a test that crashes it between them.
const (
	stepTemp      = "temp"       // the temporary file exists, empty
	stepWritten   = "written"    // it holds the data
	stepSynced    = "synced"     // and is on disk
	stepRenamed   = "renamed"    // it has its name
	stepDirSynced = "dir-synced" // and the name is on disk
)

// crashPoint, set by tests, is called after each step of WriteFile and
// RemoveFile; an error ends the write there as a crash would (nothing is
// cleaned up).
var crashPoint func(step string) error

func crash(step string) error {
	if crashPoint == nil {
		return nil
	}
	return crashPoint(step)
}

// WriteFile creates the file name in dir with data, atomically and
// durably: a temporary file in dir, fsync, a rename that never replaces
// an existing file (renameat2 RENAME_NOREPLACE, or link(2) where the file
// system lacks it), fsync of dir. A crash at any point leaves either no
// file or the whole new one, never a part; the temporary file it may
// leave starts with '.' and does not end in .toml (LoadDir ignores it,
// and the next WriteFile of the same name removes it). An existing file
// is an error matching fs.ErrExist.
func WriteFile(dir, name string, data []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	dirfd := int(d.Fd())
	prefix := "." + name + ".tmp"
	removeTemps(dir, prefix)

	f, err := os.CreateTemp(dir, prefix)
	if err != nil {
		return err
	}
	tmp := filepath.Base(f.Name())
	fail := func(err error) error {
		f.Close()
		unix.Unlinkat(dirfd, tmp, 0)
		return err
	}
	if err := crash(stepTemp); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := crash(stepWritten); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := crash(stepSynced); err != nil {
		return err
	}
	if err := renameNoReplace(dirfd, tmp, name); err != nil {
		unix.Unlinkat(dirfd, tmp, 0)
		return &os.LinkError{Op: "rename", Old: filepath.Join(dir, tmp), New: filepath.Join(dir, name), Err: err}
	}
	if err := crash(stepRenamed); err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return crash(stepDirSynced)
}

// renameNoReplace gives tmp the name name in dirfd unless name exists
// (EEXIST).
func renameNoReplace(dirfd int, tmp, name string) error {
	err := unix.Renameat2(dirfd, tmp, dirfd, name, unix.RENAME_NOREPLACE)
	if err != unix.EINVAL && err != unix.ENOSYS {
		return err
	}
	// A file system without RENAME_NOREPLACE: link(2) never replaces
	// either; then the temporary name goes.
	if err := unix.Linkat(dirfd, tmp, dirfd, name, 0); err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, tmp, 0)
}

// removeTemps removes what a crashed WriteFile of the same name left.
func removeTemps(dir, prefix string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// RemoveFile removes the file name of dir durably: unlink, then fsync of
// dir. A file that does not exist is an error matching fs.ErrNotExist.
func RemoveFile(dir, name string) error {
	if err := os.Remove(filepath.Join(dir, name)); err != nil {
		return err
	}
	if err := crash(stepRenamed); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
