package vmtest

import (
	"debug/elf"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestVersionLess(t *testing.T) {
	// Sorted ascending.
	versions := []string{"5.10.0-9-amd64", "6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-56-amd64", "6.9.0-1-amd64", "6.10.0-1-amd64"}
	got := append([]string{}, versions...)
	for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
		got[i], got[j] = got[j], got[i]
	}
	sort.Slice(got, func(i, j int) bool { return versionLess(got[i], got[j]) })
	if strings.Join(got, " ") != strings.Join(versions, " ") {
		t.Errorf("sorted versions = %q, want %q", got, versions)
	}
}

func TestFindKernelErrors(t *testing.T) {
	boot, mods := t.TempDir(), t.TempDir()
	_, err := findKernel(boot, mods, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "no kernel in "+boot+": run make deps") {
		t.Errorf("findKernel(empty boot) = %v, want no kernel in %s", err, boot)
	}
	if err := os.WriteFile(filepath.Join(boot, "vmlinuz-9.9.9"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = findKernel(boot, mods, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "modules.dep") || !strings.Contains(err.Error(), "vmlinuz-9.9.9") {
		t.Errorf("findKernel(no modules) = %v, want error naming modules.dep and vmlinuz-9.9.9", err)
	}
	// A kernel with modules but not an xz bzImage fails extraction clearly.
	if err := os.MkdirAll(filepath.Join(mods, "9.9.9"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mods, "9.9.9", "modules.dep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = findKernel(boot, mods, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "vmlinuz-9.9.9") {
		t.Errorf("findKernel(bogus bzImage) = %v, want error naming vmlinuz-9.9.9", err)
	}
}

// TestExtractVmlinux extracts the real host kernel into a fresh cache and
// checks that the result is an x86-64 ELF with the entry note PVH boot
// needs, and that a second lookup reuses the cached file.
func TestExtractVmlinux(t *testing.T) {
	t.Parallel()
	cache := t.TempDir()
	start := time.Now()
	k, err := findKernel(bootDir, modulesDir, cache)
	if err != nil {
		t.Fatalf("findKernel(%s) = %v", bootDir, err)
	}
	t.Logf("extracted %s in %v", k.Vmlinux, time.Since(start).Round(time.Millisecond))
	if filepath.Dir(k.Vmlinux) != cache || !strings.HasPrefix(filepath.Base(k.Vmlinux), "vmlinux-"+k.Version+"-") {
		t.Errorf("Vmlinux = %s, want %s/vmlinux-%s-HASH", k.Vmlinux, cache, k.Version)
	}
	if want := filepath.Join(modulesDir, k.Version); k.ModulesDir != want {
		t.Errorf("ModulesDir = %s, want %s", k.ModulesDir, want)
	}
	f, err := elf.Open(k.Vmlinux)
	if err != nil {
		t.Fatalf("elf.Open(%s) = %v", k.Vmlinux, err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		t.Errorf("vmlinux is %v %v, want ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	if f.Section(".notes") == nil {
		t.Errorf("vmlinux has no .notes section (PVH entry point)")
	}

	fi1, err := os.Stat(k.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(cache)
	if len(entries) != 1 {
		t.Errorf("cache holds %d files, want 1 (temp files left behind?)", len(entries))
	}
	start = time.Now()
	k2, err := findKernel(bootDir, modulesDir, cache)
	if err != nil {
		t.Fatalf("findKernel() again = %v", err)
	}
	t.Logf("cached lookup took %v", time.Since(start).Round(time.Millisecond))
	fi2, err := os.Stat(k2.Vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if k2.Vmlinux != k.Vmlinux || !os.SameFile(fi1, fi2) {
		t.Errorf("second findKernel() = %s, want the cached %s", k2.Vmlinux, k.Vmlinux)
	}
}
