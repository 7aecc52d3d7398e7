package vmtest

import (
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestVerdictOf(t *testing.T) {
	tests := []struct {
		exit   int
		output string
		want   Verdict
	}{
		{65, "hello\nNESTVM DONE PASS\n", VerdictPass},
		{65, "NESTVM DONE PASS", VerdictPass},
		{67, "hello\nNESTVM DONE FAIL\n", VerdictFail},
		{67, "", VerdictFail},
		// Exit status and DONE line must agree.
		{65, "hello\n", VerdictFail},
		{65, "NESTVM DONE FAIL\n", VerdictFail},
		{0, "NESTVM DONE PASS\n", VerdictFail},
		{65, "NESTVM DONE PASS\nmore\n", VerdictFail},
		// A poweroff, reboot or PID 1 panic: no verdict at all.
		{0, "", VerdictNone},
		{0, "NESTVM PHASE one\n", VerdictNone},
		{-1, "", VerdictNone},
	}
	for _, tt := range tests {
		if got := verdictOf(tt.exit, tt.output); got != tt.want {
			t.Errorf("verdictOf(%d, %q) = %v, want %v", tt.exit, tt.output, got, tt.want)
		}
	}
}

func TestArgs(t *testing.T) {
	vm := &VM{
		Kernel: &Kernel{Vmlinux: "/k/vmlinux"},
		Initrd: "/i/initrd.cpio",
		Disks:  []string{"/d/a.img", "/d/b,c.img"},
		Append: []string{"nest.debug=1"},
	}
	args := strings.Join(vm.Args("/r/ttyS1"), " ")
	for _, want := range []string{
		"-machine pc -accel tcg -cpu max -m 512 -smp 1 -nodefaults -no-user-config -display none -nic none",
		"-serial stdio -serial file:/r/ttyS1 -device isa-debug-exit,iobase=0xf4,iosize=0x04 -no-reboot",
		"-drive file=/d/a.img,format=raw,if=virtio,index=0 -drive file=/d/b,,c.img,format=raw,if=virtio,index=1",
		"-kernel /k/vmlinux -initrd /i/initrd.cpio",
		"-append console=ttyS0 panic=-1 loglevel=1 tsc_early_khz=2600000 quiet NEST_VMTEST=1 nest.debug=1",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("Args() = %s\nwant it to contain %s", args, want)
		}
	}
	if strings.Contains(args, "kvm") {
		t.Errorf("Args() = %s, want no kvm", args)
	}
	vm.AllowReboot, vm.Interactive, vm.Memory, vm.CPUs = true, true, 1024, 2
	args = strings.Join(vm.Args("/r/ttyS1"), " ")
	if strings.Contains(args, "-no-reboot") || !strings.Contains(args, "-serial mon:stdio") ||
		!strings.Contains(args, "-m 1024 -smp 2") {
		t.Errorf("Args() with AllowReboot, Interactive, 1024 MB, 2 CPUs = %s", args)
	}
}

func TestResultHelpers(t *testing.T) {
	r := &Result{
		Console:  "boot\r\nhello console\r\n",
		Output:   "NESTVM PHASE one\nx\nNESTVM PHASE two\n",
		ExitCode: 0,
		Duration: 1500 * time.Millisecond,
	}
	if got, want := r.Phases(), []string{"one", "two"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Phases() = %q, want %q", got, want)
	}
	if got := r.Lines(); len(got) != 3 || got[1] != "x" {
		t.Errorf("Lines() = %q, want 3 lines", got)
	}
	e := r.Explain()
	for _, want := range []string{"exit status 0", "verdict none", "--- console (ttyS0) ---\nboot\nhello console\n", "--- output (ttyS1) ---\nNESTVM PHASE one\n"} {
		if !strings.Contains(e, want) {
			t.Errorf("Explain() = %q, want it to contain %q", e, want)
		}
	}
	if got := (&Result{}).Lines(); got != nil {
		t.Errorf("Lines() of empty output = %q, want nil", got)
	}
}

// smokeInitrd builds testdata/smokeinit and packs it as /init.
func smokeInitrd(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	start := time.Now()
	bin := filepath.Join(dir, "smokeinit")
	if err := BuildBinary(t.Context(), "./vmtest/testdata/smokeinit", bin); err != nil {
		t.Fatalf("BuildBinary(smokeinit) = %v", err)
	}
	built := time.Now()
	img := NewImage()
	img.AddFile("/init", bin, 0o755)
	initrd := WriteImage(t, img)
	t.Logf("build %v, pack %v", built.Sub(start).Round(time.Millisecond), time.Since(built).Round(time.Millisecond))
	return initrd
}

// TestBootSmoke proves the harness end to end: a static Go /init boots
// under TCG, writes to both serial ports and reports PASS through
// isa-debug-exit.
func TestBootSmoke(t *testing.T) {
	t.Parallel()
	k := TestKernel(t)
	vm := &VM{Kernel: k, Initrd: smokeInitrd(t)}
	res := RunTest(t, vm)
	t.Logf("boot to verdict %v", res.Duration.Round(time.Millisecond))
	if !slices.Contains(res.Lines(), "hello") {
		t.Errorf("Output = %q, want a line hello\n%s", res.Output, res.Explain())
	}
	if got := res.Phases(); !reflect.DeepEqual(got, []string{"booted"}) {
		t.Errorf("Phases() = %q, want [booted]", got)
	}
	if !strings.Contains(res.Console, "smokeinit: console works") {
		t.Errorf("Console lacks PID 1's stdout\n%s", res.Explain())
	}
	if strings.Contains(res.Output, "\r") {
		t.Errorf("Output = %q, want no \\r", res.Output)
	}
}

// TestBootEndings boots every way a run can end: the proof that a guest
// failure, a panicking PID 1 and a hang all fail a VM test.
func TestBootEndings(t *testing.T) {
	k := TestKernel(t)
	initrd := smokeInitrd(t)
	run := func(mode string, timeout time.Duration) (*Result, error) {
		vm := &VM{Kernel: k, Initrd: initrd, Append: []string{"SMOKE_MODE=" + mode}, Timeout: timeout}
		return vm.Run(t.Context())
	}
	t.Run("fail", func(t *testing.T) {
		res, err := run("fail", time.Minute)
		if err != nil || res.Verdict != VerdictFail || res.ExitCode != 67 {
			t.Errorf("Run(fail) = %v, %v, want verdict fail, exit 67\n%s", res, err, res.Explain())
		}
	})
	t.Run("poweroff", func(t *testing.T) {
		res, err := run("poweroff", time.Minute)
		if err != nil || res.Verdict != VerdictNone || res.ExitCode != 0 ||
			!reflect.DeepEqual(res.Phases(), []string{"booted", "poweroff"}) {
			t.Errorf("Run(poweroff) = %v, want verdict none, exit 0, phases booted poweroff\n%s", err, res.Explain())
		}
	})
	t.Run("panic", func(t *testing.T) {
		res, err := run("panic", time.Minute)
		if err != nil || res.Verdict != VerdictNone || res.ExitCode != 0 {
			t.Errorf("Run(panic) = %v, want verdict none, exit 0\n%s", err, res.Explain())
		}
	})
	t.Run("hang", func(t *testing.T) {
		// Long enough for the console line to come out while the other
		// scenarios' VMs share the two cores; a hang costs only time.
		const timeout = 20 * time.Second
		start := time.Now()
		res, err := run("hang", timeout)
		if err == nil || !strings.Contains(err.Error(), "timed out") || !strings.Contains(err.Error(), "smokeinit: console works") {
			t.Errorf("Run(hang) = %v, want a timeout error with the console", err)
		}
		if res == nil {
			t.Fatalf("Run(hang) result = nil, want the partial result")
		}
		if res.ExitCode != -1 || time.Since(start) > timeout+5*time.Second {
			t.Errorf("Run(hang) exit %d after %v, want killed qemu (exit -1) within %v", res.ExitCode, time.Since(start), timeout+5*time.Second)
		}
	})
}
