package supervise

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
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
}

// Handler returns the HTTP handler. net/http recovers a panicking handler,
// so a bad request can never end the init.
func (c *Control) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"version": c.Version, "api": APIVersion})
	})
	mux.HandleFunc("GET /v1/units", func(w http.ResponseWriter, r *http.Request) {
		units := c.Sup.Units()
		out := make([]Status, 0, len(units))
		for _, u := range units {
			out = append(out, u.Status())
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/units/{name}", c.withUnit(func(w http.ResponseWriter, r *http.Request, u *Unit) {
		writeJSON(w, http.StatusOK, u.Status())
	}))
	mux.HandleFunc("POST /v1/units/{name}/start", c.withUnit(func(w http.ResponseWriter, r *http.Request, u *Unit) {
		c.Sup.Start(u)
		writeJSON(w, http.StatusOK, c.settle(r, u, 0))
	}))
	mux.HandleFunc("POST /v1/units/{name}/restart", c.withUnit(func(w http.ResponseWriter, r *http.Request, u *Unit) {
		old := u.Status().Pid
		c.Sup.Restart(u)
		writeJSON(w, http.StatusOK, c.settle(r, u, old))
	}))
	mux.HandleFunc("POST /v1/units/{name}/stop", c.withUnit(func(w http.ResponseWriter, r *http.Request, u *Unit) {
		select {
		case <-c.Sup.Stop(u):
		case <-r.Context().Done():
		}
		writeJSON(w, http.StatusOK, u.Status())
	}))
	mux.HandleFunc("GET /v1/units/{name}/logs", c.withUnit(c.logs))
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		if c.Reload == nil {
			writeError(w, http.StatusNotImplemented, errors.New("reload is not available here"))
			return
		}
		if err := c.Reload(); err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{})
	})
	for _, action := range []string{"poweroff", "reboot"} {
		mux.HandleFunc("POST /v1/"+action, func(w http.ResponseWriter, r *http.Request) {
			if c.Power == nil {
				writeError(w, http.StatusNotImplemented, fmt.Errorf("%s is not available here", action))
				return
			}
			if err := c.Power(action); err != nil {
				writeError(w, http.StatusConflict, err)
				return
			}
			writeJSON(w, http.StatusAccepted, map[string]string{})
		})
	}
	return mux
}

func (c *Control) withUnit(h func(http.ResponseWriter, *http.Request, *Unit)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		u, ok := c.Sup.Unit(name)
		if !ok {
			writeError(w, http.StatusNotFound, fmt.Errorf("no unit named %q", name))
			return
		}
		h(w, r, u)
	}
}

// settle waits until u has an outcome after a start: running (ready),
// exited or failed, with a pid other than oldPid.
func (c *Control) settle(r *http.Request, u *Unit, oldPid int) Status {
	timeout := c.StartTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	deadline := time.After(timeout)
	for {
		changed := c.Sup.Changes()
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
		case <-deadline:
			return st
		case <-r.Context().Done():
			return st
		}
	}
}

func (c *Control) logs(w http.ResponseWriter, r *http.Request, u *Unit) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	follow := r.URL.Query().Get("follow") == "1"
	var (
		wake <-chan struct{}
		stop func()
	)
	if follow {
		wake, stop = u.Log().Follow()
		defer stop()
	}
	data, cursor := u.Log().Snapshot()
	if _, err := w.Write(data); err != nil || !follow {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-wake:
		case <-r.Context().Done():
			return
		}
		data, cursor = u.Log().Since(cursor)
		if _, err := w.Write(data); err != nil {
			return
		}
	}
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, apiError{Error: err.Error()})
}
