package vmtest

import (
	"testing"
	"time"
)

const netBenchConfig = `# BenchmarkNetwork's config.
console = "none"

[container.plain]
kind    = "daemon"
exec    = ["/bin/sleep", "100000"]

[container.wired]
kind    = "daemon"
exec    = ["/bin/sleep", "100000"]
network = "veth"
publish = ["8080:80"]

[container.tcpa]
kind    = "daemon"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "tcpsink" }
network = "veth"

[container.tcpb]
kind    = "daemon"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "tcpsource", NEST_BENCH_PEER = "tcpa", NEST_BENCH_GO = "10.88.0.1:5002" }
network = "veth"
after   = ["tcpa"]
restart = "no"

[[service]]
name    = "bench"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestNetBenchGuest$"]
restart = "no"
`

// BenchmarkNetwork is `make bench` for veth networks, nest as PID 1 in the
// VM: the milliseconds veth adds to a container's start-to-ready against
// none (medians of 20), and TCP throughput from one container to another
// over the bridge against the same over loopback. Run with -benchtime 1x.
func BenchmarkNetwork(b *testing.B) {
	for b.Loop() {
		initrd := scenario{config: netBenchConfig, files: map[string]string{
			"/etc/hosts": "127.0.0.1\tlocalhost\n", "/etc/resolv.conf": "",
		}}.image(b)
		reportGuest(b, RunTest(b, &VM{Kernel: TestKernel(b), Initrd: initrd, Memory: 1024, Timeout: 5 * time.Minute}))
	}
}
