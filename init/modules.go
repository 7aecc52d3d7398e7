package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/mounts"
)

// loadModules loads each named module with its dependencies from
// /lib/modules/$(uname -r)/modules.dep (modloader.go). modules.softdep
// "pre:" entries, which modules.dep does not hold, are loaded first (ext4
// needs crc32c, which nothing can request_module() before udev exists). A
// module that is missing or fails is reported by name; boot goes on.
func (b *booter) loadModules(names []string) {
	// Those loaded already (by the initramfs before a switch to the disk
	// root, or built into the kernel) need no modules directory.
	var missing []string
	for _, n := range names {
		if _, err := os.Stat(filepath.Join("/sys/module", normalModule(n))); err != nil {
			missing = append(missing, n)
		}
	}
	names = missing
	if len(names) == 0 {
		return
	}
	start := time.Now()
	dir := moduleDir()
	loaded, failed := 0, 0
	defer func() {
		if r := recover(); r != nil {
			// A malformed modules.dep must not take PID 1 down.
			b.logf("modules: internal error reading %s: %v", dir, r)
		}
	}()
	l, err := newModLoader(dir)
	if err != nil {
		b.logf("modules: %v: cannot load %s", err, strings.Join(names, ", "))
		return
	}
	soft := readSoftdeps(dir)
	aliases := readAliases(dir)
	for _, name := range names {
		for _, pre := range soft[normalModule(name)] {
			// Every module providing the alias, as modprobe does: the
			// kernel picks the best one that works (crc32c_intel needs
			// SSE4.2 and passes its self-test or is not used;
			// crc32c_generic works everywhere). One that loads is enough.
			var errs []string
			cands := aliases.resolve(pre)
			for _, cand := range cands {
				if err := l.load(cand); err != nil {
					errs = append(errs, fmt.Sprintf("%s: %v", cand, err))
				}
			}
			if len(errs) == len(cands) {
				b.logf("module %s: its soft dependency %s: none loaded (%s)", name, pre, strings.Join(errs, "; "))
			}
		}
		if err := l.load(name); err != nil {
			b.logf("module %s: %v", name, err)
			failed++
			continue
		}
		loaded++
	}
	b.debugf("modules: %d loaded, %d failed in %s", loaded, failed, time.Since(start).Round(time.Millisecond))
}

func moduleDir() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "/lib/modules"
	}
	return filepath.Join("/lib/modules", unix.ByteSliceToString(u.Release[:]))
}

// normalModule spells a module name the way the kernel does ('-' is '_').
func normalModule(name string) string { return strings.ReplaceAll(name, "-", "_") }

// readSoftdeps reads "softdep MOD pre: A B post: C" lines; only pre matters.
func readSoftdeps(dir string) map[string][]string {
	out := make(map[string][]string)
	f, err := os.Open(filepath.Join(dir, "modules.softdep"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[0] != "softdep" {
			continue
		}
		mod := normalModule(fields[1])
		inPre := false
		for _, w := range fields[2:] {
			switch w {
			case "pre:":
				inPre = true
			case "post:":
				inPre = false
			default:
				if inPre {
					out[mod] = append(out[mod], w)
				}
			}
		}
	}
	return out
}

type aliasMap map[string][]string

// readAliases reads the plain "alias NAME MODULE" lines of modules.alias
// (no wildcards: those are for device ids).
func readAliases(dir string) aliasMap {
	out := make(aliasMap)
	f, err := os.Open(filepath.Join(dir, "modules.alias"))
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 3 || fields[0] != "alias" || strings.ContainsAny(fields[1], "*?[:") {
			continue
		}
		out[fields[1]] = append(out[fields[1]], fields[2])
	}
	return out
}

// resolve returns the modules that may provide name: the aliases' modules,
// then name itself.
func (a aliasMap) resolve(name string) []string {
	return append(append([]string(nil), a[name]...), name)
}

// mountConfigured mounts the config's [[mount]] entries in order. A block
// device may appear a moment after its driver loads, so nest waits for it.
func (b *booter) mountConfigured(list []config.Mount) {
	for _, m := range list {
		if strings.HasPrefix(m.Source, "/dev/") {
			waitForPath(m.Source, 10*time.Second)
		}
		flags, data := mounts.ParseOptions(m.Options)
		mt := mounts.Mount{Source: m.Source, Target: m.Target, Type: m.Type, Flags: flags, Data: data, Mode: 0o755}
		if _, err := mt.Do(); err != nil {
			b.logf("%v", err)
			continue
		}
		b.logf("mounted %s on %s", m.Source, m.Target)
	}
}

func waitForPath(path string, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
