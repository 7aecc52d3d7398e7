package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"nest/escalate"
)

// The log of a unit inside a container ("alice/dev") comes up the links a
// chunk at a time: the parent asks the container's init for what the
// unit's log holds from a cursor on (a count of bytes the log has ever
// written), and that init answers from its own unit or asks its own child
// the same way. Following is asking again from the new cursor, with a
// wait for bytes when there are none. The child's answers are bounded and
// checked like every other: a chunk is at most logsChunk bytes, its
// cursor moves forward or the stream ends.

// msgLogs is the request for a chunk of a unit's log, and its answer.
const msgLogs = "logs"

const (
	// logsChunk is the most log bytes one answer carries: base64 in
	// JSON makes 43 KB of it, under escalate.MaxMessage.
	logsChunk = 32 << 10
	// logsWait is how long a request of a follower waits for bytes.
	logsWait = 5 * time.Second
	// logsTimeout bounds the wait for an answer that may itself wait.
	logsTimeout = logsWait + statusTimeout
	// logsMax is the most a reading that does not follow takes: more
	// than a unit's log keeps (RingSize), so only a hostile child hits
	// it.
	logsMax = 4 * RingSize
)

// logsRequest is the body of a logs request.
type logsRequest struct {
	Path   string `json:"path"`
	Cursor uint64 `json:"cursor"`
	WaitMS int64  `json:"wait_ms,omitempty"`
}

// LogChunk is a piece of a unit's log.
type LogChunk struct {
	Data   []byte `json:"data"`
	Cursor uint64 `json:"cursor"` // where the next chunk starts
	End    uint64 `json:"end"`    // how many bytes the log had written then
}

// chunkOf returns what l holds from cursor on, at most logsChunk bytes.
// A cursor the log has dropped already starts at its oldest byte; one
// beyond its end (a log that started again, in a restarted init) at 0.
func chunkOf(l *Log, cursor uint64) LogChunk {
	data, written := l.Since(cursor)
	if cursor > written {
		data, written = l.Since(0)
	}
	start := written - uint64(len(data))
	if len(data) > logsChunk {
		data = data[:logsChunk]
	}
	return LogChunk{Data: data, Cursor: start + uint64(len(data)), End: written}
}

// LogChunk returns the log of the unit at path, this init's own or one
// inside a container, from cursor on; where there is nothing new yet it
// waits up to wait for it.
func (s *Supervisor) LogChunk(ctx context.Context, path string, cursor uint64, wait time.Duration) (LogChunk, error) {
	u, rest, run, err := s.resolvePath(path)
	if err != nil {
		return LogChunk{}, err
	}
	if run == nil && u.spec.InheritOutput {
		// A daemon container's service writes where its init does: to
		// the container's log, kept by the init above.
		return LogChunk{}, &pathError{errNoLog, fmt.Sprintf("%s writes to its container's own log: nest logs of the container shows it", u.spec.Name)}
	}
	if run == nil {
		l := u.Log()
		var wake <-chan struct{}
		if wait > 0 {
			var stop func()
			wake, stop = l.Follow()
			defer stop()
		}
		c := chunkOf(l, cursor)
		if len(c.Data) == 0 && wait > 0 {
			select {
			case <-wake:
			case <-time.After(wait):
			case <-ctx.Done():
			}
			c = chunkOf(l, cursor)
		}
		return c, nil
	}
	c, err := run.logs(ctx, rest, cursor, wait)
	if err != nil {
		return LogChunk{}, &pathError{nil, fmt.Sprintf("%s: %v", u.spec.Name, err)}
	}
	return c, nil
}

// logs asks the child's init for a chunk of the log of the unit at path
// (relative to the child) and checks its answer.
func (c *containerRun) logs(ctx context.Context, path string, cursor uint64, wait time.Duration) (LogChunk, error) {
	q := logsRequest{Path: path, Cursor: cursor, WaitMS: wait.Milliseconds()}
	m, err := c.request(ctx, msgLogs, q, logsTimeout)
	if err != nil {
		return LogChunk{}, err
	}
	var r LogChunk
	if err := escalate.DecodeBody(m, &r); err != nil {
		c.note("logs answer: %v", err)
		return LogChunk{}, errors.New("the container's init gave an invalid answer")
	}
	if len(r.Data) > logsChunk || r.Cursor > r.End || r.Cursor < uint64(len(r.Data)) {
		c.note("logs answer: %d bytes, cursor %d, end %d", len(r.Data), r.Cursor, r.End)
		return LogChunk{}, errors.New("the container's init gave an invalid answer")
	}
	return r, nil
}

// answerLogs is a child init's answer to its parent's logs request.
func answerLogs(ctx context.Context, sup *Supervisor, m *escalate.Message) (*escalate.Message, error) {
	var q logsRequest
	if err := escalate.DecodeBody(m, &q); err != nil {
		return nil, err
	}
	wait := min(max(time.Duration(q.WaitMS)*time.Millisecond, 0), logsWait)
	c, err := sup.LogChunk(ctx, q.Path, q.Cursor, wait)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(c)
	if err != nil {
		return nil, err
	}
	return &escalate.Message{Type: msgLogs, Body: body}, nil
}

// nestedLogs streams the log of the unit at path inside a container:
// what it holds, then, following, what comes.
func (c *Control) nestedLogs(w *reply, r *request, path string) {
	follow := r.query.Get("follow") == "1"
	// The first chunk says whether there is such a unit: an error before
	// any byte is the request's.
	chunk, err := c.Sup.LogChunk(r.ctx, path, 0, 0)
	if err != nil {
		pathErrorReply(w, err)
		return
	}
	out, err := w.stream()
	if err != nil {
		return
	}
	end, taken := chunk.End, 0
	for {
		if _, err := out.Write(chunk.Data); err != nil {
			return
		}
		taken += len(chunk.Data)
		cursor := chunk.Cursor
		caughtUp := cursor >= end
		if !follow && (caughtUp || len(chunk.Data) == 0 || taken >= logsMax) {
			return
		}
		wait := time.Duration(0)
		if caughtUp {
			wait = logsWait
		}
		if chunk, err = c.Sup.LogChunk(r.ctx, path, cursor, wait); err != nil || r.ctx.Err() != nil {
			return
		}
		if !follow && chunk.Cursor <= cursor {
			return // no progress: a hostile child's, or the log started again
		}
	}
}
