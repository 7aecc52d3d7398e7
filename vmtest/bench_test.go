package vmtest

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkPID1 is `make bench`: nest as PID 1 in the VM with 10 services.
// It reports the binary size, nest's own time from exec to every unit up,
// PID 1's RSS idle and after 500 spawns, and the restart latency after a
// crash (which includes the 100 ms first backoff by design). Run with
// -benchtime 1x: one boot is one measurement.
func BenchmarkPID1(b *testing.B) {
	var cfg strings.Builder
	cfg.WriteString("console = \"none\"\n")
	for i := range 10 {
		fmt.Fprintf(&cfg, "\n[[service]]\nname = \"svc%d\"\nexec = [\"/bin/sleep\", \"100000\"]\nrestart = \"always\"\n", i)
	}
	cfg.WriteString("\n[[service]]\nname = \"spawn\"\nexec = [\"/bin/true\"]\nrestart = \"no\"\n")
	cfg.WriteString("\n[[service]]\nname = \"bench\"\nexec = [\"/tests/pid1.test\", \"-test.v\", \"-test.run\", \"^TestBenchGuest$\"]\nrestart = \"no\"\n")

	for b.Loop() {
		initrd := scenario{config: cfg.String()}.image(b)
		r := RunTest(b, &VM{Kernel: TestKernel(b), Initrd: initrd, Memory: 1024})
		fi, err := os.Stat(nestBin)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(fi.Size())/1e6, "binary_MB")
		if m := regexp.MustCompile(`all units up (\d+) ms after start`).FindStringSubmatch(r.Console); m != nil {
			ms, _ := strconv.ParseFloat(m[1], 64)
			b.ReportMetric(ms, "exec_to_ready_ms")
		}
		reportGuest(b, r)
	}
}

// reportGuest reports each "NESTBENCH key value" line of the guest as a
// metric.
func reportGuest(b *testing.B, r *Result) {
	for _, line := range r.Lines() {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "NESTBENCH" {
			v, _ := strconv.ParseFloat(f[2], 64)
			b.ReportMetric(v, f[1])
		}
	}
}

// BenchmarkSiblings is `make bench`'s many-containers measurement: nest as
// PID 1 in the VM with N sibling daemon containers (100, then 1,000), each
// a child init running `sleep` with the default sandbox, and the guest
// test TestSiblingsGuest beside them. It reports the time from PID 1's
// exec to all N running, PID 1's RSS and USS then, and the RSS, PSS and
// USS (Private_Clean + Private_Dirty of smaps_rollup) of one idle child
// init, and the memory the guest uses in all. Under TCG emulation the
// times are the emulator's, tens of times the hardware's.
func BenchmarkSiblings(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("n=%d", n), func(b *testing.B) {
			var cfg strings.Builder
			cfg.WriteString("console = \"none\"\n")
			for i := range n {
				fmt.Fprintf(&cfg, "\n[container.c%04d]\nkind = \"daemon\"\nexec = [\"/bin/sleep\", \"100000\"]\n", i)
			}
			fmt.Fprintf(&cfg, "\n[[service]]\nname = \"bench\"\nexec = [\"/tests/pid1.test\", \"-test.v\", \"-test.run\", \"^TestSiblingsGuest$\"]\n"+
				"env = { NEST_SIBLINGS = \"%d\" }\nrestart = \"no\"\n", n)
			for b.Loop() {
				initrd := scenario{config: cfg.String()}.image(b)
				// About 4 MB per container (its init, sleep, the kernel's
				// namespaces) on top of the 1 GB of the other scenarios.
				vm := &VM{Kernel: TestKernel(b), Initrd: initrd, Memory: 1024 + 4*n, Timeout: time.Duration(n/10+5) * time.Minute}
				r := RunTest(b, vm)
				for _, line := range r.Lines() {
					f := strings.Fields(line)
					if len(f) == 3 && f[0] == "NESTBENCH" {
						v, _ := strconv.ParseFloat(f[2], 64)
						b.ReportMetric(v, f[1])
					}
				}
			}
		})
	}
}
