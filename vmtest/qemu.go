package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"nest/vmtest/guest"
)

// Defaults for VM fields left zero.
const (
	DefaultMemory  = 512 // MB
	DefaultCPUs    = 1
	DefaultTimeout = 2 * time.Minute
)

// BaseAppend is the kernel command line every VM starts with; VM.Append
// comes after it, so a word there overrides one here.
//
//   - panic=-1 reboots at once on a panic, and with -no-reboot a reboot
//     ends QEMU: a dying PID 1 never hangs the test.
//   - loglevel=1 keeps printk (OOM reports, warnings) off ttyS0, where it
//     would interleave with nest's own output.
//   - tsc_early_khz skips TSC calibration, which is flaky under TCG.
//   - NEST_VMTEST=1 lets guest code tell it is in a test VM (guest.InGuest);
//     the kernel passes it to PID 1's environment.
var BaseAppend = []string{
	"console=ttyS0", "panic=-1", "loglevel=1", "tsc_early_khz=2600000", "quiet", guest.CmdlineFlag,
}

// VM describes one QEMU run. Only Kernel and Initrd are required.
type VM struct {
	Kernel *Kernel
	// Initrd is the initramfs (see Image.WriteCPIO); its /init is PID 1.
	Initrd string
	// Disks are raw images attached as virtio-blk disks, /dev/vda,
	// /dev/vdb, ... in order. The guest needs virtio_pci and virtio_blk.
	Disks []string
	// Append holds extra kernel command line words.
	Append []string
	// Memory in MB (default 512) and CPUs (default 1).
	Memory int
	CPUs   int
	// Timeout bounds the whole run (default 2 minutes); QEMU is killed
	// when it expires.
	Timeout time.Duration
	// AllowReboot lets a guest reboot (for multi-boot scenarios); by
	// default QEMU runs with -no-reboot, so a reboot ends the run.
	AllowReboot bool
	// Interactive wires the console to this process's terminal (serial
	// plus QEMU monitor: Ctrl-A X quits) for demos and debugging.
	Interactive bool
	// Console, if set, receives a live copy of ttyS0.
	Console io.Writer
	// QEMU overrides the qemu-system-x86_64 binary.
	QEMU string
	// ExtraArgs are appended to the QEMU command line.
	ExtraArgs []string
}

// Verdict is the outcome a guest reported.
type Verdict int

const (
	// VerdictNone: the guest ended without a verdict (powered off,
	// rebooted, or PID 1 died).
	VerdictNone Verdict = iota
	// VerdictPass: QEMU exited with guest.ExitPass and the last line of
	// Output is guest.DonePass.
	VerdictPass
	// VerdictFail: the guest reported failure, or its two signals disagree.
	VerdictFail
)

func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictPass:
		return "pass"
	case VerdictFail:
		return "fail"
	}
	return "Verdict(" + strconv.Itoa(int(v)) + ")"
}

// Result is what a VM run produced.
type Result struct {
	// Console is everything the guest wrote to ttyS0 (kernel messages,
	// PID 1's stdout and stderr).
	Console string
	// Output is everything written to ttyS1, with '\r' removed.
	Output string
	// Stderr is QEMU's own diagnostics.
	Stderr string
	// ExitCode is QEMU's exit status; -1 when it was killed.
	ExitCode int
	Verdict  Verdict
	// Duration is the wall time from starting QEMU to its exit.
	Duration time.Duration
}

// Lines returns the lines of Output.
func (r *Result) Lines() []string {
	out := strings.TrimRight(r.Output, "\n")
	if out == "" {
		return nil
	}
	return strings.Split(out, "\n")
}

// Phases returns the names the guest passed to guest.Phase, in order.
func (r *Result) Phases() []string {
	var ps []string
	for _, l := range r.Lines() {
		if name, ok := strings.CutPrefix(l, guest.PhasePrefix); ok {
			ps = append(ps, name)
		}
	}
	return ps
}

// explainLimit caps each section of Explain, keeping the end, where the
// failure usually is.
const explainLimit = 64 << 10

// Explain formats the run for a test failure message: status, verdict,
// and the console and results output.
func (r *Result) Explain() string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu exit status %d after %v, verdict %v", r.ExitCode, r.Duration.Round(time.Millisecond), r.Verdict)
	if r.Verdict != VerdictPass {
		fmt.Fprintf(&b, " (pass needs exit status %d and a last ttyS1 line %q)", guest.ExitPass, guest.DonePass)
	}
	b.WriteByte('\n')
	section := func(title, s string) {
		if len(s) > explainLimit {
			s = fmt.Sprintf("[... %d bytes cut ...]\n", len(s)-explainLimit) + s[len(s)-explainLimit:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s", title, s)
		if s != "" && !strings.HasSuffix(s, "\n") {
			b.WriteByte('\n')
		}
	}
	section("console (ttyS0)", strings.ReplaceAll(r.Console, "\r", ""))
	section("output (ttyS1)", r.Output)
	if r.Stderr != "" {
		section("qemu stderr", r.Stderr)
	}
	return b.String()
}

// verdictOf combines QEMU's exit status with the guest's last line.
func verdictOf(exitCode int, output string) Verdict {
	last := ""
	if lines := strings.Split(strings.TrimRight(output, "\n"), "\n"); len(lines) > 0 {
		last = strings.TrimSpace(lines[len(lines)-1])
	}
	switch {
	case exitCode == guest.ExitPass && last == guest.DonePass:
		return VerdictPass
	case exitCode == guest.ExitPass, exitCode == guest.ExitFail,
		last == guest.DonePass, last == guest.DoneFail:
		// A verdict was attempted; anything short of both signals agreeing
		// on pass is a failure.
		return VerdictFail
	}
	return VerdictNone
}

// Args returns the QEMU command line (without the binary) for a run whose
// ttyS1 goes to resultsPath.
func (vm *VM) Args(resultsPath string) []string {
	mem, cpus := vm.Memory, vm.CPUs
	if mem <= 0 {
		mem = DefaultMemory
	}
	if cpus <= 0 {
		cpus = DefaultCPUs
	}
	// KVM on this class of host is a PVM shim that runs stock kernels
	// orders of magnitude slower than TCG, so TCG is forced, never probed.
	args := []string{
		"-machine", "pc", "-accel", "tcg", "-cpu", "max",
		"-m", strconv.Itoa(mem), "-smp", strconv.Itoa(cpus),
		"-nodefaults", "-no-user-config", "-display", "none", "-nic", "none",
	}
	// Order matters: the first -serial is ttyS0, the second ttyS1.
	if vm.Interactive {
		args = append(args, "-serial", "mon:stdio")
	} else {
		args = append(args, "-serial", "stdio")
	}
	args = append(args, "-serial", "file:"+resultsPath,
		"-device", fmt.Sprintf("isa-debug-exit,iobase=%#x,iosize=0x04", guest.DebugExitPort))
	if !vm.AllowReboot {
		args = append(args, "-no-reboot")
	}
	for i, d := range vm.Disks {
		// Commas are QEMU's option separator; doubling escapes them.
		args = append(args, "-drive",
			fmt.Sprintf("file=%s,format=raw,if=virtio,index=%d", strings.ReplaceAll(d, ",", ",,"), i))
	}
	args = append(args,
		"-kernel", vm.Kernel.Vmlinux,
		"-initrd", vm.Initrd,
		"-append", strings.Join(append(append([]string{}, BaseAppend...), vm.Append...), " "))
	return append(args, vm.ExtraArgs...)
}

// Run boots the VM and waits for QEMU to exit, for the timeout, or for ctx.
//
// A guest verdict (pass or fail) or a deliberate poweroff is not an error:
// check Result.Verdict. Run returns an error when QEMU could not run, failed
// on its own (an exit status other than 0, 65 or 67), timed out or was
// cancelled; the Result is then still returned whenever QEMU started, and
// the error text includes the console.
func (vm *VM) Run(ctx context.Context) (*Result, error) {
	if vm.Kernel == nil || vm.Kernel.Vmlinux == "" {
		return nil, errors.New("run vm: no kernel (use FindKernel)")
	}
	for _, f := range append([]string{vm.Kernel.Vmlinux, vm.Initrd}, vm.Disks...) {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("run vm: %w", err)
		}
	}
	qemu := vm.QEMU
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	qemuPath, err := exec.LookPath(qemu)
	if err != nil {
		return nil, fmt.Errorf("run vm: %w (install qemu-system-x86: run make deps)", err)
	}
	timeout := vm.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}

	tmp, err := os.MkdirTemp("", "nest-vm-")
	if err != nil {
		return nil, fmt.Errorf("run vm: %w", err)
	}
	defer os.RemoveAll(tmp)
	resultsPath := filepath.Join(tmp, "ttyS1")

	var console, stderr bytes.Buffer
	cmd := exec.Command(qemuPath, vm.Args(resultsPath)...)
	var consoleW io.Writer = &console
	if vm.Console != nil {
		consoleW = io.MultiWriter(&console, vm.Console)
	}
	if vm.Interactive {
		cmd.Stdin = os.Stdin
		consoleW = io.MultiWriter(consoleW, os.Stdout)
	}
	cmd.Stdout = consoleW
	cmd.Stderr = &stderr
	// Pdeathsig: if this process dies (say, go test's own timeout), QEMU
	// goes too. Setpgid lets a kill reach anything QEMU spawned; an
	// interactive QEMU must stay in the terminal's foreground group to
	// read the keyboard.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: !vm.Interactive}
	cmd.WaitDelay = 5 * time.Second

	// Pdeathsig fires when the *thread* that forked QEMU exits, and the Go
	// runtime ends threads whose goroutine exits while locked to them
	// (common in namespace tests running alongside). Holding this
	// goroutine on its thread until QEMU is gone keeps that thread alive.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run vm: start %s: %w", qemuPath, err)
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	var stopErr error
	select {
	case err = <-waitErr:
	case <-timer.C:
		stopErr = fmt.Errorf("vm timed out after %v", timeout)
	case <-ctx.Done():
		stopErr = fmt.Errorf("vm stopped: %w", ctx.Err())
	}
	if stopErr != nil {
		pid := cmd.Process.Pid
		if !vm.Interactive {
			pid = -pid // the whole process group
		}
		syscall.Kill(pid, syscall.SIGKILL)
		err = <-waitErr
	}

	res := &Result{
		Console:  console.String(),
		Stderr:   stderr.String(),
		ExitCode: cmd.ProcessState.ExitCode(),
		Duration: time.Since(start),
	}
	out, rerr := os.ReadFile(resultsPath)
	if rerr != nil && !os.IsNotExist(rerr) {
		return res, fmt.Errorf("run vm: read results: %w", rerr)
	}
	res.Output = strings.ReplaceAll(string(out), "\r", "")
	res.Verdict = verdictOf(res.ExitCode, res.Output)

	if stopErr != nil {
		return res, fmt.Errorf("%w\n%s", stopErr, res.Explain())
	}
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		return res, fmt.Errorf("run vm: %w\n%s", err, res.Explain())
	}
	switch res.ExitCode {
	case 0, guest.ExitPass, guest.ExitFail:
		return res, nil
	}
	return res, fmt.Errorf("qemu failed with exit status %d: %s\n%s", res.ExitCode, strings.TrimSpace(res.Stderr), res.Explain())
}
