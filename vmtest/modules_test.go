package vmtest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// fakeModulesDir lays out a miniature /lib/modules/VERSION modelled on
// Debian's: ext4 with a crypto-crc32c soft dependency served by two
// providers, a dash-named module, a built-in module and compressed files.
func fakeModulesDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"modules.dep": `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/fs/mbcache.ko:
kernel/lib/crc16.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio.ko.zst: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.gz: kernel/drivers/virtio/virtio_ring.ko.xz kernel/drivers/virtio/virtio.ko.zst
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/llc/llc.ko:
kernel/lib/libcrc32c.ko:
`,
		"modules.builtin": "kernel/fs/ext2/ext2.ko\nkernel/drivers/tty/serial/8250/8250.ko\n",
		"modules.softdep": `# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep libcrc32c pre: crc32c
softdep bridge post: nonexistent
softdep llc pre: platform:nothing-provides-this
`,
		"modules.alias": `alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias virtio:d00000002v* virtio_blk
alias fs-ext2 ext2
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, line := range strings.Split(files["modules.dep"], "\n") {
		rel, _, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("module "+rel), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func modNames(mods []Module) []string {
	names := []string{}
	for _, m := range mods {
		names = append(names, m.Name)
	}
	return names
}

func TestModuleClosure(t *testing.T) {
	k := &Kernel{Version: "6.1.0-test", ModulesDir: fakeModulesDir(t)}
	tests := []struct {
		names   []string
		want    []string
		wantErr string
	}{
		{names: []string{"llc"}, want: []string{"llc"}},
		// Deps first, last-listed first; crc32c_generic before ext4 and
		// jbd2 via the soft dependency, picked over crc32c_intel.
		{names: []string{"ext4"}, want: []string{"crc32c_generic", "jbd2", "mbcache", "crc16", "ext4"}},
		{names: []string{"bridge"}, want: []string{"llc", "stp", "bridge"}},
		// '-' and '_' are the same; compressed files are found.
		{names: []string{"crc32c-intel"}, want: []string{"crc32c_intel"}},
		{names: []string{"virtio-blk"}, want: []string{"virtio_ring", "virtio", "virtio_blk"}},
		// Duplicates and overlaps are loaded once.
		{names: []string{"virtio", "virtio_blk", "virtio"}, want: []string{"virtio_ring", "virtio", "virtio_blk"}},
		// Built-ins contribute nothing, by name or by alias.
		{names: []string{"ext2", "8250", "fs-ext2"}, want: []string{}},
		// An alias asked for explicitly resolves like a soft dependency.
		{names: []string{"crypto-crc32c"}, want: []string{"crc32c_generic"}},
		{names: []string{"libcrc32c"}, want: []string{"crc32c_generic", "libcrc32c"}},
		{names: []string{"ext4", "nosuchmod"}, wantErr: `"nosuchmod"`},
	}
	for _, tt := range tests {
		mods, err := k.ModuleClosure(tt.names...)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ModuleClosure(%q) = %v, want error containing %s", tt.names, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ModuleClosure(%q) = %v", tt.names, err)
			continue
		}
		if got := modNames(mods); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ModuleClosure(%q) = %q, want %q", tt.names, got, tt.want)
		}
		for _, m := range mods {
			if _, err := os.Stat(m.Path); err != nil {
				t.Errorf("ModuleClosure(%q): module %s Path: %v", tt.names, m.Name, err)
			}
		}
	}
}

func TestModuleClosureUnknownNamesDir(t *testing.T) {
	k := &Kernel{Version: "x", ModulesDir: fakeModulesDir(t)}
	_, err := k.ModuleClosure("nope")
	if err == nil || !strings.Contains(err.Error(), k.ModulesDir) {
		t.Errorf("ModuleClosure(nope) = %v, want error naming %s", err, k.ModulesDir)
	}
}

func TestModuleClosureNoModulesDep(t *testing.T) {
	k := &Kernel{Version: "x", ModulesDir: t.TempDir()}
	_, err := k.ModuleClosure("ext4")
	if err == nil || !strings.Contains(err.Error(), "modules.dep") {
		t.Errorf("ModuleClosure(ext4) in empty dir = %v, want error naming modules.dep", err)
	}
}

func TestModName(t *testing.T) {
	tests := map[string]string{
		"kernel/arch/x86/crypto/crc32c-intel.ko": "crc32c_intel",
		"virtio_blk.ko.xz":                       "virtio_blk",
		"kernel/a/b.ko.zst":                      "b",
		"kernel/a/c-d.ko.gz":                     "c_d",
		"nf-tables":                              "nf_tables",
	}
	for in, want := range tests {
		if got := modName(in); got != want {
			t.Errorf("modName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestHostModuleClosure checks the real kernel's ext4 closure, which the
// nest VM tests depend on (notes: crc32c_generic is needed for
// metadata_csum and nothing in the guest would request it).
func TestHostModuleClosure(t *testing.T) {
	k := TestKernel(t)
	mods, err := k.ModuleClosure(Ext4Modules...)
	if err != nil {
		t.Fatalf("ModuleClosure(%q) = %v", Ext4Modules, err)
	}
	got := modNames(mods)
	idx := map[string]int{}
	for i, n := range got {
		idx[n] = i
	}
	for _, want := range []string{"virtio_pci", "virtio_blk", "ext4", "jbd2", "crc32c_generic", "virtio_ring"} {
		if _, ok := idx[want]; !ok {
			t.Errorf("ModuleClosure(%q) = %q, want it to include %s", Ext4Modules, got, want)
		}
	}
	if _, ok := idx["crc32c_intel"]; ok {
		t.Errorf("ModuleClosure(%q) = %q, want no crc32c_intel", Ext4Modules, got)
	}
	if idx["crc32c_generic"] > idx["ext4"] || idx["jbd2"] > idx["ext4"] {
		t.Errorf("ModuleClosure(%q) = %q, want crc32c_generic and jbd2 before ext4", Ext4Modules, got)
	}
}
