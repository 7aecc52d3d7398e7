package supervise

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
)

// Containers an init creates, removes and resets at run time (`nest
// create`, `nest rm`, `nest reset`): the control socket's side. What a
// container is made of (its file in containers.d, its state, its ids) is
// the init's business, behind the Admin interface; the supervisor only
// gains and loses units (Add, Remove).

// Admin creates, removes and resets this init's containers.d children.
type Admin interface {
	// Create writes the container's file, adds its unit and, if req.Start,
	// starts it; it returns the unit's status.
	Create(ctx context.Context, name string, req CreateRequest) (Status, error)
	// Remove removes a containers.d container: its file, unit, ids and
	// state (the home only with purge). A running one needs force.
	Remove(ctx context.Context, name string, force, purge bool) error
	// Reset drops what the container changed in its view of the system and
	// keeps its home. A running one needs force: it is stopped, reset and
	// started again.
	Reset(ctx context.Context, name string, force bool) (Status, error)
}

// RequestError is an error with the HTTP status the control socket answers
// it with: 400 (the request is wrong), 404 (no such thing), 409 (not in
// this state).
type RequestError struct {
	Code int
	Msg  string
}

func (e *RequestError) Error() string { return e.Msg }

// Errorf returns a *RequestError.
func Errorf(code int, format string, args ...any) error {
	return &RequestError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CreateRequest is what `nest create` asks for; keys left empty take the
// config's defaults. It travels as the query of POST
// /v1/containers/NAME/create (requests have no body).
type CreateRequest struct {
	Kind    string   // "user" or "daemon"
	Rootfs  string   // "host" or a directory
	Binds   []string // SRC[:DST[:rw]], as on the command line
	Network string   // "none" or "host"
	Memory  string   // "512M"
	Pids    string   // a whole number
	Exec    []string // a daemon's command
	Start   bool     // start it once created
}

// Query encodes r for the control socket.
func (r CreateRequest) Query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	set("kind", r.Kind)
	set("rootfs", r.Rootfs)
	set("network", r.Network)
	set("memory", r.Memory)
	set("pids", r.Pids)
	q["bind"] = r.Binds
	q["exec"] = r.Exec
	if !r.Start {
		q.Set("start", "0")
	}
	return q
}

// createKeys are the query keys of a create request.
var createKeys = []string{"kind", "rootfs", "bind", "network", "memory", "pids", "exec", "start"}

// parseCreate decodes a create request's query: unknown keys, and keys
// given twice that take one value, are errors.
func parseCreate(q url.Values) (CreateRequest, error) {
	r := CreateRequest{Start: true}
	for k, v := range q {
		if !slices.Contains(createKeys, k) {
			return r, fmt.Errorf("unknown parameter %q (want %v)", k, createKeys)
		}
		if k != "bind" && k != "exec" && len(v) > 1 {
			return r, fmt.Errorf("parameter %q given %d times", k, len(v))
		}
	}
	r.Kind, r.Rootfs, r.Network = q.Get("kind"), q.Get("rootfs"), q.Get("network")
	r.Memory, r.Pids = q.Get("memory"), q.Get("pids")
	r.Binds, r.Exec = q["bind"], q["exec"]
	switch q.Get("start") {
	case "", "1":
	case "0":
		r.Start = false
	default:
		return r, fmt.Errorf("start = %q: want 0 or 1", q.Get("start"))
	}
	return r, nil
}

// queryFlag reads a boolean query parameter: absent, 0 or 1.
func queryFlag(q url.Values, key string) (bool, error) {
	switch v := q.Get(key); v {
	case "", "0":
		return false, nil
	case "1":
		return true, nil
	default:
		return false, fmt.Errorf("%s = %q: want 0 or 1", key, v)
	}
}

// admin serves /v1/containers/NAME/ACTION.
func (c *Control) admin(w *reply, r *request, name, action string) {
	if c.Admin == nil {
		w.error(501, errors.New("creating and removing containers is not available here"))
		return
	}
	if r.method != "POST" {
		w.error(405, fmt.Errorf("%s %s: want POST", r.method, r.path))
		return
	}
	allowed := map[string][]string{"create": createKeys, "rm": {"force", "purge"}, "reset": {"force"}}
	keys, ok := allowed[action]
	if !ok {
		w.error(404, fmt.Errorf("no action %q for a container (create, rm, reset)", action))
		return
	}
	for k := range r.query {
		if !slices.Contains(keys, k) {
			w.error(400, fmt.Errorf("%s: unknown parameter %q (want %v)", action, k, keys))
			return
		}
	}
	var err error
	var st Status
	answer := func() {
		var re *RequestError
		switch {
		case err == nil && action == "rm":
			w.json(200, map[string]string{})
		case err == nil:
			w.json(200, st)
		case errors.As(err, &re):
			w.error(re.Code, err)
		default:
			w.error(500, err)
		}
	}
	force, ferr := queryFlag(r.query, "force")
	purge, perr := queryFlag(r.query, "purge")
	if err = errors.Join(ferr, perr); err != nil {
		err = &RequestError{Code: 400, Msg: err.Error()}
		answer()
		return
	}
	switch action {
	case "create":
		var req CreateRequest
		if req, err = parseCreate(r.query); err != nil {
			err = &RequestError{Code: 400, Msg: err.Error()}
			break
		}
		st, err = c.Admin.Create(r.ctx, name, req)
	case "rm":
		err = c.Admin.Remove(r.ctx, name, force, purge)
	case "reset":
		st, err = c.Admin.Reset(r.ctx, name, force)
	}
	answer()
}

// Add adds one unit that no unit of s is called like, started at once if
// start (an Apply with it would start it); a unit not started stays
// stopped until asked.
func (s *Supervisor) Add(spec Spec, start bool) error {
	s.mu.Lock()
	if _, ok := s.units[spec.Name]; ok {
		s.mu.Unlock()
		return fmt.Errorf("a unit named %q exists already", spec.Name)
	}
	u := newUnit(s, spec)
	if start {
		u.state = StateWaiting
	}
	s.units[spec.Name] = u
	s.order = append(s.order, spec.Name)
	s.mu.Unlock()
	go u.run(start)
	s.changed()
	return nil
}

// Remove stops the unit called name and removes it, and returns once it is
// down; a container's address and subnets go with it (ReleaseNetwork). It
// reports whether there was such a unit.
func (s *Supervisor) Remove(name string) bool {
	s.mu.Lock()
	u, ok := s.units[name]
	if ok {
		delete(s.units, name)
		s.order = slices.DeleteFunc(s.order, func(n string) bool { return n == name })
	}
	s.mu.Unlock()
	if !ok {
		return false
	}
	<-u.send(opRemove)
	u.log.Close()
	if c := u.spec.Container; c != nil {
		s.releaseNetwork(name, c)
	}
	s.changed()
	return true
}

// Client side.

// Create asks the init to create container name (see CreateRequest).
func (c *Client) Create(ctx context.Context, name string, req CreateRequest) (Status, error) {
	var out Status
	return out, c.do(ctx, "POST", containerURL(name, "create", req.Query()), &out)
}

// Remove asks the init to remove container name.
func (c *Client) Remove(ctx context.Context, name string, force, purge bool) error {
	return c.do(ctx, "POST", containerURL(name, "rm", flags(map[string]bool{"force": force, "purge": purge})), nil)
}

// Reset asks the init to reset container name.
func (c *Client) Reset(ctx context.Context, name string, force bool) (Status, error) {
	var out Status
	return out, c.do(ctx, "POST", containerURL(name, "reset", flags(map[string]bool{"force": force})), &out)
}

func containerURL(name, action string, q url.Values) string {
	u := "/v1/containers/" + url.PathEscape(name) + "/" + action
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

func flags(set map[string]bool) url.Values {
	q := url.Values{}
	for k, v := range set {
		if v {
			q.Set(k, strconv.Itoa(1))
		}
	}
	return q
}
