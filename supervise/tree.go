package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"nest/config"
	"nest/escalate"
)

// Bounds of a tree listing (`nest ls --tree`), which reaches every level
// below an init through its children's links.
const (
	// MaxTreeDepth is how many levels of units a listing holds, the asked
	// init's own units included; it is also the longest unit path.
	MaxTreeDepth = 8
	// MaxTreeNodes is how many units a listing holds in all; the rest is
	// cut, breadth first, and marked incomplete.
	MaxTreeNodes = 1000
	// TreeTimeout is how long an init waits for the levels below it. Each
	// level gives the next treeMargin less, so that an answer cut short
	// below still arrives in time.
	TreeTimeout = 2 * time.Second
	treeMargin  = 250 * time.Millisecond
	// minTreeTimeout is the least time worth asking a child for.
	minTreeTimeout = 100 * time.Millisecond
)

// Reasons a container's children are missing or cut short (Status.Incomplete).
const (
	incompleteDepth   = "deeper than the listing goes"
	incompleteTime    = "no time left to ask"
	incompleteTimeout = "no answer in time"
	incompleteNodes   = "over the limit of units in one listing"
	incompleteSize    = "answer too large"
	incompleteInvalid = "invalid units in the answer"
)

// Tree returns every unit as Units does, each running container with its
// children as its init reports them over the link, down to depth levels
// (the units here are level 1), waiting at most timeout for the levels
// below. What cannot be had in time, or is beyond a bound, is marked
// incomplete; the listing never fails.
func (s *Supervisor) Tree(ctx context.Context, depth int, timeout time.Duration) []Status {
	depth = min(depth, MaxTreeDepth)
	timeout = min(timeout, TreeTimeout)
	units := s.Units()
	out := make([]Status, len(units))
	var wg sync.WaitGroup
	for i, u := range units {
		out[i] = u.Status()
		run := u.currentLink()
		if run == nil || out[i].State != StateRunning {
			continue
		}
		switch {
		case depth <= 1:
			out[i].Incomplete = incompleteDepth
		case timeout < minTreeTimeout:
			out[i].Incomplete = incompleteTime
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.recoverGoroutine("subtree of " + out[i].Name)
				out[i].Children, out[i].Incomplete = run.subtree(ctx, depth-1, timeout)
			}()
		}
	}
	wg.Wait()
	return capNodes(out, MaxTreeNodes, incompleteNodes)
}

// Path errors: the control socket answers them with these codes.
var (
	errNoUnit     = errors.New("no such unit")
	errBadPath    = errors.New("bad unit path")
	errNotRunning = errors.New("not running")
	errNoLog      = errors.New("no log of its own")
)

// pathError is a failed action on a unit path.
type pathError struct {
	Kind error // errNoUnit, errBadPath, errNotRunning, errNoLog or nil (the child failed)
	Msg  string
}

func (e *pathError) Error() string { return e.Msg }
func (e *pathError) Unwrap() error { return e.Kind }

// splitPath checks a unit path ("web", "alice/dev") and returns its names.
func splitPath(path string) ([]string, error) {
	names := strings.Split(path, "/")
	if len(names) > MaxTreeDepth {
		return nil, &pathError{errBadPath, fmt.Sprintf("unit path %s is deeper than %d levels", quoteName(path), MaxTreeDepth)}
	}
	for _, n := range names {
		if !config.ValidName(n) {
			return nil, &pathError{errBadPath, fmt.Sprintf("bad unit path %s: want names of [a-z0-9][a-z0-9-]{0,31} joined by /", quoteName(path))}
		}
	}
	return names, nil
}

// Act runs action ("status", "start", "stop" or "restart") on the unit at
// path: a unit of this supervisor, or one inside a container of it
// ("alice/dev" is unit dev of container alice), reached through the
// container's link. It returns the unit's status once the action has an
// outcome (as the control socket's start, stop and restart do), named by
// path.
func (s *Supervisor) Act(ctx context.Context, action, path string, startTimeout time.Duration) (Status, error) {
	switch action {
	case "status", "start", "stop", "restart":
	default:
		return Status{}, &pathError{errBadPath, fmt.Sprintf("no action %s (status, start, stop, restart)", quoteName(action))}
	}
	u, rest, run, err := s.resolvePath(path)
	if err != nil {
		return Status{}, err
	}
	if run == nil {
		return s.actLocal(ctx, action, u, startTimeout), nil
	}
	st, err := run.act(ctx, action, rest)
	if err != nil {
		return Status{}, &pathError{nil, fmt.Sprintf("%s: %v", u.spec.Name, err)}
	}
	st.Name = path
	return st, nil
}

// resolvePath finds the unit named by path's first name. For a longer
// path it also checks that the unit is a running container, and returns
// its link and the rest of the path (relative to the container).
func (s *Supervisor) resolvePath(path string) (u *Unit, rest string, run *containerRun, err error) {
	names, err := splitPath(path)
	if err != nil {
		return nil, "", nil, err
	}
	u, ok := s.Unit(names[0])
	if !ok {
		return nil, "", nil, &pathError{errNoUnit, fmt.Sprintf("no unit named %q", names[0])}
	}
	if len(names) == 1 {
		return u, "", nil, nil
	}
	rest = strings.Join(names[1:], "/")
	if u.spec.Container == nil {
		return nil, "", nil, &pathError{errNoUnit, fmt.Sprintf("%s is a service, not a container: it has no unit %s", names[0], rest)}
	}
	run = u.currentLink()
	if run == nil || u.Status().State != StateRunning {
		return nil, "", nil, &pathError{errNotRunning, fmt.Sprintf("container %s is not running", names[0])}
	}
	return u, rest, run, nil
}

// actLocal runs action on one of this supervisor's units.
func (s *Supervisor) actLocal(ctx context.Context, action string, u *Unit, startTimeout time.Duration) Status {
	switch action {
	case "start":
		s.Start(u)
		return s.settle(ctx, u, 0, startTimeout)
	case "restart":
		old := u.Status().Pid
		s.Restart(u)
		return s.settle(ctx, u, old, startTimeout)
	case "stop":
		select {
		case <-s.Stop(u):
		case <-ctx.Done():
		}
	}
	return u.Status()
}

// DefaultStartTimeout bounds how long a start or restart waits for its
// outcome.
const DefaultStartTimeout = 30 * time.Second

// settle waits until u has an outcome after a start: running (ready),
// exited or failed, with a pid other than oldPid.
func (s *Supervisor) settle(ctx context.Context, u *Unit, oldPid int, timeout time.Duration) Status {
	if timeout <= 0 {
		timeout = DefaultStartTimeout
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		changed := s.Changes()
		st := u.Status()
		switch st.State {
		case StateRunning:
			if st.Pid != oldPid {
				return st
			}
		case StateExited, StateFailed, StateStopped:
			return st
		}
		select {
		case <-changed:
		case <-deadline.C:
			return st
		case <-ctx.Done():
			return st
		}
	}
}

// currentLink is the link of the unit's current run, if it is a
// container that runs.
func (u *Unit) currentLink() *containerRun {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.link
}

// memoryCurrent reads a cgroup's memory.current (0 if it cannot).
func memoryCurrent(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, "memory.current"))
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func quoteName(s string) string {
	if len(s) > 80 {
		return strconv.Quote(s[:80]) + "…"
	}
	return strconv.Quote(s)
}

// Tree answers: a node list as its init sends it up the link.

// subtreeRequest is the body of a "subtree" request.
type subtreeRequest struct {
	Depth     int   `json:"depth"`      // levels wanted, the child's own units being 1
	TimeoutMS int64 `json:"timeout_ms"` // how long the child may wait for its own children
}

// subtreeReply is the body of a "subtree" reply.
type subtreeReply struct {
	Units      []Status `json:"units"`
	Incomplete string   `json:"incomplete,omitempty"` // the list itself was cut
}

// actRequest is the body of an "act" request; the reply's body is a Status.
type actRequest struct {
	Action string `json:"action"`
	Path   string `json:"path"`
}

// States and kinds a child may report; anything else reads "unknown".
var (
	knownStates = map[State]bool{
		StateWaiting: true, StateStarting: true, StateRunning: true, StateRestarting: true,
		StateStopping: true, StateStopped: true, StateExited: true, StateFailed: true,
	}
	knownKinds     = map[string]bool{"service": true, "daemon": true, "user": true}
	containerKinds = map[string]bool{"daemon": true, "user": true}
)

// Bounds of the text a child reports about one unit.
const (
	maxText     = 256
	maxExecArgs = 64
)

// cleanTree makes a child's answer fit to show: at most depth levels and
// *budget nodes, every unit validly named, known states and kinds, text
// cut short and without control characters (a terminal would obey them).
// It reports whether it dropped anything.
func cleanTree(list []Status, depth int, budget *int) (out []Status, dropped string) {
	for _, n := range list {
		if *budget <= 0 {
			return out, incompleteNodes
		}
		if !config.ValidName(n.Name) {
			dropped = incompleteInvalid
			continue
		}
		*budget--
		n = cleanStatus(n)
		kids := n.Children
		n.Children = nil
		if len(kids) > 0 || n.Incomplete != "" {
			switch {
			case !containerKinds[n.Kind]:
				n.Incomplete = ""
			case len(kids) > 0 && depth <= 1:
				n.Incomplete = incompleteDepth
			case len(kids) > 0:
				var cut string
				n.Children, cut = cleanTree(kids, depth-1, budget)
				if cut != "" && n.Incomplete == "" {
					n.Incomplete = cut
				}
			}
		}
		out = append(out, n)
	}
	return out, dropped
}

// cleanStatus bounds and cleans the fields of one reported unit (not its
// children).
func cleanStatus(n Status) Status {
	if !knownStates[n.State] {
		n.State = "unknown"
	}
	if !knownKinds[n.Kind] {
		n.Kind = "unknown"
	}
	n.Pid = max(n.Pid, 0)
	n.Restarts = max(n.Restarts, 0)
	n.Reason = cleanText(n.Reason)
	n.LastExit = cleanText(n.LastExit)
	n.Status = cleanText(n.Status)
	n.Restart = cleanText(n.Restart)
	n.Incomplete = cleanText(n.Incomplete)
	if a, err := netip.ParsePrefix(n.Address); err != nil || !a.Addr().Is4() {
		n.Address = ""
	}
	if len(n.Exec) > maxExecArgs {
		n.Exec = n.Exec[:maxExecArgs]
	}
	for i := range n.Exec {
		n.Exec[i] = cleanText(n.Exec[i])
	}
	after := n.After[:0:0]
	for _, a := range n.After {
		if config.ValidName(a) && len(after) < maxExecArgs {
			after = append(after, a)
		}
	}
	n.After = after
	if len(n.After) == 0 {
		n.After = nil
	}
	return n
}

// cleanText cuts s to maxText bytes and replaces what is not printable.
func cleanText(s string) string {
	if len(s) > maxText {
		s = s[:maxText]
		for !utf8.ValidString(s) && len(s) > 0 {
			s = s[:len(s)-1]
		}
		s += "…"
	}
	clean := true
	for _, r := range s {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			clean = false
			break
		}
	}
	if clean {
		return s
	}
	return strings.Map(func(r rune) rune {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			return '?'
		}
		return r
	}, s)
}

// capNodes keeps the first max nodes of list in breadth-first order (the
// top levels whole before anything deeper), marking each unit whose
// children were cut with why.
func capNodes(list []Status, max int, why string) []Status {
	if countNodes(list) <= max {
		return list
	}
	out, _ := prune(list, bfsIndex(list), max, why)
	return out
}

func countNodes(list []Status) int {
	n := len(list)
	for i := range list {
		n += countNodes(list[i].Children)
	}
	return n
}

// bfsIndex numbers every node of list breadth first.
func bfsIndex(list []Status) map[*Status]int {
	idx := make(map[*Status]int)
	queue := make([]*Status, 0, len(list))
	for i := range list {
		queue = append(queue, &list[i])
	}
	for len(queue) > 0 {
		n := queue[0]
		queue = queue[1:]
		idx[n] = len(idx)
		for i := range n.Children {
			queue = append(queue, &n.Children[i])
		}
	}
	return idx
}

// prune copies the nodes of list numbered below keep. Since the numbering
// is breadth first, what is kept is a tree. It reports whether it cut
// anything at list's own level.
func prune(list []Status, idx map[*Status]int, keep int, why string) (out []Status, cut bool) {
	for i := range list {
		n := &list[i]
		if idx[n] >= keep {
			cut = true
			continue
		}
		c := *n
		if len(n.Children) > 0 {
			var kidsCut bool
			c.Children, kidsCut = prune(n.Children, idx, keep, why)
			if kidsCut && c.Incomplete == "" {
				c.Incomplete = why
			}
		}
		out = append(out, c)
	}
	return out, cut
}

// fitReply encodes a subtree answer within limit bytes, cutting nodes
// breadth first from the end until it fits.
func fitReply(units []Status, limit int) json.RawMessage {
	enc := func(r subtreeReply) []byte {
		b, err := json.Marshal(r)
		if err != nil {
			b, _ = json.Marshal(subtreeReply{Units: []Status{}, Incomplete: "encoding failed"})
		}
		return b
	}
	if units == nil {
		units = []Status{}
	}
	if b := enc(subtreeReply{Units: units}); len(b) <= limit {
		return b
	}
	idx := bfsIndex(units)
	try := func(keep int) []byte {
		kept, cut := prune(units, idx, keep, incompleteSize)
		r := subtreeReply{Units: kept}
		if r.Units == nil {
			r.Units = []Status{}
		}
		if cut {
			r.Incomplete = fmt.Sprintf("%s: %d of %d units", incompleteSize, len(kept), len(units))
		}
		return enc(r)
	}
	lo, hi := 0, len(idx) // try(lo) is assumed to fit; try(hi) does not
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if len(try(mid)) <= limit {
			lo = mid
		} else {
			hi = mid
		}
	}
	for ; lo > 0; lo-- {
		if b := try(lo); len(b) <= limit {
			return b
		}
	}
	return try(0)
}

// subtreeReplyLimit is the room for a subtree reply's body in one packet.
const subtreeReplyLimit = escalate.MaxMessage - 128
