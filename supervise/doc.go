// Package supervise is the supervisor that every nest init runs: it starts
// units (services now, containers later) with pidfds, reaps every child
// through one Reaper, orders starts by `after`, restarts with exponential
// backoff, tracks sd_notify readiness, captures logs into files and ring
// buffers, stops units in reverse dependency order, and serves the control
// socket.
//
// It never mounts, reboots or touches the console itself: the caller (the
// init package) owns the machine and passes in what the supervisor may use.
package supervise
