// Command nestvm boots nest as PID 1 of the Debian kernel in QEMU with the
// console on this terminal: `make demo`. The way a disk-installed system
// boots: an initramfs with the given nest binary as /init and the kernel
// modules, and an ext4 root disk (root=/dev/vda, a throwaway copy) with
// busybox, nest and optionally a config of your own; without one nest
// boots its built-in demo config. End it with `poweroff` (or Ctrl-A X).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"nest/vmtest"
)

const motd = `
  This is nest, PID 1 of a Linux VM. Try:
    nest ls --tree         the units of this container and of its children
    nest logs hello        what the daemon container "hello" said
    nest shell alice       a shell in the user container alice (root in her view only)
    wget -qO- 127.0.0.1:8080   the daemon container "web", on its own address
                           (nest ls shows it), answers on a published port
    nest stop hello        and nest start hello; restart too
    cat /proc/1/cgroup     PID 1 lives in /init.scope; units in /services/NAME
    kill -HUP 1            re-read /etc/nest/nest.toml (write one: see docs/config.md)
    nest status NAME       one unit in detail (--json for programs)
    poweroff               (or nest poweroff) an orderly shutdown
`

// initramfsConfig loads the drivers of the root disk; a shell is there if
// the disk cannot be mounted.
const initramfsConfig = `modules = ["virtio_pci", "virtio_blk", "ext4",
  "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"]
console = "shell"
`

// netModules are those of veth networks (the demo's web container): the
// disk has no modules of its own, so the initramfs loads them.
var netModules = []string{"nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nestvm:", err)
		os.Exit(1)
	}
}

func run() error {
	nest := flag.String("nest", "./nest", "the nest binary to boot as /init")
	cfg := flag.String("config", "", "a nest.toml to boot with (default: nest's built-in config)")
	disk := flag.String("disk", "", "a raw disk image to attach as /dev/vdb")
	mem := flag.Int("m", 1024, "memory in MiB")
	appendArgs := flag.String("append", "", "extra kernel command line words")
	flag.Parse()

	k, err := vmtest.FindKernel()
	if err != nil {
		return err
	}
	// The initramfs: nest, the modules, and a config that names the disk
	// drivers (and gives a shell if the disk cannot be mounted).
	img := vmtest.NewImage()
	img.AddFile("/init", *nest, 0o755)
	img.AddSymlink("/bin/nest", "/init")
	img.AddBytes("/etc/nest/nest.toml", []byte(initramfsConfig), 0o644)
	if err := img.AddBusybox(); err != nil {
		return err
	}
	modules := append([]string{"veth", "bridge", "overlay", "squashfs", "loop"}, vmtest.Ext4Modules...)
	modules = append(modules, netModules...)
	if err := img.AddModules(k, modules...); err != nil {
		return err
	}
	// The root disk: the system the user sees.
	sys := vmtest.NewImage()
	if err := sys.AddBusybox(); err != nil {
		return err
	}
	sys.AddFile("/bin/nest", *nest, 0o755)
	sys.AddDir("/root", 0o700)
	for _, d := range []string{"/home", "/var/log", "/var/lib", "/var/tmp", "/usr/bin"} {
		sys.AddDir(d, 0o755)
	}
	sys.AddBytes("/etc/passwd", []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	sys.AddBytes("/etc/group", []byte("root:x:0:\n"), 0o644)
	sys.AddBytes("/etc/profile", []byte("cat /etc/motd\nPS1='\\h:\\w# '\n"), 0o644)
	sys.AddBytes("/etc/motd", []byte(motd), 0o644)
	// What a veth container's init covers with its own.
	sys.AddBytes("/etc/hosts", []byte("127.0.0.1\tlocalhost\n"), 0o644)
	sys.AddBytes("/etc/resolv.conf", nil, 0o644)
	if *cfg != "" {
		sys.AddFile("/etc/nest/nest.toml", *cfg, 0o644)
	}
	dir, err := os.MkdirTemp("", "nestvm-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := img.WriteCPIO(initrd); err != nil {
		return err
	}
	root := filepath.Join(dir, "root.img")
	if err := vmtest.NewExt4ImageOf(root, 256, sys); err != nil {
		return err
	}

	vm := &vmtest.VM{Kernel: k, Initrd: initrd, Memory: *mem, Interactive: true,
		Disks: []string{root}, Append: []string{"root=/dev/vda"}}
	if *disk != "" {
		vm.Disks = append(vm.Disks, *disk)
	}
	if *appendArgs != "" {
		vm.Append = append(vm.Append, strings.Fields(*appendArgs)...)
	}
	fmt.Fprintf(os.Stderr, "nestvm: booting %s on %s (QEMU, software emulation); poweroff or Ctrl-A X ends it\n", *nest, k.Version)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	vm.Timeout = 1 << 62 // as long as the user likes
	_, err = vm.Run(ctx)
	return err
}
