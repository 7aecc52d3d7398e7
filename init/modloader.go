package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// Kernel features used here: finit_module (3.8), MODULE_INIT_COMPRESSED_FILE
// (5.17, and only with CONFIG_MODULE_DECOMPRESS).

// modLoader loads kernel modules of one module directory
// (/lib/modules/RELEASE) with their dependencies, each at most once.
//
// A plain .ko goes to finit_module(2). A compressed one (.ko.xz, .ko.zst,
// .ko.gz) goes to the kernel to decompress (MODULE_INIT_COMPRESSED_FILE);
// a kernel that cannot (Debian 12's has no CONFIG_MODULE_DECOMPRESS) gets
// a .ko.xz decompressed here. nest once used u-root's kmodule, which
// decompresses every format itself: its zstd and gzip decoders were 0.6 MB
// of the binary and their package initialisation (CRC tables) about 0.5 ms
// of every start of nest, container inits and `nest run` included.
type modLoader struct {
	dir     string
	paths   map[string]string   // module name -> path in modules.dep (relative to dir)
	deps    map[string][]string // path -> the paths it needs
	builtin map[string]bool     // module names built into the kernel
	done    map[string]error    // path -> the result of loading it
	// insmod loads one module file; tests replace it.
	insmod func(path string) error
}

// newModLoader reads dir's modules.dep and modules.builtin (which may be
// missing).
func newModLoader(dir string) (*modLoader, error) {
	l := &modLoader{dir: dir, paths: map[string]string{}, deps: map[string][]string{},
		builtin: map[string]bool{}, done: map[string]error{}, insmod: insmod}
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		path, deps, ok := strings.Cut(line, ":")
		if !ok || path == "" {
			return nil, fmt.Errorf("%s/modules.dep:%d: want PATH: DEPS, got %q", dir, n, line)
		}
		l.paths[moduleName(path)] = path
		l.deps[path] = strings.Fields(deps)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s/modules.dep: %w", dir, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "modules.builtin")); err == nil {
		for _, line := range strings.Fields(string(b)) {
			l.builtin[moduleName(line)] = true
		}
	}
	return l, nil
}

// moduleName is the kernel's name of a module file: its base name without
// .ko and a compression suffix, '-' spelled '_'.
func moduleName(path string) string {
	name := filepath.Base(path)
	if i := strings.Index(name, ".ko"); i >= 0 {
		name = name[:i]
	}
	return normalModule(name)
}

// load loads module name (in either spelling) after its dependencies. A
// built-in or already loaded module is no error.
func (l *modLoader) load(name string) error {
	n := normalModule(name)
	if l.builtin[n] {
		return nil
	}
	path, ok := l.paths[n]
	if !ok {
		return fmt.Errorf("not in %s/modules.dep", l.dir)
	}
	return l.loadPath(path, nil)
}

func (l *modLoader) loadPath(path string, stack []string) error {
	if err, ok := l.done[path]; ok {
		return err
	}
	if slices.Contains(stack, path) {
		return fmt.Errorf("dependency cycle: %s", strings.Join(append(stack, path), " -> "))
	}
	var err error
	for _, dep := range l.deps[path] {
		if l.builtin[moduleName(dep)] {
			continue
		}
		if err = l.loadPath(dep, append(stack, path)); err != nil {
			err = fmt.Errorf("needs %s: %w", moduleName(dep), err)
			break
		}
	}
	if err == nil {
		err = l.insmod(filepath.Join(l.dir, path))
	}
	l.done[path] = err
	return err
}

// insmod loads the module file at path; one that is loaded already is no
// error.
func insmod(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if strings.HasSuffix(path, ".ko") {
		err = unix.FinitModule(int(f.Fd()), "", 0)
	} else {
		err = unix.FinitModule(int(f.Fd()), "", unix.MODULE_INIT_COMPRESSED_FILE)
		// EINVAL: a kernel before 5.17; EOPNOTSUPP: one without
		// CONFIG_MODULE_DECOMPRESS.
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) {
			if !strings.HasSuffix(path, ".ko.xz") {
				return fmt.Errorf("%s: this kernel cannot decompress modules (CONFIG_MODULE_DECOMPRESS) and nest decompresses only .ko.xz: ship it as .ko or .ko.xz", path)
			}
			err = initXZ(f)
		}
	}
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// initXZ decompresses an xz-compressed module and loads the image.
func initXZ(f *os.File) error {
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	r, err := xz.NewReader(f)
	if err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	img, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("xz: %w", err)
	}
	return unix.InitModule(img, "")
}
