package net

import (
	"fmt"
	"io"
	stdnet "net"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"
)

// BenchmarkAttach is what veth adds to a container's start on this host's
// real CPU (the VM benchmark, BenchmarkNetwork in vmtest, measures it from
// start to ready under TCG): Attach (the pair, made in the container's
// namespace and configured there, and its rules) and Detach, medians of 50
// in ms. The namespace itself is made for none containers too, untimed.
// Run with -benchtime 1x.
func BenchmarkAttach(b *testing.B) {
	needRoot(b)
	for b.Loop() {
		n, _ := openBench(b, "10.92.0.0/24")
		var attach, detach []float64
		for range 50 {
			ns := newNetNS(b)
			start := time.Now()
			if _, err := n.Attach(Endpoint{Name: "c", NetNS: ns, NAT: true, Publish: []Port{{8080, 80, "tcp"}}}); err != nil {
				b.Fatal(err)
			}
			attach = append(attach, ms(time.Since(start)))
			start = time.Now()
			if err := n.Detach("c"); err != nil {
				b.Fatal(err)
			}
			detach = append(detach, ms(time.Since(start)))
			ns.Close()
		}
		b.ReportMetric(median(attach), "attach_ms")
		b.ReportMetric(median(detach), "detach_ms")
	}
}

// BenchmarkThroughput is TCP throughput from one container to another
// over the bridge against the same over loopback in one container, 1 GiB
// each, in MB/s.
func BenchmarkThroughput(b *testing.B) {
	needRoot(b)
	for b.Loop() {
		n, _ := openBench(b, "10.91.0.0/24")
		a, c := newNetNS(b), newNetNS(b)
		at, err := n.Attach(Endpoint{Name: "a", NetNS: a})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := n.Attach(Endpoint{Name: "c", NetNS: c}); err != nil {
			b.Fatal(err)
		}
		sink(b, a, at.Address.Addr().String()+":5001")
		sink(b, c, "127.0.0.1:5001")
		b.ReportMetric(send(b, c, at.Address.Addr().String()+":5001"), "bridge_MBps")
		b.ReportMetric(send(b, c, "127.0.0.1:5001"), "loopback_MBps")
	}
}

const benchBytes = 1 << 30

func openBench(b *testing.B, subnet string) (*Network, *os.File) {
	b.Helper()
	parent := newNetNS(b)
	n, err := Open(Options{Subnet: mustPrefix(subnet), NetNS: parent})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { n.Close() })
	return n, parent
}

// sink reads every connection to addr in ns to the end, then answers one
// byte.
func sink(b *testing.B, ns *os.File, addr string) {
	l := listen(b, ns, "tcp", addr).(stdnet.Listener)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			io.Copy(io.Discard, c)
			c.Write([]byte{1})
			c.Close()
		}
	}()
}

// send writes benchBytes to addr from ns and returns MB/s.
func send(b *testing.B, ns *os.File, addr string) float64 {
	var c stdnet.Conn
	err := inNetNS(ns, func() error {
		var err error
		c, err = stdnet.Dial("tcp4", addr)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < benchBytes; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.(*stdnet.TCPConn).CloseWrite()
	if _, err := c.Read(buf[:1]); err != nil {
		b.Fatal(fmt.Errorf("%s: %w", addr, err))
	}
	return float64(benchBytes) / 1e6 / time.Since(start).Seconds()
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	v = slices.Sorted(slices.Values(v))
	return v[len(v)/2]
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
