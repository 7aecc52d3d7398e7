// Package escalate owns the socket between a child and its parent: the wire
// format that the link (a child init's socketpair to its parent) and the
// escalation socket share, and escalation itself, `nest escalate`.
//
// The wire format (wire.go, conn.go): a packet is one SOCK_SEQPACKET
// message holding one JSON Message of at most MaxMessage bytes, with at
// most MaxFDs file descriptors attached by SCM_RIGHTS. The set of message
// types is closed (Types); anything else a peer sends is a
// *ProtocolError. The side that reads treats every packet as hostile:
// sizes and fd counts are capped before anything is decoded, decoding is
// strict (unknown or repeated fields, trailing data, invalid UTF-8 and
// unknown types are errors), a packet that breaks a rule has its fds
// closed before Recv returns, and Serve answers each packet under recover
// so that a bad packet costs the peer its connection, never the process.
//
// Escalation (proto.go): the Broker (broker.go) serves the sockets its
// init hands it, one per child with that child's Policy; it checks a
// request (policy.go), proves it by the policy's method (an SSHSIG
// signature, sshsig.go; a password hash, password.go; a person's
// approval), limits failures (limit.go), records every attempt (audit.go)
// and runs the session (session.go, pty.go) as a process of its own. The
// Client (client.go) is the other end, in the child.
//
// Lifetimes: a Conn owns its socket; each fd that Recv returns is one
// *os.File with no other owner, so closing it is the receiver's job and
// closing it twice is harmless. A Broker runs a goroutine per socket and
// per connection, each under recover; they end with the socket or the
// connection.
//
// The wire format decides nothing: who the peer is and what it may ask
// for are its callers' business (the link's in supervise, escalation's
// in the broker). The broker never reads the child's file system, never
// takes its identity from what a client says, and never sends a child an
// fd.
package escalate
