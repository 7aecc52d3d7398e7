package escalate

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Every kernel feature used here is in Linux 2.6.32: AF_UNIX SOCK_SEQPACKET
// (2.6.4), POLLRDHUP (2.6.17), MSG_CMSG_CLOEXEC (2.6.23), F_DUPFD_CLOEXEC
// (2.6.24), SOCK_NONBLOCK|SOCK_CLOEXEC on socketpair (2.6.27), SO_DOMAIN
// (2.6.32).
//
// The socket is non-blocking and registered with the runtime's poller, and
// every sendmsg/recvmsg runs inside os.File's RawConn: a Recv that waits
// parks its goroutine, not a thread, and deadlines and Close wake it.

// A Conn is one end of a link or escalation socket. Its methods may be
// called from several goroutines at once: the runtime lets one sender and
// one receiver at a time into the socket, and SOCK_SEQPACKET keeps each
// packet whole.
type Conn struct {
	f      *os.File
	rc     syscall.RawConn
	maxFDs atomic.Int32 // fds one received packet may carry
	closed atomic.Bool
}

// A ProtocolError is a packet that breaks the wire format: too long, too
// many fds, a control message other than SCM_RIGHTS, empty, or refused by
// Decode. Its fds have been closed. Packets stay whole, so the connection is
// still in step, but the peer is broken or hostile.
type ProtocolError struct {
	ID  uint64 // the id the packet gave, if it could be read; else 0
	Err error
}

func (e *ProtocolError) Error() string { return "protocol violation: " + e.Err.Error() }
func (e *ProtocolError) Unwrap() error { return e.Err }

// Pair returns the two connected ends of a new socketpair, both
// close-on-exec. To hand one end to a child, put b.File() in its
// ExtraFiles (Fd keeps the socket non-blocking, which the child's NewConn
// expects) and close b in the parent once the child has started.
func Pair() (a, b *Conn, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("escalate: socketpair: %w", err)
	}
	return newConn(os.NewFile(uintptr(fds[0]), "socketpair")), newConn(os.NewFile(uintptr(fds[1]), "socketpair")), nil
}

// NewConn makes a Conn of f, which must be a connected AF_UNIX
// SOCK_SEQPACKET socket, such as the end of a Pair that a child inherited.
// NewConn owns f from the call on: on error it has closed it. A blocking f
// is replaced by a non-blocking duplicate (same socket, new descriptor
// number) so that deadlines work.
func NewConn(f *os.File) (*Conn, error) {
	if f == nil {
		return nil, errors.New("escalate: NewConn of a nil file")
	}
	fail := func(err error) (*Conn, error) {
		f.Close()
		return nil, fmt.Errorf("escalate: %s: %w", f.Name(), err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return fail(err)
	}
	var nonblock bool
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		if cerr = checkSocket(int(fd)); cerr != nil {
			return
		}
		var flags int
		flags, cerr = unix.FcntlInt(fd, unix.F_GETFL, 0)
		nonblock = flags&unix.O_NONBLOCK != 0
	}); err != nil {
		return fail(err)
	}
	if cerr != nil {
		return fail(cerr)
	}
	// SetDeadline fails on a file that os.NewFile did not register with
	// the poller, which it does only for descriptors already non-blocking.
	if nonblock && f.SetDeadline(time.Time{}) == nil {
		return newConn(f), nil
	}
	dup := -1
	if err := rc.Control(func(fd uintptr) {
		if dup, cerr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0); cerr == nil {
			cerr = unix.SetNonblock(dup, true)
		}
	}); err != nil {
		cerr = err
	}
	if cerr != nil {
		if dup >= 0 {
			unix.Close(dup) // never wrapped in a File: this is its one owner
		}
		return fail(cerr)
	}
	name := f.Name()
	f.Close()
	nf := os.NewFile(uintptr(dup), name)
	if err := nf.SetDeadline(time.Time{}); err != nil {
		nf.Close()
		return nil, fmt.Errorf("escalate: %s: socket cannot be polled: %w", name, err)
	}
	return newConn(nf), nil
}

func newConn(f *os.File) *Conn {
	rc, _ := f.SyscallConn() // fails only for a nil File
	c := &Conn{f: f, rc: rc}
	c.maxFDs.Store(MaxFDs)
	return c
}

// checkSocket says what is wrong with fd for a Conn, if anything.
func checkSocket(fd int) error {
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if errors.Is(err, unix.ENOTSOCK) {
		return errors.New("not a socket")
	}
	if err != nil {
		return fmt.Errorf("getsockopt SO_DOMAIN: %w", err)
	}
	if domain != unix.AF_UNIX {
		return fmt.Errorf("not a unix socket (address family %d)", domain)
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("getsockopt SO_TYPE: %w", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		names := map[int]string{unix.SOCK_STREAM: "SOCK_STREAM", unix.SOCK_DGRAM: "SOCK_DGRAM"}
		name := names[typ]
		if name == "" {
			name = fmt.Sprintf("type %d", typ)
		}
		return fmt.Errorf("a %s unix socket, want SOCK_SEQPACKET", name)
	}
	listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
	if err != nil {
		return fmt.Errorf("getsockopt SO_ACCEPTCONN: %w", err)
	}
	if listening != 0 {
		return errors.New("a listening socket, want a connection")
	}
	return nil
}

// File returns the socket, for handing it to another process. The Conn
// still owns it.
func (c *Conn) File() *os.File { return c.f }

// String names the connection, for logs.
func (c *Conn) String() string { return c.f.Name() }

// LimitFDs sets how many fds one received packet may carry, from 0 to
// MaxFDs (the default). With 0 the kernel never installs a peer's fds in
// this process: it drops them and the packet is a protocol violation. Set
// 0 wherever no fds are expected (the parent's end of a link): a received
// fd can stall the process that polls or closes it, as a FUSE file served
// by the peer does.
func (c *Conn) LimitFDs(n int) {
	c.maxFDs.Store(int32(min(max(n, 0), MaxFDs)))
}

// SetDeadline, SetReadDeadline and SetWriteDeadline bound the waits of
// Recv and Send, as for os.File: past a deadline they fail with an error
// that matches os.ErrDeadlineExceeded.
func (c *Conn) SetDeadline(t time.Time) error      { return c.f.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.f.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.f.SetWriteDeadline(t) }

// Close closes the socket and wakes any Send or Recv waiting on it; they
// return an error matching os.ErrClosed.
func (c *Conn) Close() error {
	c.closed.Store(true)
	return c.f.Close()
}

// fail gives an error of the socket its context.
func (c *Conn) fail(op string, err error) error {
	if c.closed.Load() && !errors.Is(err, os.ErrDeadlineExceeded) {
		err = os.ErrClosed // the runtime says "use of closed file", which nothing matches
	}
	return fmt.Errorf("escalate: %s: %s: %w", c, op, err)
}

// Send sends m as one packet, with fds attached. m.Type must be in Types,
// m must marshal to at most MaxMessage bytes, and at most MaxFDs fds go in
// one packet. The fds stay open in the caller. A peer that stops reading
// makes Send wait once the socket's buffer is full: bound it with
// SetWriteDeadline, or Close the Conn.
func (c *Conn) Send(m *Message, fds ...*os.File) error {
	if m == nil {
		return errors.New("escalate: Send of a nil message")
	}
	if !Types[m.Type] {
		return fmt.Errorf("escalate: send: unknown message type %s", quote(m.Type))
	}
	if len(fds) > MaxFDs {
		return fmt.Errorf("escalate: send %s: %d fds, the limit is %d", m.Type, len(fds), MaxFDs)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("escalate: send %s: %w", m.Type, err)
	}
	if len(b) > MaxMessage {
		return fmt.Errorf("escalate: send %s: message of %d bytes is over the limit of %d", m.Type, len(b), MaxMessage)
	}
	err = withFDs(fds, nil, func(nums []int) error {
		var oob []byte
		if len(nums) > 0 {
			oob = unix.UnixRights(nums...)
		}
		var serr error
		err := c.rc.Write(func(fd uintptr) bool {
			for {
				// MSG_NOSIGNAL: a dead peer is EPIPE, not SIGPIPE.
				serr = unix.Sendmsg(int(fd), b, oob, nil, unix.MSG_NOSIGNAL)
				if serr != unix.EINTR {
					return serr != unix.EAGAIN
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	})
	if err != nil {
		return c.fail("send "+m.Type, err)
	}
	return nil
}

// withFDs calls send with the descriptor numbers of files, each held open
// by its File's Control for the whole call, so that none is closed (and its
// number reused) between being read and being sent. Fd would do without
// the nesting but would put each file into blocking mode.
func withFDs(files []*os.File, nums []int, send func([]int) error) error {
	if len(files) == 0 {
		return send(nums)
	}
	if files[0] == nil {
		return errors.New("nil file among the fds")
	}
	rc, err := files[0].SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = withFDs(files[1:], append(nums, int(fd)), send)
	}); err != nil {
		return fmt.Errorf("fd %s: %w", files[0].Name(), err)
	}
	return serr
}

// recvBufs holds packet buffers: one byte more than MaxMessage, so that a
// packet over the limit shows as one.
var recvBufs = sync.Pool{New: func() any { return new([MaxMessage + 1]byte) }}

// Recv waits for one packet and returns its message and fds. Each fd is one
// *os.File that the caller owns. A packet that breaks the wire format is a
// *ProtocolError, and its fds are closed before Recv returns; no other
// error leaves fds behind either. When the peer has closed its end (or
// shut it down for writing), Recv returns io.EOF.
func (c *Conn) Recv() (*Message, []*os.File, error) {
	// A link's reader waits in Recv most of its life: the buffer is taken
	// once a packet (or the end) is there, not for the wait, or a parent
	// init would hold 64 KiB for each child it has.
	var buf *[MaxMessage + 1]byte
	defer func() {
		if buf != nil {
			recvBufs.Put(buf)
		}
	}()
	limit := int(c.maxFDs.Load())
	var oob []byte
	if limit > 0 {
		// Rounded up to alignment this may hold one fd over the limit,
		// which the count below refuses.
		oob = make([]byte, unix.CmsgSpace(4*limit))
	}
	var n, oobn, flags int
	var rerr error
	var hup bool
	err := c.rc.Read(func(fd uintptr) bool {
		if buf == nil {
			if !readable(int(fd)) {
				return false
			}
			buf = recvBufs.Get().(*[MaxMessage + 1]byte)
		}
		n, oobn, flags, rerr = recvmsg(int(fd), buf[:], oob)
		if rerr == unix.ECONNRESET {
			// The peer closed with packets of ours unread. The kernel
			// says so once, before the packets the peer sent: read on,
			// so that its last words (an error, say) are not lost.
			n, oobn, flags, rerr = recvmsg(int(fd), buf[:], oob)
		}
		if rerr == unix.EAGAIN {
			return false
		}
		if rerr == nil && n == 0 && oobn == 0 {
			hup = peerGone(int(fd))
		}
		return true
	})
	if err != nil {
		return nil, nil, c.fail("recv", err)
	}
	if rerr != nil {
		return nil, nil, c.fail("recvmsg", rerr)
	}
	m, files, err := packet(buf[:n], oob[:oobn], flags, limit, hup)
	if err != nil && err != io.EOF {
		err = fmt.Errorf("escalate: %s: %w", c, err)
	}
	return m, files, err
}

// packet checks and decodes one received packet. Until the packet is
// accepted its fds are plain numbers owned by this function, closed as
// numbers on every way out but success (a panic too): no *os.File is ever
// made for a refused fd, so no finalizer can close a reused number later.
func packet(b, oob []byte, flags, limit int, hup bool) (*Message, []*os.File, error) {
	fds, cerr := parseRights(oob)
	keep := false
	defer func() {
		if !keep {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
	}()
	violation := func(err error) (*Message, []*os.File, error) {
		pe := &ProtocolError{Err: err}
		if len(b) <= MaxMessage {
			pe.ID = probeID(b)
		}
		return nil, nil, pe
	}
	switch {
	case cerr != nil:
		return violation(cerr)
	case flags&unix.MSG_CTRUNC != 0:
		return violation(fmt.Errorf("packet carries more fds than the %d allowed (control data truncated)", limit))
	case len(fds) > limit:
		return violation(fmt.Errorf("packet carries %d fds, more than the %d allowed", len(fds), limit))
	case flags&unix.MSG_TRUNC != 0 || len(b) > MaxMessage:
		return violation(fmt.Errorf("packet is over the limit of %d bytes", MaxMessage))
	case len(b) == 0 && hup:
		return nil, nil, io.EOF
	case len(b) == 0:
		// A zero-length packet reads like end of file; poll told them
		// apart (the peer has not shut its end).
		return violation(errors.New("empty packet"))
	}
	m, err := Decode(b)
	if err != nil {
		return violation(err)
	}
	keep = true
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		files[i] = os.NewFile(uintptr(fd), fmt.Sprintf("%s fd %d", m.Type, i))
	}
	return m, files, nil
}

// recvmsg is recvmsg(2) without a source address, which x/sys's Recvmsg
// would decode (and could fail on after the fds had arrived). The fds
// arrive close-on-exec, so no process started meanwhile inherits them.
func recvmsg(fd int, p, oob []byte) (n, oobn, flags int, err error) {
	iov := unix.Iovec{Base: &p[0]}
	iov.SetLen(len(p))
	msg := unix.Msghdr{Iov: &iov}
	msg.SetIovlen(1)
	if len(oob) > 0 {
		msg.Control = &oob[0]
		msg.SetControllen(len(oob))
	}
	for {
		r, _, e := unix.Syscall(unix.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&msg)), unix.MSG_CMSG_CLOEXEC)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, 0, 0, e
		}
		return int(r), int(msg.Controllen), int(msg.Flags), nil
	}
}

// readable reports whether a read of fd would not block: a packet, the
// end, or an error is there.
func readable(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		// On an error, let recvmsg report it.
		return err != nil || n > 0
	}
}

// peerGone tells a read of 0 bytes at end of file from a zero-length packet.
func peerGone(fd int) bool {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(p, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0 && p[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
	}
}

// parseRights returns every fd in the control messages, also when it finds
// something wrong with them, so that the caller can close them all.
func parseRights(oob []byte) (fds []int, err error) {
	for len(oob) > 0 {
		if len(oob) < unix.SizeofCmsghdr {
			return fds, errors.New("malformed control message")
		}
		h, data, rest, perr := unix.ParseOneSocketControlMessage(oob)
		if perr != nil {
			return fds, fmt.Errorf("malformed control message: %w", perr)
		}
		if h.Level == unix.SOL_SOCKET && h.Type == unix.SCM_RIGHTS {
			for ; len(data) >= 4; data = data[4:] {
				fds = append(fds, int(int32(binary.NativeEndian.Uint32(data))))
			}
		} else if err == nil {
			err = fmt.Errorf("unexpected control message (level %d, type %d)", h.Level, h.Type)
		}
		oob = rest
	}
	return fds, err
}

// probeID reads a refused packet's id, if it has one, so that the refusal
// can answer it.
func probeID(b []byte) uint64 {
	var p struct {
		ID uint64 `json:"id"`
	}
	if json.Unmarshal(b, &p) != nil {
		return 0
	}
	return p.ID
}

// Serve receives packets until the connection ends and passes each message
// to handle with its fds, which handle then owns. Serve owns c and closes
// it when it returns.
//
// handle's answer is sent with the request's ID. An error from handle is
// logged and, if the request has an ID, sent as an "error" message; its
// text goes to the peer, so it must be fit for the peer to read. Serving
// goes on after either.
//
// A protocol violation or a panic in handle is logged with its context,
// answered with an "error" message if the packet had an ID, and ends
// Serve with that error (a panic's fds are closed). Serve returns io.EOF
// when the peer hangs up, and the socket's error when it fails.
func Serve(c *Conn, handle func(*Message, []*os.File) (*Message, error), logf func(string, ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	defer c.Close()
	for {
		if err := serveOne(c, handle, logf); err != nil {
			return err
		}
	}
}

// maxErrorText bounds the text of an "error" answer.
const maxErrorText = 1 << 10

func serveOne(c *Conn, handle func(*Message, []*os.File) (*Message, error), logf func(string, ...any)) (err error) {
	var m *Message
	var files []*os.File
	answer := func(id uint64, text string) {
		if id == 0 {
			return
		}
		if len(text) > maxErrorText {
			text = text[:maxErrorText] + "…"
		}
		// The peer may be gone already; its hangup shows at the next Recv.
		if err := c.Send(&Message{Type: "error", ID: id, Error: text}); err != nil {
			logf("escalate: %s: answering %d: %v", c, id, err)
		}
	}
	defer func() {
		r := recover()
		if r == nil {
			return
		}
		for _, f := range files {
			f.Close() // closing a File handle already closed is harmless
		}
		what := "receiving"
		if m != nil {
			what = fmt.Sprintf("handling %s %d", m.Type, m.ID)
		}
		logf("escalate: %s: panic %s: %v\n%s", c, what, r, debug.Stack())
		if m != nil {
			answer(m.ID, "internal error")
		}
		err = fmt.Errorf("escalate: %s: panic %s: %v", c, what, r)
	}()

	m, files, err = c.Recv()
	if err != nil {
		if pe := (*ProtocolError)(nil); errors.As(err, &pe) {
			logf("%v (id %d)", err, pe.ID)
			answer(pe.ID, pe.Err.Error())
		}
		return err
	}
	reply, err := handle(m, files)
	switch {
	case err != nil:
		logf("escalate: %s: %s %d: %v", c, m.Type, m.ID, err)
		answer(m.ID, err.Error())
	case reply != nil:
		reply.ID = m.ID
		if err := c.Send(reply); err != nil {
			return err
		}
	}
	return nil
}
