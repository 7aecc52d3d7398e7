package vmtest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Module is one loadable kernel module of a Kernel.
type Module struct {
	// Name is the canonical module name ('-' spelled '_'), e.g. "crc32c_intel".
	Name string
	// RelPath is the file's path relative to the modules dir, as
	// modules.dep spells it, e.g. "kernel/fs/ext4/ext4.ko".
	RelPath string
	// Path is the file on the host.
	Path string
	// Deps are the RelPaths modules.dep lists for this module, in its order.
	Deps []string
}

// moduleDB is the parsed metadata of one modules dir.
type moduleDB struct {
	dir      string
	byName   map[string]*Module // canonical name -> module
	builtin  map[string]bool    // canonical names from modules.builtin
	softPre  map[string][]string
	aliases  map[string][]string // exact (non-glob) alias -> module names
	aliasErr error
}

// modName turns "kernel/crypto/crc32c-intel.ko.xz" or "crc32c-intel" into
// "crc32c_intel": the kernel itself treats '-' and '_' as the same.
func modName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

func loadModuleDB(dir string) (*moduleDB, error) {
	db := &moduleDB{
		dir:     dir,
		byName:  map[string]*Module{},
		builtin: map[string]bool{},
		softPre: map[string][]string{},
	}
	err := eachLine(filepath.Join(dir, "modules.dep"), func(line string) error {
		file, deps, ok := strings.Cut(line, ":")
		if !ok {
			return fmt.Errorf("malformed line %q", line)
		}
		m := &Module{RelPath: db.rel(file), Name: modName(file)}
		m.Path = filepath.Join(dir, m.RelPath)
		for _, d := range strings.Fields(deps) {
			m.Deps = append(m.Deps, db.rel(d))
		}
		db.byName[m.Name] = m
		return nil
	})
	if err != nil {
		return nil, err
	}
	// modules.builtin and modules.softdep are optional: a custom kernel
	// may have no built-in modules and no soft dependencies.
	err = eachLine(filepath.Join(dir, "modules.builtin"), func(line string) error {
		db.builtin[modName(line)] = true
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	err = eachLine(filepath.Join(dir, "modules.softdep"), func(line string) error {
		// softdep MODULE pre: A B post: C
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "softdep" {
			return nil
		}
		name, pre := modName(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					db.softPre[name] = append(db.softPre[name], w)
				}
			}
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	return db, nil
}

// rel makes a modules.dep path relative; old depmods wrote absolute paths.
func (db *moduleDB) rel(p string) string {
	if filepath.IsAbs(p) {
		if r, err := filepath.Rel(db.dir, p); err == nil {
			return r
		}
	}
	return p
}

// eachLine calls fn for every non-empty, non-comment line of path. Errors
// are wrapped with the path; a missing file keeps os.IsNotExist true.
func eachLine(path string, fn func(string) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		if err := fn(line); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}

// loadAliases reads the exact aliases of modules.alias on first use: it is
// 1.3 MB and only needed for soft dependencies such as "crypto-crc32c".
func (db *moduleDB) loadAliases() error {
	if db.aliases != nil || db.aliasErr != nil {
		return db.aliasErr
	}
	db.aliases = map[string][]string{}
	err := eachLine(filepath.Join(db.dir, "modules.alias"), func(line string) error {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != "alias" || strings.ContainsAny(f[1], "*?[") {
			return nil
		}
		db.aliases[f[1]] = append(db.aliases[f[1]], modName(f[2]))
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		db.aliasErr = err
	}
	return db.aliasErr
}

// resolve maps a name to a module. found is false when the name is
// unknown; m is nil when it is built in. An alias with several providers
// picks the *_generic one: the others (crc32c_intel) need CPU features
// that TCG's default CPU lacks and fail with ENODEV.
func (db *moduleDB) resolve(name string) (m *Module, found bool, err error) {
	n := modName(name)
	if m, ok := db.byName[n]; ok {
		return m, true, nil
	}
	if db.builtin[n] {
		return nil, true, nil
	}
	if err := db.loadAliases(); err != nil {
		return nil, false, err
	}
	providers := db.aliases[name]
	if len(providers) == 0 {
		return nil, false, nil
	}
	pick := providers[0]
	for _, p := range providers {
		if strings.HasSuffix(p, "_generic") {
			pick = p
			break
		}
	}
	for _, p := range providers {
		if db.builtin[p] {
			return nil, true, nil // already in the kernel: nothing to load
		}
	}
	m, ok := db.byName[pick]
	return m, ok, nil
}

func (k *Kernel) moduleDB() (*moduleDB, error) {
	k.dbOnce.Do(func() {
		k.db, k.dbErr = loadModuleDB(k.ModulesDir)
		if k.dbErr != nil {
			k.dbErr = fmt.Errorf("kernel %s modules: %w", k.Version, k.dbErr)
		}
	})
	return k.db, k.dbErr
}

// ModuleClosure returns the modules needed to load names, in load order:
// every module comes after its modules.dep dependencies and its "pre:" soft
// dependencies (so ext4 brings crc32c_generic). Names may use '-' or '_'
// and may be aliases (crypto-crc32c). Built-in names contribute nothing;
// an unknown name is an error.
func (k *Kernel) ModuleClosure(names ...string) ([]Module, error) {
	db, err := k.moduleDB()
	if err != nil {
		return nil, err
	}
	return db.closure(names)
}

func (db *moduleDB) closure(names []string) ([]Module, error) {
	var out []Module
	done := map[string]bool{}
	var visit func(m *Module) error
	visit = func(m *Module) error {
		if done[m.Name] {
			return nil
		}
		// Marking before recursing ends cycles (there are none in a sane
		// modules.dep, but a soft dependency could point back).
		done[m.Name] = true
		for _, s := range db.softPre[m.Name] {
			dep, _, err := db.resolve(s)
			if err != nil {
				return err
			}
			// Soft dependencies are best effort, as in modprobe: an
			// unresolvable one is skipped.
			if dep != nil {
				if err := visit(dep); err != nil {
					return err
				}
			}
		}
		// modprobe loads the last-listed dependency first.
		for i := len(m.Deps) - 1; i >= 0; i-- {
			dep, ok := db.byName[modName(m.Deps[i])]
			if !ok {
				return fmt.Errorf("%s: %s depends on %s, which modules.dep does not list", db.dir, m.Name, m.Deps[i])
			}
			if err := visit(dep); err != nil {
				return err
			}
		}
		out = append(out, *m)
		return nil
	}
	for _, n := range names {
		m, found, err := db.resolve(n)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("module %q not found in %s (modules.dep, modules.builtin, modules.alias)", n, db.dir)
		}
		if m == nil {
			continue
		}
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return out, nil
}
