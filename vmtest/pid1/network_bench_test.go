//go:build vmguest

package pid1

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"nest/supervise"
)

// TestNetBenchGuest measures veth networks for `make bench`
// (BenchmarkNetwork in vmtest): how much longer a veth container takes
// from start to ready than a none one (medians of 20 starts each), and
// TCP throughput from one container to another over the bridge against
// the same over loopback (helper "tcpsource", whose log carries the
// numbers).
func TestNetBenchGuest(t *testing.T) {
	c := supervise.NewClient("/run/nest/nest.sock")
	ctx := context.Background()
	startMS := func(name string) float64 {
		var ms []float64
		for i := range 21 {
			if st, err := c.Act(ctx, "stop", name); err != nil || st.State != supervise.StateStopped {
				t.Fatalf("stop %s: %+v, %v", name, st, err)
			}
			start := time.Now()
			st, err := c.Act(ctx, "start", name)
			d := time.Since(start)
			if err != nil || st.State != supervise.StateRunning {
				t.Fatalf("start %s: %+v, %v", name, st, err)
			}
			if i > 0 { // the first warms the page cache
				ms = append(ms, float64(d.Microseconds())/1000)
			}
		}
		slices.Sort(ms)
		return ms[len(ms)/2]
	}
	none, veth := startMS("plain"), startMS("wired")
	report("start_none_ms", fmt.Sprintf("%.1f", none))
	report("start_veth_ms", fmt.Sprintf("%.1f", veth))
	report("veth_adds_ms", fmt.Sprintf("%.1f", veth-none))

	// Now the throughput, alone: tcpb waits for this port to open.
	l, err := net.Listen("tcp", ":5002")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	var out string
	until(t, 120*time.Second, "the throughput figures of tcpb", func() bool {
		out, _ = nest(t, "logs", "tcpb")
		return strings.Contains(out, "loopback_MBps")
	})
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "NESTBENCH" {
			report(f[1], f[2])
		}
	}
}

// benchBytes is how much one throughput run sends.
const benchBytes = 64 << 20

// tcpSink serves every connection on :5001 by reading it to the end, then
// writing one byte back (helper "tcpsink").
func tcpSink() int {
	l, err := net.Listen("tcp", ":5001")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return 1
		}
		go func() {
			defer c.Close()
			io.Copy(io.Discard, c)
			c.Write([]byte{1})
		}()
	}
}

// tcpSource runs a sink of its own, waits until $NEST_BENCH_GO accepts a
// connection, then sends benchBytes to the sink at $NEST_BENCH_PEER over
// the bridge and to its own over loopback, and prints the throughput of
// each (helper "tcpsource").
func tcpSource() int {
	go tcpSink()
	for {
		if c, err := net.Dial("tcp", os.Getenv("NEST_BENCH_GO")); err == nil {
			c.Close()
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	peer := os.Getenv("NEST_BENCH_PEER")
	send := func(addr string) (float64, error) {
		var c net.Conn
		var err error
		for range 100 { // until the sink listens
			if c, err = net.Dial("tcp", addr); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			return 0, err
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		start := time.Now()
		for sent := 0; sent < benchBytes; sent += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return 0, err
			}
		}
		c.(*net.TCPConn).CloseWrite()
		if _, err := c.Read(buf[:1]); err != nil {
			return 0, err
		}
		return float64(benchBytes) / 1e6 / time.Since(start).Seconds(), nil
	}
	for _, run := range []struct{ key, addr string }{{"bridge_MBps", peer + ":5001"}, {"loopback_MBps", "127.0.0.1:5001"}} {
		mbps, err := send(run.addr)
		if err != nil {
			fmt.Println("tcpsource:", err)
			return 1
		}
		fmt.Printf("NESTBENCH %s %.1f\n", run.key, mbps)
	}
	for {
		time.Sleep(time.Hour)
	}
}
