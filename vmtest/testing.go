package vmtest

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// VerboseEnv=1 streams every VM's console to stderr while it runs, to
// watch a hanging boot live (go test -v alone only shows it afterwards).
const VerboseEnv = "NEST_VMTEST_VERBOSE"

var (
	kernelOnce sync.Once
	kernel     *Kernel
	kernelErr  error
)

// TestKernel returns the host kernel (FindKernel, once per process) or
// fails the test: VM tests are meant to run, not skip, so a machine
// without a kernel is a setup error.
func TestKernel(tb testing.TB) *Kernel {
	tb.Helper()
	kernelOnce.Do(func() { kernel, kernelErr = FindKernel() })
	if kernelErr != nil {
		tb.Fatalf("FindKernel() = %v", kernelErr)
	}
	return kernel
}

// WriteImage writes img to a cpio file in the test's temp dir and returns
// its path, failing the test on error.
func WriteImage(tb testing.TB, img *Image) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), "initrd.cpio")
	if err := img.WriteCPIO(p); err != nil {
		tb.Fatalf("WriteCPIO(%s) = %v", p, err)
	}
	return p
}

// RunVM runs vm and fails the test if the harness failed (QEMU error,
// timeout); it does not look at the verdict, for guests that power off or
// reboot on purpose. The run is cancelled when the test ends.
func RunVM(tb testing.TB, vm *VM) *Result {
	tb.Helper()
	if os.Getenv(VerboseEnv) == "1" && vm.Console == nil {
		v := *vm
		v.Console = os.Stderr
		vm = &v
	}
	res, err := vm.Run(tb.Context())
	if err != nil {
		tb.Fatalf("VM.Run() = %v", err)
	}
	return res
}

// RunTest runs vm and fails the test, with the console and output, unless
// the guest reported a pass.
func RunTest(tb testing.TB, vm *VM) *Result {
	tb.Helper()
	res := RunVM(tb, vm)
	if res.Verdict != VerdictPass {
		tb.Fatalf("VM verdict = %v, want %v\n%s", res.Verdict, VerdictPass, res.Explain())
	}
	return res
}
