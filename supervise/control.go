package supervise

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"nest/config"
)

// APIVersion is the version of the control protocol. Every path starts with
// /v1/; an incompatible change gets /v2/ beside it. See docs/control-api.md.
const APIVersion = 1

// ErrAlreadyRunning is returned by ListenControl when a live nest already
// answers on the socket.
var ErrAlreadyRunning = errors.New("a nest already runs here")

// ListenControl listens on the control socket at path (mode 0600). A stale
// socket file is replaced; a live one is ErrAlreadyRunning, never taken over.
func ListenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: %w", path, ErrAlreadyRunning)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}

// Control serves the control API for one supervisor.
type Control struct {
	Sup     *Supervisor
	Version string
	// Power asks the init to "poweroff" or "reboot"; it must not block.
	Power func(action string) error
	// Reload re-reads the config and applies it; a bad file changes nothing.
	Reload func() error
	// StartTimeout bounds how long start and restart wait for the outcome.
	StartTimeout time.Duration
	// Admin creates, removes and resets containers (nil: not here).
	Admin Admin

	mu       sync.Mutex
	listener net.Listener
}

// Serve answers requests on l until Close. Each connection runs in its own
// goroutine that recovers: no request can end the init.
func (c *Control) Serve(l net.Listener) error {
	c.mu.Lock()
	c.listener = l
	c.mu.Unlock()
	for {
		conn, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("control socket: %w", err)
		}
		go c.serveConn(conn)
	}
}

// Close stops accepting requests.
func (c *Control) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.listener != nil {
		c.listener.Close()
	}
}

func (c *Control) serveConn(conn net.Conn) {
	defer conn.Close()
	w := &reply{conn: conn}
	defer func() {
		if r := recover(); r != nil {
			if c.Sup.opts.Logf != nil {
				c.Sup.opts.Logf("control socket: internal error: %v\n%s", r, debug.Stack())
			}
			if !w.sent {
				w.error(500, errors.New("internal error"))
			}
		}
	}()
	r, err := readRequest(conn)
	if err != nil {
		w.error(400, err)
		return
	}
	ctx, cancel := watchHangup(conn)
	defer cancel()
	r.ctx = ctx
	c.route(w, r)
}

// route dispatches /v1/... requests. See docs/control-api.md.
func (c *Control) route(w *reply, r *request) {
	parts := strings.Split(strings.Trim(r.path, "/"), "/")
	for i, p := range parts {
		un, err := url.PathUnescape(p)
		if err != nil {
			w.error(400, fmt.Errorf("path %s: %w", r.path, err))
			return
		}
		parts[i] = un
	}
	if len(parts) < 2 || parts[0] != "v1" {
		w.error(404, fmt.Errorf("no such path %s (the API is under /v1/)", r.path))
		return
	}
	want := func(method string) bool {
		if r.method != method {
			w.error(405, fmt.Errorf("%s %s: want %s", r.method, r.path, method))
			return false
		}
		return true
	}
	switch {
	case len(parts) == 2 && parts[1] == "version":
		if want("GET") {
			w.json(200, map[string]any{"version": c.Version, "api": APIVersion})
		}
	case len(parts) == 3 && parts[1] == "debug" && parts[2] == "memory":
		if want("GET") {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			w.json(200, map[string]uint64{
				"sys": m.Sys, "heap_inuse": m.HeapInuse, "heap_idle": m.HeapIdle,
				"heap_released": m.HeapReleased, "stack_inuse": m.StackInuse,
				"goroutines": uint64(runtime.NumGoroutine()), "num_gc": uint64(m.NumGC),
			})
		}
	case len(parts) == 2 && parts[1] == "units":
		if !want("GET") {
			return
		}
		if r.query.Get("tree") == "1" {
			w.json(200, c.Sup.Tree(r.ctx, MaxTreeDepth, TreeTimeout))
			return
		}
		units := c.Sup.Units()
		out := make([]Status, 0, len(units))
		for _, u := range units {
			out = append(out, u.Status())
		}
		w.json(200, out)
	case len(parts) == 2 && parts[1] == "reload":
		if !want("POST") {
			return
		}
		if c.Reload == nil {
			w.error(501, errors.New("reload is not available here"))
			return
		}
		if err := c.Reload(); err != nil {
			w.error(400, err)
			return
		}
		w.json(200, map[string]string{})
	case len(parts) == 2 && (parts[1] == "poweroff" || parts[1] == "reboot"):
		if !want("POST") {
			return
		}
		if c.Power == nil {
			w.error(501, fmt.Errorf("%s is not available here", parts[1]))
			return
		}
		if err := c.Power(parts[1]); err != nil {
			w.error(409, err)
			return
		}
		w.json(202, map[string]string{})
	case (len(parts) == 3 || len(parts) == 4) && parts[1] == "units":
		action := ""
		if len(parts) == 4 {
			action = parts[3]
		}
		if action == "shell" {
			c.shell(w, r, parts[2])
			return
		}
		if strings.Contains(parts[2], "/") {
			c.unitPath(w, r, parts[2], action, want)
			return
		}
		u, ok := c.Sup.Unit(parts[2])
		if !ok {
			w.error(404, fmt.Errorf("no unit named %q", parts[2]))
			return
		}
		c.unit(w, r, u, action, want)
	case len(parts) == 4 && parts[1] == "containers":
		c.admin(w, r, parts[2], parts[3])
	case parts[1] == "escalations":
		c.escalations(w, r, parts[2:], want)
	case len(parts) > 4 && parts[1] == "units":
		w.error(404, fmt.Errorf("no such path %s (a unit inside a container is one segment with %%2F: /v1/units/alice%%2Fdev)", r.path))
	default:
		w.error(404, fmt.Errorf("no such path %s", r.path))
	}
}

func (c *Control) unit(w *reply, r *request, u *Unit, action string, want func(string) bool) {
	switch action {
	case "":
		if want("GET") {
			w.json(200, u.Status())
		}
	case "logs":
		if want("GET") {
			c.logs(w, r, u)
		}
	case "start", "restart", "stop":
		if want("POST") {
			w.json(200, c.Sup.actLocal(r.ctx, action, u, c.StartTimeout))
		}
	default:
		w.error(404, noAction(action))
	}
}

// noAction is the error for an unknown action, with a hint where the
// client meant a unit path and did not escape its slash.
func noAction(action string) error {
	if config.ValidName(action) {
		return fmt.Errorf("no action %q for a unit (start, stop, restart, logs; a unit inside a container is one segment with %%2F: /v1/units/alice%%2Fdev)", action)
	}
	return fmt.Errorf("no action %q for a unit (start, stop, restart, logs)", action)
}

// unitPath acts on a unit inside a container ("alice/dev"), through the
// container's link.
func (c *Control) unitPath(w *reply, r *request, path, action string, want func(string) bool) {
	method := "POST"
	switch action {
	case "":
		action, method = "status", "GET"
	case "start", "stop", "restart":
	case "logs":
		if want("GET") {
			c.nestedLogs(w, r, path)
		}
		return
	default:
		w.error(404, noAction(action))
		return
	}
	if !want(method) {
		return
	}
	st, err := c.Sup.Act(r.ctx, action, path, c.StartTimeout)
	if err != nil {
		pathErrorReply(w, err)
		return
	}
	w.json(200, st)
}

// pathErrorReply answers a request on a unit path that failed with err.
func pathErrorReply(w *reply, err error) {
	var pe *pathError
	switch {
	case errors.Is(err, errNoUnit):
		w.error(404, err)
	case errors.Is(err, errBadPath):
		w.error(400, err)
	case errors.As(err, &pe):
		w.error(409, err)
	default:
		w.error(500, err)
	}
}

func (c *Control) logs(w *reply, r *request, u *Unit) {
	follow := r.query.Get("follow") == "1"
	var wake <-chan struct{}
	if follow {
		var stop func()
		wake, stop = u.Log().Follow()
		defer stop()
	}
	out, err := w.stream()
	if err != nil {
		return
	}
	data, cursor := u.Log().Snapshot()
	if _, err := out.Write(data); err != nil || !follow {
		return
	}
	for {
		select {
		case <-wake:
		case <-r.ctx.Done():
			return
		}
		data, cursor = u.Log().Since(cursor)
		if _, err := out.Write(data); err != nil {
			return
		}
	}
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
}
