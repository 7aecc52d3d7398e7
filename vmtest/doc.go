// Package vmtest owns the host side of nest's VM tests: it finds the host's
// Debian kernel and turns it into a bootable PVH vmlinux, resolves kernel
// module closures, packs initramfs images (newc cpio), makes ext4 disk
// images, builds the nest binary and guest test binaries, and runs QEMU
// (TCG only) to turn a guest's verdict into a Result.
//
// The guest side (redirecting output to the results port and reporting the
// verdict through isa-debug-exit) lives in the sub-package nest/vmtest/guest.
//
// Protocol between the two sides:
//   - ttyS0 is the console; the host captures it for humans only.
//   - ttyS1 carries machine-readable lines; the last one is
//     "NESTVM DONE PASS" or "NESTVM DONE FAIL".
//   - the guest writes 0x20 (pass) or 0x21 (fail) to I/O port 0xf4, which
//     makes QEMU exit at once with status 65 or 67.
//
// A run passes only when both the exit status and the DONE line say so:
// a PID 1 that panics makes QEMU exit 0 with no DONE line.
//
// A typical VM test:
//
//	k := vmtest.TestKernel(t)
//	nest, err := vmtest.BuildNest(t.Context(), t.TempDir())
//	...
//	img := vmtest.NewImage()
//	img.AddFile("/init", nest, 0o755)
//	if err := img.AddBusybox(); err != nil { ... }
//	if err := img.AddModules(k, vmtest.Ext4Modules...); err != nil { ... }
//	disk := filepath.Join(t.TempDir(), "data.img")
//	if err := vmtest.NewExt4Image(disk, 64); err != nil { ... }
//	res := vmtest.RunTest(t, &vmtest.VM{Kernel: k, Initrd: vmtest.WriteImage(t, img), Disks: []string{disk}})
//
// Set NEST_VMTEST_VERBOSE=1 to watch consoles live.
package vmtest
