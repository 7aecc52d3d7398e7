package net

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Kernel features used here: setns(2) on a netns fd (3.0), per-device
// IPv4 settings through RTM_SETLINK IFLA_AF_SPEC/IFLA_INET_CONF (3.7).

// handleAt returns a netlink handle whose sockets live in the namespace
// ns (nil: the caller's). The handle acts there from any goroutine.
func handleAt(ns *os.File) (*netlink.Handle, error) {
	if ns == nil {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	return netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
}

// inNetNS runs f on an OS thread of its own that has joined ns (nil: f
// runs here). The thread is never handed back to the scheduler: it ends
// with f, so nothing else ever runs in ns by accident.
func inNetNS(ns *os.File, f func() error) error {
	if ns == nil {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // and never unlocked: the thread dies with this goroutine
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// The per-device IPv4 settings nest changes (linux/ip.h).
const (
	devconfForwarding    = 1  // IPV4_DEVCONF_FORWARDING
	devconfRouteLocalnet = 26 // IPV4_DEVCONF_ROUTE_LOCALNET
)

// setDevconf sets per-device IPv4 settings (net.ipv4.conf.DEV.*) of the
// link index in ns through netlink: no /proc/sys, which a container's
// init sees read-only.
func setDevconf(ns *os.File, index int, conf map[int]uint32) error {
	nsh := netns.None()
	if ns != nil {
		nsh = netns.NsHandle(ns.Fd())
	}
	s, err := nl.GetNetlinkSocketAt(nsh, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer s.Close()
	tv := unix.NsecToTimeval((5 * time.Second).Nanoseconds())
	if err := s.SetReceiveTimeout(&tv); err != nil {
		return err
	}
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	cf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	for id, v := range conf {
		cf.AddRtAttr(id, nl.Uint32Attr(v))
	}
	req.AddData(spec)
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// enableForwarding turns IPv4 forwarding on in ns: net.ipv4.ip_forward,
// which covers every interface, present and future; where /proc/sys is
// read-only (a container's init), forwarding of each interface there is
// now, which is all a container's namespace has.
func enableForwarding(ns *os.File, h *netlink.Handle) error {
	err := inNetNS(ns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0)
	})
	if err == nil {
		return nil
	}
	links, lerr := retryDump(h.LinkList)
	if lerr != nil {
		return fmt.Errorf("ip_forward: %v; links: %w", err, lerr)
	}
	for _, l := range links {
		if l.Attrs().Flags&unix.IFF_LOOPBACK != 0 {
			continue
		}
		if derr := setDevconf(ns, l.Attrs().Index, map[int]uint32{devconfForwarding: 1}); derr != nil {
			return fmt.Errorf("ip_forward: %v; forwarding on %s: %w", err, l.Attrs().Name, derr)
		}
	}
	return nil
}

// retryDump calls a netlink dump until it is not interrupted by a change
// made while it ran (netlink returns partial data then).
func retryDump[T any](dump func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 9 {
			return v, err
		}
	}
}

// OpenNetNS opens the network namespace of process pid. alive must report
// whether that process still exists, asked after the open (through its
// pidfd), so that a pid reused in between is never mistaken for it.
func OpenNetNS(pid int, alive func() bool) (*os.File, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("network namespace of %d: %w", pid, err)
	}
	if !alive() {
		f.Close()
		return nil, fmt.Errorf("network namespace of %d: the process has exited", pid)
	}
	return f, nil
}
