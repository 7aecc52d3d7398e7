package vmtest

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/xi2/xz"
)

// Kernel is a host kernel prepared for booting under QEMU.
type Kernel struct {
	// Version is the kernel release, as uname -r prints it in the guest.
	Version string
	// Vmlinux is the uncompressed ELF kernel. QEMU boots it through the
	// PVH entry point, which skips SeaBIOS and the in-guest xz
	// decompression (about 2.6 s under TCG).
	Vmlinux string
	// ModulesDir is /lib/modules/VERSION on the host.
	ModulesDir string

	dbOnce sync.Once
	db     *moduleDB
	dbErr  error
}

// Default host locations; variables so tests can point them elsewhere.
var (
	bootDir    = "/boot"
	modulesDir = "/lib/modules"
)

// FindKernel picks the newest /boot/vmlinuz-* that has a matching
// /lib/modules/VERSION/modules.dep, and extracts (or reuses) its vmlinux in
// the user's cache directory.
func FindKernel() (*Kernel, error) {
	cache, err := cacheDir()
	if err != nil {
		return nil, err
	}
	return findKernel(bootDir, modulesDir, cache)
}

func findKernel(boot, mods, cache string) (*Kernel, error) {
	images, err := filepath.Glob(filepath.Join(boot, "vmlinuz-*"))
	if err != nil {
		return nil, fmt.Errorf("find kernel: %w", err)
	}
	if len(images) == 0 {
		return nil, fmt.Errorf("no kernel in %s: run make deps", boot)
	}
	var versions []string
	for _, img := range images {
		v := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		if _, err := os.Stat(filepath.Join(mods, v, "modules.dep")); err == nil {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return nil, fmt.Errorf("no kernel in %s has %s/VERSION/modules.dep (found %s): run make deps",
			boot, mods, strings.Join(images, ", "))
	}
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	v := versions[len(versions)-1]
	vmlinux, err := cachedVmlinux(filepath.Join(boot, "vmlinuz-"+v), v, cache)
	if err != nil {
		return nil, err
	}
	return &Kernel{Version: v, Vmlinux: vmlinux, ModulesDir: filepath.Join(mods, v)}, nil
}

// cacheDir is $XDG_CACHE_HOME/nest or ~/.cache/nest.
func cacheDir() (string, error) {
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("kernel cache dir: %w", err)
	}
	return filepath.Join(base, "nest"), nil
}

// versionLess orders kernel releases so that 6.10 sorts after 6.9: runs of
// digits compare as numbers, everything else byte-wise.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		ca, ra := versionChunk(a)
		cb, rb := versionChunk(b)
		if ca != cb {
			na, errA := strconv.Atoi(ca)
			nb, errB := strconv.Atoi(cb)
			if errA == nil && errB == nil && na != nb {
				return na < nb
			}
			return ca < cb
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

func versionChunk(s string) (chunk, rest string) {
	digit := s[0] >= '0' && s[0] <= '9'
	i := 1
	for i < len(s) && (s[i] >= '0' && s[i] <= '9') == digit {
		i++
	}
	return s[:i], s[i:]
}

// cachedVmlinux returns the cache path of bzImage's vmlinux, extracting it
// first if it is not there. The name includes a hash of the bzImage, so a
// kernel update with an unchanged version string still re-extracts.
func cachedVmlinux(bzImage, version, cache string) (string, error) {
	data, err := os.ReadFile(bzImage)
	if err != nil {
		return "", fmt.Errorf("read kernel: %w", err)
	}
	sum := sha256.Sum256(data)
	out := filepath.Join(cache, "vmlinux-"+version+"-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	// Temp file + rename: parallel test processes may race to extract, and
	// a reader must never see a half-written vmlinux.
	tmp, err := os.CreateTemp(cache, ".vmlinux-*")
	if err != nil {
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := ExtractVmlinux(bytes.NewReader(data), tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("extract vmlinux from %s: %w", bzImage, err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil { // CreateTemp makes it 0600
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return "", fmt.Errorf("kernel cache: %w", err)
	}
	return out, nil
}

// xzMagic starts every xz stream.
var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// ExtractVmlinux writes the uncompressed ELF kernel contained in an x86
// bzImage to w. Only xz-compressed kernels (Debian's) are supported; the
// kernel's xz stream uses the x86 BCJ filter, which is why this uses
// github.com/xi2/xz and not ulikunitz/xz.
func ExtractVmlinux(bzImage io.ReaderAt, w io.Writer) error {
	payload, err := bzPayload(bzImage)
	if err != nil {
		return err
	}
	zr, err := xz.NewReader(payload, 0)
	if err != nil {
		return fmt.Errorf("xz payload: %w", err)
	}
	// The build appends the uncompressed size after the stream; stop at
	// the end of the first stream instead of parsing that as padding.
	zr.Multistream(false)
	hw := &headWriter{w: w}
	if _, err := io.Copy(hw, zr); err != nil {
		return fmt.Errorf("xz payload: %w", err)
	}
	if !bytes.HasPrefix(hw.head, []byte(elf.ELFMAG)) {
		return errors.New("decompressed payload is not an ELF file")
	}
	return nil
}

// bzPayload locates the compressed kernel inside a bzImage, preferring the
// boot protocol header (2.08+) and falling back to scanning for the xz
// magic in the first 1 MiB.
func bzPayload(r io.ReaderAt) (io.Reader, error) {
	hdr := make([]byte, 0x250)
	if _, err := r.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("read bzImage header: %w", err)
	}
	if string(hdr[0x202:0x206]) == "HdrS" && binary.LittleEndian.Uint16(hdr[0x206:]) >= 0x208 {
		setupSects := int64(hdr[0x1f1])
		if setupSects == 0 {
			setupSects = 4
		}
		off := (setupSects+1)*512 + int64(binary.LittleEndian.Uint32(hdr[0x248:]))
		size := int64(binary.LittleEndian.Uint32(hdr[0x24c:]))
		magic := make([]byte, len(xzMagic))
		if _, err := r.ReadAt(magic, off); err == nil {
			if bytes.Equal(magic, xzMagic) {
				return io.NewSectionReader(r, off, size), nil
			}
			return nil, fmt.Errorf("kernel payload at %#x is not xz-compressed (magic %x)", off, magic)
		}
	}
	head := make([]byte, 1<<20)
	n, err := r.ReadAt(head, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("read bzImage: %w", err)
	}
	off := bytes.Index(head[:n], xzMagic)
	if off < 0 {
		return nil, errors.New("no xz stream in bzImage")
	}
	return io.NewSectionReader(r, int64(off), 1<<40), nil
}

// headWriter passes writes through and remembers the first bytes, so the
// result can be checked without reading the output back.
type headWriter struct {
	w    io.Writer
	head []byte
}

func (h *headWriter) Write(p []byte) (int, error) {
	if len(h.head) < 4 {
		h.head = append(h.head, p[:min(len(p), 4-len(h.head))]...)
	}
	return h.w.Write(p)
}
