package escalate

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"sync"
	"time"

	"nest/statefile"
)

// Failed proofs (a wrong key or password) are limited per child: each
// failure delays its answer (failureDelay, doubling), MaxFailures in a row
// lock the child out for Lockout, and a success or FailureWindow without
// failures starts the count again. The state lives in the broker, never
// in the child, and in a file of the init's run directory (Broker.
// LimitsFile) so that a restart of the broker does not start the counts
// again; a refused attempt while locked out is not checked at all, so a
// child cannot make the parent hash passwords faster than the limit.
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

// succeed forgets the failures; it reports whether there were any.
func (l *limiter) succeed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	had := l.failures > 0
	l.failures = 0
	return had
}

// limitState is a limiter as LimitsFile keeps it.
type limitState struct {
	Failures    int       `json:"failures,omitempty"`
	Last        time.Time `json:"last,omitzero"`
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

// state returns what counts at now: nothing once the failures are
// forgotten and the lockout is over.
func (l *limiter) state(now time.Time) (limitState, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := limitState{Failures: l.failures, Last: l.last, LockedUntil: l.lockedUntil}
	if now.Sub(l.last) > FailureWindow {
		s.Failures = 0
	}
	if !now.Before(l.lockedUntil) {
		s.LockedUntil = time.Time{}
	}
	return s, s.Failures > 0 || !s.LockedUntil.IsZero()
}

// restore takes s, as read back from LimitsFile, with its numbers bounded
// (the file is the parent's own, but a limit never grows from it).
func restoreLimiter(s limitState, now time.Time) *limiter {
	l := &limiter{failures: min(max(s.Failures, 0), MaxFailures), last: s.Last}
	if s.LockedUntil.After(now) {
		l.lockedUntil = s.LockedUntil
		if end := now.Add(Lockout); l.lockedUntil.After(end) {
			l.lockedUntil = end
		}
	}
	return l
}

// loadLimits reads LimitsFile, if there is one, into b.limits (under
// b.mu). A file that cannot be read is reported and starts the counts
// anew.
func (b *Broker) loadLimits() {
	if b.LimitsFile == "" {
		return
	}
	data, err := os.ReadFile(b.LimitsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	var saved map[string]limitState
	if err == nil {
		err = json.Unmarshal(data, &saved)
	}
	if err != nil {
		b.Logf("escalate: the failure counts of %s: %v (they start anew)", b.LimitsFile, err)
		return
	}
	now := time.Now()
	for child, s := range saved {
		b.limits[child] = restoreLimiter(s, now)
	}
}

// saveLimits writes the counts that still matter to LimitsFile, one
// writer at a time, the file replaced whole.
func (b *Broker) saveLimits() {
	if b.LimitsFile == "" {
		return
	}
	b.saveMu.Lock()
	defer b.saveMu.Unlock()
	now := time.Now()
	saved := make(map[string]limitState)
	b.mu.Lock()
	for child, l := range b.limits {
		if s, ok := l.state(now); ok {
			saved[child] = s
		}
	}
	b.mu.Unlock()
	data, _ := json.Marshal(saved)
	if err := statefile.Write(b.LimitsFile, data, false); err != nil {
		b.Logf("escalate: keeping the failure counts: %v", err)
	}
}
