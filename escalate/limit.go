package escalate

import (
	"sync"
	"time"
)

// Failed proofs (a wrong key or password) are limited per child: each
// failure delays its answer (failureDelay, doubling), MaxFailures in a row
// lock the child out for Lockout, and a success or FailureWindow without
// failures starts the count again. The state lives in the broker, never
// in the child; a refused attempt while locked out is not checked at all,
// so a child cannot make the parent hash passwords faster than the limit.
const (
	MaxFailures   = 3
	Lockout       = 5 * time.Minute
	FailureWindow = 15 * time.Minute
)

// The first failure's delay (a variable: tests shorten it) and the most.
var (
	failureDelay = 500 * time.Millisecond
	maxDelay     = 4 * time.Second
)

type limiter struct {
	mu          sync.Mutex
	failures    int
	last        time.Time
	lockedUntil time.Time
}

// locked returns how long the child stays locked out; 0 when it is not.
func (l *limiter) locked(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Before(l.lockedUntil) {
		return l.lockedUntil.Sub(now)
	}
	return 0
}

// fail counts a failure and returns how long to wait before answering it.
func (l *limiter) fail(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) > FailureWindow {
		l.failures = 0
	}
	l.failures++
	l.last = now
	d := failureDelay
	for i := 1; i < l.failures && d < maxDelay; i++ {
		d *= 2
	}
	if l.failures >= MaxFailures {
		l.lockedUntil = now.Add(Lockout)
		l.failures = 0
	}
	return min(d, maxDelay)
}

// succeed forgets the failures.
func (l *limiter) succeed() {
	l.mu.Lock()
	l.failures = 0
	l.mu.Unlock()
}
