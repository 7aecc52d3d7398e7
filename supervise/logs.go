package supervise

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Log sizes. The file keeps the newest LogFileMax bytes plus one rotated
// generation (NAME.log.1); the ring keeps the newest RingSize bytes in memory
// for `nest logs`, allocated only as output arrives.
const (
	LogFileMax = 1 << 20
	RingSize   = 32 << 10
)

// Log is where one unit's stdout and stderr go: a size-capped file with one
// rotation, and a ring buffer that `nest logs [-f]` reads. Safe for
// concurrent use.
type Log struct {
	path string

	mu        sync.Mutex
	file      *os.File
	size      int64
	fileErr   error // the last error opening the file, reported once
	closed    bool  // after Close, output goes to the ring only
	ring      []byte
	start     int // index of the oldest byte when the ring is full
	full      bool
	written   uint64 // total bytes ever written: followers' cursor
	followers map[chan struct{}]struct{}
}

// NewLog returns a log that writes to path (may be "" for memory only).
func NewLog(path string) *Log {
	return &Log{path: path, followers: make(map[chan struct{}]struct{})}
}

// Write appends p to the file and the ring. It never fails: a log that
// cannot be written must not stop the service that writes it.
func (l *Log) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writeFile(p)
	l.writeRing(p)
	l.written += uint64(len(p))
	for ch := range l.followers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

func (l *Log) writeFile(p []byte) {
	if l.path == "" || l.closed {
		return
	}
	if l.file != nil && l.size+int64(len(p)) > LogFileMax {
		l.file.Close()
		l.file = nil
		os.Rename(l.path, l.path+".1")
	}
	if l.file == nil {
		if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
			l.fileErr = err
			return
		}
		f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			l.fileErr = err
			return
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			l.fileErr = err
			return
		}
		l.file, l.size, l.fileErr = f, st.Size(), nil
	}
	n, _ := l.file.Write(p)
	l.size += int64(n)
}

func (l *Log) writeRing(p []byte) {
	if len(p) >= RingSize {
		p = p[len(p)-RingSize:]
		l.ring = append(l.ring[:0], p...)
		l.start, l.full = 0, true
		return
	}
	if !l.full {
		if len(l.ring)+len(p) <= RingSize {
			l.ring = append(l.ring, p...)
			return
		}
		// Grow to the full size once, then wrap.
		grown := make([]byte, RingSize)
		copy(grown, l.ring)
		n := copy(grown[len(l.ring):], p)
		p = p[n:]
		l.ring, l.start, l.full = grown, 0, true
	}
	for len(p) > 0 {
		n := copy(l.ring[l.start:], p)
		p = p[n:]
		l.start = (l.start + n) % RingSize
	}
}

// Snapshot returns the ring's content, oldest first, and the cursor to pass
// to Since for what comes after it.
func (l *Log) Snapshot() ([]byte, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snapshotLocked(), l.written
}

func (l *Log) snapshotLocked() []byte {
	if !l.full {
		return append([]byte(nil), l.ring...)
	}
	out := make([]byte, 0, RingSize)
	out = append(out, l.ring[l.start:]...)
	return append(out, l.ring[:l.start]...)
}

// Since returns what was written after cursor and the new cursor. If the
// ring has overwritten part of it, the returned bytes start with the oldest
// byte still held.
func (l *Log) Since(cursor uint64) ([]byte, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cursor >= l.written {
		return nil, l.written
	}
	all := l.snapshotLocked()
	n := l.written - cursor
	if n < uint64(len(all)) {
		all = all[uint64(len(all))-n:]
	}
	return all, l.written
}

// Follow returns a channel that receives a token whenever new output
// arrives, and a function that stops following.
func (l *Log) Follow() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	l.mu.Lock()
	l.followers[ch] = struct{}{}
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		delete(l.followers, ch)
		l.mu.Unlock()
	}
}

// FileError returns why the log file could not be written, or nil.
func (l *Log) FileError() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fileErr != nil {
		return fmt.Errorf("log file %s: %w", l.path, l.fileErr)
	}
	return nil
}

// Close closes the file for good (so that its file system can be
// unmounted); the ring stays readable and keeps taking output.
func (l *Log) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.file != nil {
		l.file.Close()
		l.file = nil
	}
}

// Reopen lets output reach the file again after Close.
func (l *Log) Reopen() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = false
}
