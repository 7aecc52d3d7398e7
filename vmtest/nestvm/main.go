// Command nestvm boots nest as PID 1 of the Debian kernel in QEMU with the
// console on this terminal: `make demo`. It packs an initramfs with the
// given nest binary as /init, busybox, the kernel modules nest loads, and
// optionally a config of your own; without one nest boots its built-in
// demo config. End it with `poweroff` (or Ctrl-A X).
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
    wget -qO- 127.0.0.1:8080   the daemon container "web", on its own address
                           (nest ls shows it), answers on a published port
    nest stop hello        and nest start hello; restart too
    cat /proc/1/cgroup     PID 1 lives in /init.scope; units in /services/NAME
    kill -HUP 1            re-read /etc/nest/nest.toml (write one: see docs/config.md)
    nest status NAME       one unit in detail (--json for programs)
    poweroff               (or nest poweroff) an orderly shutdown
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nestvm:", err)
		os.Exit(1)
	}
}

func run() error {
	nest := flag.String("nest", "./nest", "the nest binary to boot as /init")
	cfg := flag.String("config", "", "a nest.toml to boot with (default: nest's built-in config)")
	disk := flag.String("disk", "", "a raw disk image to attach as /dev/vda")
	mem := flag.Int("m", 1024, "memory in MiB")
	appendArgs := flag.String("append", "", "extra kernel command line words")
	flag.Parse()

	k, err := vmtest.FindKernel()
	if err != nil {
		return err
	}
	img := vmtest.NewImage()
	img.AddFile("/init", *nest, 0o755)
	img.AddSymlink("/bin/nest", "/init")
	img.AddDir("/root", 0o700)
	img.AddDir("/var/log", 0o755)
	img.AddBytes("/etc/profile", []byte("cat /etc/motd\nPS1='\\h:\\w# '\n"), 0o644)
	img.AddBytes("/etc/motd", []byte(motd), 0o644)
	// What a veth container's init covers with its own.
	img.AddBytes("/etc/hosts", []byte("127.0.0.1\tlocalhost\n"), 0o644)
	img.AddBytes("/etc/resolv.conf", nil, 0o644)
	if *cfg != "" {
		img.AddFile("/etc/nest/nest.toml", *cfg, 0o644)
	}
	if err := img.AddBusybox(); err != nil {
		return err
	}
	modules := []string{"veth", "bridge", "overlay", "squashfs", "loop", // nest's own
		"nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"} // veth networks
	if *disk != "" {
		modules = append(modules, vmtest.Ext4Modules...)
	}
	if err := img.AddModules(k, modules...); err != nil {
		return err
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

	vm := &vmtest.VM{Kernel: k, Initrd: initrd, Memory: *mem, Interactive: true}
	if *disk != "" {
		vm.Disks = []string{*disk}
	}
	if *appendArgs != "" {
		vm.Append = strings.Fields(*appendArgs)
	}
	fmt.Fprintf(os.Stderr, "nestvm: booting %s on %s (QEMU, software emulation); poweroff or Ctrl-A X ends it\n", *nest, k.Version)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	vm.Timeout = 1 << 62 // as long as the user likes
	_, err = vm.Run(ctx)
	return err
}
