package net

import (
	"encoding/binary"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestNetworkLoopbackGuard: route_localnet on the bridge (for published
// ports on 127.0.0.1) must not let a container reach what listens on the
// parent's loopback (CVE-2020-8558). The container sends a hand-made TCP
// SYN to 127.0.0.1 out of its eth0; the parent must not answer. The same
// SYN to the gateway's address is answered, so the probe itself works.
func TestNetworkLoopbackGuard(t *testing.T) {
	needRoot(t)
	n, parent := openTest(t, "10.94.0.0/24")
	web := newNetNS(t)
	a, err := n.Attach(Endpoint{Name: "web", NetNS: web})
	if err != nil {
		t.Fatal(err)
	}
	listen(t, parent, "tcp", "127.0.0.1:6000")
	listen(t, parent, "tcp", "10.94.0.1:6001")
	br, err := n.h.LinkByName(n.opts.Bridge)
	if err != nil {
		t.Fatal(err)
	}
	mac := br.Attrs().HardwareAddr
	src := a.Address.Addr()
	if !synAnswered(t, web, mac, src, netip.MustParseAddr("10.94.0.1"), 6001) {
		t.Fatal("a SYN to the gateway's listener was not answered: the probe does not work")
	}
	if synAnswered(t, web, mac, src, netip.MustParseAddr("127.0.0.1"), 6000) {
		t.Error("a container reached a listener on the parent's loopback")
	}
}

// synAnswered sends a TCP SYN from src to dst:port as a raw frame to mac
// out of eth0 in ns, and reports whether a SYN-ACK from dst:port comes
// back within half a second.
func synAnswered(t *testing.T, ns *os.File, mac []byte, src, dst netip.Addr, port uint16) bool {
	t.Helper()
	var answered bool
	err := inNetNS(ns, func() error {
		proto := int(htons(unix.ETH_P_IP))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		idx, err := ifindex(fd, ContainerLink)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: idx}); err != nil {
			return err
		}
		to := &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: idx, Halen: 6}
		copy(to.Addr[:], mac)
		if err := unix.Sendto(fd, synPacket(src, dst, 40000, port), 0, to); err != nil {
			return err
		}
		deadline := time.Now().Add(500 * time.Millisecond)
		buf := make([]byte, 2048)
		for time.Now().Before(deadline) {
			tv := unix.NsecToTimeval(int64(time.Until(deadline)))
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				break
			}
			p := buf[:n]
			if len(p) < 40 || p[9] != unix.IPPROTO_TCP {
				continue
			}
			ihl := int(p[0]&0xf) * 4
			from := netip.AddrFrom4([4]byte(p[12:16]))
			tcp := p[ihl:]
			if from == dst && binary.BigEndian.Uint16(tcp[0:2]) == port && tcp[13]&0x12 == 0x12 {
				answered = true
				break
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return answered
}

func ifindex(fd int, name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// synPacket is an IPv4 packet with a TCP SYN and valid checksums.
func synPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	p := make([]byte, 40)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(p[2:], 40)
	copy(p[12:16], src.AsSlice())
	copy(p[16:20], dst.AsSlice())
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20]))
	tcp := p[20:]
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], 1)
	tcp[12], tcp[13] = 5<<4, 0x02 // header length, SYN
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	pseudo := append(append(append([]byte{}, p[12:20]...), 0, unix.IPPROTO_TCP, 0, 20), tcp...)
	binary.BigEndian.PutUint16(tcp[16:], checksum(pseudo))
	return p
}

func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
