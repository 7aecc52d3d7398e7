package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/u-root/u-root/pkg/cpio"
	"github.com/ulikunitz/xz"
)

// Image is an initramfs under construction. The zero value is ready to use. The Add methods never fail on
// the spot: the first problem (a missing host file, a file where a
// directory is needed) is kept and returned by WriteCPIO, so building an
// image reads as a plain list of Add calls.
//
// Parent directories are created as needed (mode 0755). Adding a path
// twice keeps the last version. Every image gets /dev/console and the
// usual top-level directories.
type Image struct {
	entries map[string]*entry // key: cleaned path without leading '/'
	err     error

	// Modules added by AddModules, for the generated modules.dep.
	kernel  *Kernel
	modules []Module

	// XZModules names modules that AddModules ships compressed as .ko.xz,
	// the way most distributions (not Debian) ship them, so that a test
	// proves the loader decompresses them.
	XZModules []string
}

type entryKind int

const (
	kindDir entryKind = iota
	kindFile
	kindBytes
	kindSymlink
	kindCharDev
)

type entry struct {
	kind         entryKind
	mode         uint64 // Unix permission bits, including 07000
	host         string // kindFile: host path
	data         []byte // kindBytes: contents; kindSymlink: target
	size         int64  // kindFile: size when added
	major, minor uint64 // kindCharDev
}

// NewImage returns an empty image; it is the same as new(Image).
func NewImage() *Image { return new(Image) }

// init adds the skeleton every nest guest expects: /dev/console (5,1),
// /dev, /proc, /sys, /run, /tmp and /etc.
func (img *Image) init() {
	img.entries = map[string]*entry{}
	for _, d := range []string{"/dev", "/proc", "/sys", "/run", "/etc"} {
		img.AddDir(d, 0o755)
	}
	img.AddDir("/tmp", os.ModeSticky|0o777)
	// The kernel opens /dev/console for PID 1's stdin/stdout/stderr before
	// devtmpfs is mounted; without the node init starts with no console.
	img.add("/dev/console", &entry{kind: kindCharDev, mode: 0o600, major: 5, minor: 1})
}

// Err reports the first error recorded by an Add method, if any.
func (img *Image) Err() error { return img.err }

func (img *Image) fail(err error) {
	if img.err == nil {
		img.err = err
	}
}

// cleanGuestPath turns "/bin/sh" or "bin/sh" into "bin/sh".
func cleanGuestPath(p string) (string, error) {
	c := strings.TrimLeft(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("image path %q: the root directory cannot be added", p)
	}
	return c, nil
}

func (img *Image) add(guestPath string, e *entry) {
	if img.entries == nil {
		img.init()
	}
	p, err := cleanGuestPath(guestPath)
	if err != nil {
		img.fail(err)
		return
	}
	// Create the parents; they must not already be something else.
	for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
		old, ok := img.entries[dir]
		if !ok {
			img.entries[dir] = &entry{kind: kindDir, mode: 0o755}
			continue
		}
		if old.kind != kindDir {
			img.fail(fmt.Errorf("image path /%s: parent /%s is not a directory", p, dir))
			return
		}
	}
	if old, ok := img.entries[p]; ok && old.kind == kindDir && e.kind != kindDir && img.hasChildren(p) {
		img.fail(fmt.Errorf("image path /%s: already a non-empty directory", p))
		return
	}
	img.entries[p] = e
}

func (img *Image) hasChildren(dir string) bool {
	prefix := dir + "/"
	for p := range img.entries {
		if strings.HasPrefix(p, prefix) {
			return true
		}
	}
	return false
}

// unixPerm turns an os.FileMode into Unix permission bits. Both spellings
// of the special bits work: os.ModeSticky|0o777 and 0o1777.
func unixPerm(m os.FileMode) uint64 {
	p := uint64(m & 0o7777)
	if m&os.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&os.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&os.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

// AddDir adds a directory with the given permission bits.
func (img *Image) AddDir(guestPath string, mode os.FileMode) {
	img.add(guestPath, &entry{kind: kindDir, mode: unixPerm(mode)})
}

// AddFile adds the host file hostPath (following symlinks) at guestPath.
// A zero mode takes the host file's permission bits. The contents are read
// when the image is written.
func (img *Image) AddFile(guestPath, hostPath string, mode os.FileMode) {
	fi, err := os.Stat(hostPath)
	if err != nil {
		img.fail(fmt.Errorf("image file %s: %w", guestPath, err))
		return
	}
	if !fi.Mode().IsRegular() {
		img.fail(fmt.Errorf("image file %s: host %s is not a regular file", guestPath, hostPath))
		return
	}
	if mode == 0 {
		mode = fi.Mode()
	}
	img.add(guestPath, &entry{kind: kindFile, mode: unixPerm(mode), host: hostPath, size: fi.Size()})
}

// AddBytes adds a file with the given contents.
func (img *Image) AddBytes(guestPath string, data []byte, mode os.FileMode) {
	img.add(guestPath, &entry{kind: kindBytes, mode: unixPerm(mode), data: data})
}

// AddSymlink adds a symbolic link at guestPath pointing to target.
func (img *Image) AddSymlink(guestPath, target string) {
	img.add(guestPath, &entry{kind: kindSymlink, mode: 0o777, data: []byte(target)})
}

// AddCharDev adds a character device node.
func (img *Image) AddCharDev(guestPath string, mode os.FileMode, major, minor uint64) {
	img.add(guestPath, &entry{kind: kindCharDev, mode: unixPerm(mode), major: major, minor: minor})
}

// Paths lists the image's paths, sorted, each with a leading '/'.
func (img *Image) Paths() []string {
	if img.entries == nil {
		img.init()
	}
	ps := make([]string, 0, len(img.entries))
	for p := range img.entries {
		ps = append(ps, "/"+p)
	}
	sort.Strings(ps)
	return ps
}

// WriteCPIO writes the image to path as an uncompressed newc cpio archive,
// the format the kernel unpacks into its rootfs. Uncompressed because gzip
// costs 0.3 s per image and boots no faster under TCG. The output is
// reproducible: records are sorted (a parent always sorts before its
// children), mtimes and owners are zero and inode numbers sequential.
func (img *Image) WriteCPIO(outPath string) (err error) {
	if img.err != nil {
		return fmt.Errorf("write initramfs %s: %w", outPath, img.err)
	}
	f, err := os.Create(outPath)
	if err != nil {
		return fmt.Errorf("write initramfs: %w", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write initramfs: %w", cerr)
		}
		if err != nil {
			os.Remove(outPath)
		}
	}()
	// The cpio writer issues several tiny writes per record.
	bw := bufio.NewWriterSize(f, 1<<20)
	w := cpio.Newc.Writer(bw)
	var lazies []*lazyFile
	defer func() {
		for _, l := range lazies {
			l.Close()
		}
	}()
	for i, gp := range img.Paths() {
		p := gp[1:]
		e := img.entries[p]
		info := cpio.Info{Name: p, Ino: uint64(i + 1), NLink: 1, Mode: e.mode}
		rec := cpio.Record{Info: info}
		switch e.kind {
		case kindDir:
			rec.Mode |= cpio.S_IFDIR
			rec.NLink = 2
		case kindFile:
			l := &lazyFile{path: e.host}
			lazies = append(lazies, l)
			rec.Mode |= cpio.S_IFREG
			rec.ReaderAt = l
			rec.FileSize = uint64(e.size)
		case kindBytes:
			rec = cpio.StaticRecord(e.data, rec.Info)
			rec.Mode |= cpio.S_IFREG
		case kindSymlink:
			rec = cpio.StaticRecord(e.data, rec.Info)
			rec.Mode |= cpio.S_IFLNK
		case kindCharDev:
			rec.Mode |= cpio.S_IFCHR
			rec.Rmajor, rec.Rminor = e.major, e.minor
		}
		if err := w.WriteRecord(rec); err != nil {
			return fmt.Errorf("write initramfs %s: %s: %w", outPath, gp, err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return fmt.Errorf("write initramfs %s: %w", outPath, err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write initramfs %s: %w", outPath, err)
	}
	return nil
}

// lazyFile opens its host file on first read, so an image with hundreds
// of files never holds hundreds of descriptors. The cpio writer closes it
// after copying.
type lazyFile struct {
	path string
	f    *os.File
}

func (l *lazyFile) ReadAt(p []byte, off int64) (int, error) {
	if l.f == nil {
		f, err := os.Open(l.path)
		if err != nil {
			return 0, err
		}
		l.f = f
	}
	return l.f.ReadAt(p, off)
}

func (l *lazyFile) Close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// AddModules copies the closure of names (see Kernel.ModuleClosure) to
// /lib/modules/VERSION/ under the same relative paths and (re)writes that
// dir's metadata so a loader reading /lib/modules/$(uname -r)/modules.dep
// in the guest works: a modules.dep listing exactly the copied modules,
// modules.alias filtered to them, and modules.builtin,
// modules.builtin.modinfo and modules.softdep as they are. It can be called
// several times; the metadata covers every module added so far.
func (img *Image) AddModules(k *Kernel, names ...string) error {
	if img.kernel != nil && img.kernel.Version != k.Version {
		return fmt.Errorf("add modules: image already has modules of kernel %s, not %s", img.kernel.Version, k.Version)
	}
	mods, err := k.ModuleClosure(names...)
	if err != nil {
		return fmt.Errorf("add modules: %w", err)
	}
	img.kernel = k
	have := map[string]bool{}
	for _, m := range img.modules {
		have[m.Name] = true
	}
	guestDir := "/lib/modules/" + k.Version
	xzRel := map[string]string{} // RelPath -> compressed RelPath
	for _, m := range mods {
		if slices.Contains(img.XZModules, m.Name) && strings.HasSuffix(m.RelPath, ".ko") {
			xzRel[m.RelPath] = m.RelPath + ".xz"
		}
	}
	for _, m := range mods {
		if have[m.Name] {
			continue
		}
		have[m.Name] = true
		if rel, ok := xzRel[m.RelPath]; ok {
			data, err := xzFile(m.Path)
			if err != nil {
				return fmt.Errorf("add modules: %w", err)
			}
			img.AddBytes(path.Join(guestDir, filepath.ToSlash(rel)), data, 0o644)
			m.RelPath = rel
		} else {
			img.AddFile(path.Join(guestDir, filepath.ToSlash(m.RelPath)), m.Path, 0o644)
		}
		deps := make([]string, len(m.Deps))
		for i, d := range m.Deps {
			deps[i] = d
			if rel, ok := xzRel[d]; ok {
				deps[i] = rel
			}
		}
		m.Deps = deps
		img.modules = append(img.modules, m)
	}
	img.AddDir(guestDir, 0o755) // even when everything asked for is built in

	var dep strings.Builder
	for _, m := range img.modules {
		fmt.Fprintf(&dep, "%s:", m.RelPath)
		for _, d := range m.Deps {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteByte('\n')
	}
	img.AddBytes(guestDir+"/modules.dep", []byte(dep.String()), 0o644)

	for _, name := range []string{"modules.builtin", "modules.builtin.modinfo", "modules.softdep"} {
		host := filepath.Join(k.ModulesDir, name)
		if _, err := os.Stat(host); err == nil {
			img.AddFile(guestDir+"/"+name, host, 0o644)
		}
	}

	alias, err := filterAliases(filepath.Join(k.ModulesDir, "modules.alias"), have)
	if err != nil {
		return fmt.Errorf("add modules: %w", err)
	}
	if alias != nil {
		img.AddBytes(guestDir+"/modules.alias", alias, 0o644)
	}
	return img.err
}

// filterAliases keeps the alias lines of modules.alias whose module is in
// keep; the whole file is 1.3 MB for a Debian kernel. A missing file
// yields nil.
func filterAliases(hostPath string, keep map[string]bool) ([]byte, error) {
	var b strings.Builder
	err := eachLine(hostPath, func(line string) error {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "alias" && keep[modName(f[2])] {
			b.WriteString(line)
			b.WriteByte('\n')
		}
		return nil
	})
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return []byte(b.String()), nil
}

// The cpio writer reads through io.ReaderAt and closes io.Closers.
var _ interface {
	io.ReaderAt
	io.Closer
} = (*lazyFile)(nil)

// xzFile returns the file at path compressed with xz.
func xzFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	w, err := xz.NewWriter(&buf)
	if err != nil {
		return nil, fmt.Errorf("xz %s: %w", path, err)
	}
	if _, err := w.Write(data); err != nil {
		return nil, fmt.Errorf("xz %s: %w", path, err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("xz %s: %w", path, err)
	}
	return buf.Bytes(), nil
}

// WriteDir writes the image's files into the host directory dir (which
// must exist), for a disk image made with NewExt4ImageFrom: the same tree
// a guest gets as its initramfs, here as a file system of its own.
// Character devices are left out (a disk's /dev is mounted over).
func (img *Image) WriteDir(dir string) error {
	if img.err != nil {
		return fmt.Errorf("write %s: %w", dir, img.err)
	}
	for _, gp := range img.Paths() {
		e := img.entries[gp[1:]]
		p := filepath.Join(dir, gp)
		var err error
		switch e.kind {
		case kindDir:
			if err = os.MkdirAll(p, 0o755); err == nil {
				err = os.Chmod(p, os.FileMode(e.mode&0o777)|modeBits(e.mode))
			}
		case kindFile:
			var data []byte
			if data, err = os.ReadFile(e.host); err == nil {
				err = os.WriteFile(p, data, os.FileMode(e.mode&0o777))
			}
		case kindBytes:
			err = os.WriteFile(p, e.data, os.FileMode(e.mode&0o777))
		case kindSymlink:
			err = os.Symlink(string(e.data), p)
		}
		if err != nil {
			return fmt.Errorf("write %s: %s: %w", dir, gp, err)
		}
	}
	return nil
}

// modeBits turns the sticky, setuid and setgid bits of Unix permission
// bits into os.FileMode's.
func modeBits(m uint64) os.FileMode {
	var out os.FileMode
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	return out
}
