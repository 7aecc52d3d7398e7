// Package escalate owns the socket between a child and its parent: the wire
// format that the link (a child init's socketpair to its parent) and the
// escalation socket share, and its limits. A packet is one SOCK_SEQPACKET
// message holding one JSON Message of at most MaxMessage bytes, with at most
// MaxFDs file descriptors attached by SCM_RIGHTS. The set of message types
// is closed (Types); anything else a peer sends is a *ProtocolError.
//
// The side that reads treats every packet as hostile: sizes and fd counts
// are capped before anything is decoded, decoding is strict (unknown or
// repeated fields, trailing data, invalid UTF-8 and unknown types are
// errors), a packet that breaks a rule has its fds closed before Recv
// returns, and Serve answers each packet under recover so that a bad packet
// costs the peer its connection, never the process.
//
// Lifetimes: a Conn owns its socket; each fd that Recv returns is one
// *os.File with no other owner, so closing it is the receiver's job and
// closing it twice is harmless. Nothing here starts a goroutine.
//
// It never decides anything: it does not know who the peer is, what a
// message may ask for, or whether to answer it. Policy, authentication
// (SO_PEERCRED, keys, passwords) and sessions come with the escalation
// issue and live in its callers.
package escalate
