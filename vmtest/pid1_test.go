package vmtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The PID 1 scenarios: nest is /init of the initramfs, booted on the Debian
// kernel; the guest tests of package nest/vmtest/pid1 run inside as a
// service of nest and report through the harness.

var (
	buildOnce  sync.Once
	buildDir   string
	nestBin    string
	guestTests string
	buildErr   error
)

// builds compiles nest and the guest test binary once per test process.
func builds(t testing.TB) (nest, tests string) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "nest-vmtest-")
		if buildErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if nestBin, buildErr = BuildNest(ctx, buildDir); buildErr != nil {
			return
		}
		guestTests = filepath.Join(buildDir, "pid1.test")
		buildErr = BuildTestBinary(ctx, "nest/vmtest/pid1", []string{"vmguest"}, guestTests)
	})
	if buildErr != nil {
		t.Fatalf("build: %v", buildErr)
	}
	return nestBin, guestTests
}

// scenario is one image: nest as /init, busybox, the guest tests, the
// modules the config asks for, and the config itself.
type scenario struct {
	config  string
	modules []string // beyond nest's own list
	files   map[string]string
}

// nestModules are the modules nest loads at every boot (init/boot.go).
var nestModules = []string{"veth", "bridge", "overlay", "squashfs", "loop"}

func (s scenario) image(t testing.TB) string {
	t.Helper()
	nest, tests := builds(t)
	img := NewImage()
	img.AddFile("/init", nest, 0o755)
	img.AddSymlink("/bin/nest", "/init")
	img.AddFile("/tests/pid1.test", tests, 0o755)
	img.AddBytes("/etc/nest/nest.toml", []byte(s.config), 0o644)
	img.AddDir("/root", 0o700)
	img.AddDir("/var/log", 0o755)
	for path, content := range s.files {
		img.AddBytes(path, []byte(content), 0o644)
	}
	if err := img.AddBusybox(); err != nil {
		t.Fatal(err)
	}
	img.XZModules = []string{"dummy"}
	// The network modules are loaded only once a veth container starts
	// (the built-in config of a broken boot has one).
	modules := append(append(append([]string(nil), nestModules...), netModules...), s.modules...)
	if err := img.AddModules(TestKernel(t), modules...); err != nil {
		t.Fatal(err)
	}
	return WriteImage(t, img)
}

// mustContain fails for every line of want missing from the console.
func mustContain(t *testing.T, r *Result, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(r.Console, w) {
			t.Errorf("console lacks %q\n%s", w, r.Explain())
		}
	}
}

const bootConfig = `# The boot scenario of vmtest/pid1_test.go.
hostname = "nestvm"
modules  = ["dummy"]
console  = "none"

# ticker-begin
[[service]]
name    = "ticker"
exec    = ["/bin/sh", "-c", "echo tick; exec sleep 1000"]
restart = "always"
# ticker-end

[[service]]
name    = "db"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "notify" }
notify  = true
restart = "no"

[[service]]
name  = "web"
exec  = ["/bin/sh", "-c", "echo web up; exec sleep 1000"]
after = ["db"]

[[service]]
name    = "exiter"
exec    = ["/bin/sh", "-c", "exit 42"]
restart = "no"

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestBoot"]
restart = "no"
`

// TestPID1Boot boots nest with services and checks every boot duty and
// supervisor feature from inside (see vmtest/pid1/boot_test.go).
func TestPID1Boot(t *testing.T) {
	t.Parallel()
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{config: bootConfig, modules: []string{"dummy"}}.image(t),
		Append: []string{"nest.bogus=1"},
		Memory: 1024,
	}
	r := RunTest(t, vm)
	mustContain(t, r,
		`kernel command line: unknown word "nest.bogus=1" ignored`,
		"nest: config /etc/nest/nest.toml",
		"nest: db: started (pid",
		"nest: db: ready",
		"nest: ticker: killed by SIGKILL, restarting in 100ms",
		"nest: ticker: killed by SIGKILL, restarting in 200ms",
		"nest: exiter: failed (exit status 42)",
		"nest: all units up",
		"nest: reload: /etc/nest/nest.toml:",
		"nest: reloading /etc/nest/nest.toml",
	)
}

// TestPID1BrokenConfig: a config that does not parse is reported with its
// position on the console, and the system comes up with the built-in
// config and an emergency shell. The shell's /etc/profile runs the guest
// check.
func TestPID1BrokenConfig(t *testing.T) {
	t.Parallel()
	broken := "hostname = \"x\"\n\n[[service]]\nname = \"a\"\nexec = [\"/bin/true\"]\nrestart = \"sometimes\"\n"
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{config: broken, files: map[string]string{
			"/etc/profile": "exec /tests/pid1.test -test.v -test.run '^TestEmergency$'\n",
		}}.image(t),
	}
	r := RunTest(t, vm)
	mustContain(t, r,
		`nest: config error: /etc/nest/nest.toml:6:11: service "a": restart = "sometimes": want "always", "on-failure" or "no"`,
		"nest: config error: starting the built-in config with an emergency shell",
		"nest: console: started (pid",
	)
}

const shutdownConfig = `# The shutdown scenario of vmtest/pid1_test.go.
modules = ["virtio_pci", "virtio_blk", "ext4"]
console = "none"

[[mount]]
source = "/dev/vda"
target = "/var"
type   = "ext4"

[[service]]
name    = "writer"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "writer" }
notify  = true
restart = "no"

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestShutdown$"]
after   = ["writer"]
restart = "no"
`

// TestPID1Shutdown proves an orderly poweroff and reboot lose nothing: the
// same ext4 disk through three boots (SIGTERM → poweroff; SIGINT → reboot),
// a service's fsynced writes — including those it makes on SIGTERM — kept,
// and the file system left clean.
func TestPID1Shutdown(t *testing.T) {
	t.Parallel()
	disk := filepath.Join(t.TempDir(), "var.img")
	if err := NewExt4Image(disk, 64); err != nil {
		t.Fatal(err)
	}
	initrd := scenario{config: shutdownConfig, modules: Ext4Modules}.image(t)

	// Boot 1: the guest sends SIGTERM to PID 1.
	r := RunVM(t, &VM{Kernel: TestKernel(t), Initrd: initrd, Disks: []string{disk}})
	if r.ExitCode != 0 || r.Verdict != VerdictNone || !slicesContains(r.Phases(), "poweroff") {
		t.Fatalf("boot 1: exit %d, verdict %v, phases %v; want a clean poweroff\n%s", r.ExitCode, r.Verdict, r.Phases(), r.Explain())
	}
	mustContain(t, r, "nest: poweroff: stopping units", "nest: writer: stopped (exit status 0)", "nest: unmounted /var", "nest: poweroff")
	if clean, err := Ext4Clean(disk); err != nil || !clean {
		t.Errorf("after poweroff the file system is not clean (%v, %v)", clean, err)
	}

	// Boot 2 checks and sends SIGINT; the VM reboots into boot 3, which
	// checks again and passes.
	r = RunTest(t, &VM{Kernel: TestKernel(t), Initrd: initrd, Disks: []string{disk}, AllowReboot: true})
	if !slicesContains(r.Phases(), "reboot") {
		t.Errorf("phases %v, want reboot", r.Phases())
	}
	mustContain(t, r, "nest: reboot: stopping units", "nest: unmounted /var")
	if n := strings.Count(r.Console, "nest: nest "); n != 2 {
		t.Errorf("nest started %d times in the reboot run, want 2\n%s", n, r.Explain())
	}
}

const containersConfig = `# The containers scenario of vmtest/pid1_test.go.
console = "none"

[container.web]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "echo hello from web; exec sleep 100000"]
memory  = "64M"
pids    = 64
restart = "always"

[container.probe]
kind    = "daemon"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "probe" }
restart = "no"

[container.bomb]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "b() { b | b & }; b; exec sleep 100000"]
pids    = 32
restart = "no"

[container.hog]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "exec tail /dev/zero"]
memory  = "32M"
restart = "no"

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestContainers"]
restart = "no"
`

// TestPID1Containers starts daemon containers from the root's config and
// checks them from the root and from inside (vmtest/pid1/container_test.go):
// namespaces and id mapping, cgroup limits (a fork bomb stops at pids, a
// memory hog is OOM-killed inside its container), the escape list, nest ls
// --tree through the links, a killed child init restarted, a stop that
// leaves nothing.
func TestPID1Containers(t *testing.T) {
	t.Parallel()
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{config: containersConfig}.image(t),
		Memory: 1024,
	}
	r := RunTest(t, vm)
	mustContain(t, r, "nest: web: started (pid", "nest: web: ready")
}

const nestingConfig = `# The nesting scenario of vmtest/pid1_test.go.
modules = ["virtio_pci", "virtio_blk", "ext4"]
console = "none"

# The base user containers see: an ext4 disk (idmapped mounts need a file
# system that allows them; the initramfs does not on Linux 6.1).
[[mount]]
source  = "/dev/vda"
target  = "/base"
type    = "ext4"
options = ["ro"]

# Their state on a file system of its own: an overlay refuses a lower
# layer (a parent's upper) inside another (the base) on one file system.
[[mount]]
source = "/dev/vdb"
target = "/var/lib/nest"
type   = "ext4"

[container.alice]
kind   = "user"
rootfs = "/base"
memory = "256M"
pids   = 512

[[container.alice.service]]
name    = "probe"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "userprobe" }
restart = "no"

[container.alice.container.dev]
kind = "user"

[container.alice.container.dev.container.leaf]
kind    = "daemon"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "probe" }
restart = "no"

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestNesting"]
restart = "no"
`

// TestPID1Nesting boots a tree of four levels — root → user container →
// user container → daemon container — on an ext4 base, and checks it from
// the root and from inside (vmtest/pid1/nesting_test.go): the tree in nest
// ls --tree, what a user may do in their container (copy-up the parent
// does not see, a home, their name), the escape list at levels 2 and 4,
// masks locked for the workloads, stop leaving nothing, reset keeping the
// home.
func TestPID1Nesting(t *testing.T) {
	t.Parallel()
	baseDisk, stateDisk := userDisks(t)
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{config: nestingConfig, modules: Ext4Modules}.image(t),
		Disks:  []string{baseDisk, stateDisk},
		Memory: 1024,
	}
	r := RunTest(t, vm)
	mustContain(t, r, "nest: alice: started (pid", "nest: alice: ready")
	if strings.Contains(r.Console, "CONSOLE-OF-ALICE") {
		t.Error("alice's /dev/console reached the root's console")
	}
}

// userDisks makes the two disks of a scenario with user containers: their
// base (busybox, nest, the guest tests, a root in /etc/passwd) and an
// empty one for their state.
func userDisks(t *testing.T) (base, state string) {
	t.Helper()
	dir := t.TempDir()
	base, state = filepath.Join(dir, "base.img"), filepath.Join(dir, "state.img")
	if err := NewExt4ImageOf(base, 96, systemImage(t)); err != nil {
		t.Fatal(err)
	}
	if err := NewExt4Image(state, 128); err != nil {
		t.Fatal(err)
	}
	return base, state
}

// systemImage is a small system for a disk: busybox, nest, the guest
// tests, root in passwd and group, and the directories containers use.
func systemImage(t *testing.T) *Image {
	t.Helper()
	nest, tests := builds(t)
	img := NewImage()
	if err := img.AddBusybox(); err != nil {
		t.Fatal(err)
	}
	img.AddFile("/tests/pid1.test", tests, 0o755)
	img.AddFile("/bin/nest", nest, 0o755)
	img.AddBytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	img.AddBytes("/etc/group", []byte("root:x:0:\n"), 0o644)
	for _, d := range []string{"/home", "/root", "/var/tmp", "/var/log", "/var/lib", "/usr/bin"} {
		img.AddDir(d, 0o755)
	}
	return img
}

// TestPID1RootDisk boots the way a disk-installed system does: nest is the
// initramfs's /init, loads the disk drivers its config lists, mounts
// root=/dev/vda and starts again from it, with the disk's config. There /
// is ext4, so a user container can see the machine's own root ("host")
// through an idmapped overlay (vmtest/pid1/rootdisk_test.go).
func TestPID1RootDisk(t *testing.T) {
	t.Parallel()
	sys := systemImage(t)
	sys.AddBytes("/etc/nest/nest.toml", []byte(rootDiskConfig), 0o644)
	disk := filepath.Join(t.TempDir(), "root.img")
	if err := NewExt4ImageOf(disk, 96, sys); err != nil {
		t.Fatal(err)
	}
	initramfs := "modules = [\"virtio_pci\", \"virtio_blk\", \"ext4\"]\nconsole = \"none\"\n"
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{config: initramfs, modules: Ext4Modules}.image(t),
		Disks:  []string{disk},
		Append: []string{"root=/dev/vda"},
		Memory: 1024,
	}
	r := RunTest(t, vm)
	mustContain(t, r, "nest: root=/dev/vda: ext4 mounted as /, starting again from it", "nest: alice: ready")
}

const rootDiskConfig = `# The disk's own config in the root-disk scenario of vmtest/pid1_test.go.
console = "none"

[container.alice]
kind = "user"

[[container.alice.service]]
name = "work"
exec = ["/bin/sh", "-c", "echo installed > /usr/from-alice; exec sleep 100000"]

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestRootDisk"]
restart = "no"
`

func slicesContains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
