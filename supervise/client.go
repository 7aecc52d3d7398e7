package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
)

// Client talks to an init's control socket.
type Client struct {
	Socket string
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client { return &Client{Socket: path} }

// open sends one request and returns the body of a successful answer; an
// error answer becomes an error carrying the server's message.
func (c *Client) open(ctx context.Context, method, path string) (io.ReadCloser, error) {
	code, body, err := call(ctx, c.Socket, method, path)
	if err != nil {
		return nil, fmt.Errorf("no nest answers on %s (is it running? --socket or NEST_SOCKET name another): %w", c.Socket, err)
	}
	if code >= 300 {
		defer body.Close()
		var e apiError
		b, _ := io.ReadAll(io.LimitReader(body, 64<<10))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, errors.New(e.Error)
		}
		return nil, fmt.Errorf("%s %s: status %d", method, path, code)
	}
	return body, nil
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	body, err := c.open(ctx, method, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if out == nil {
		io.Copy(io.Discard, io.LimitReader(body, 64<<10))
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(body, 16<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// Units lists every unit.
func (c *Client) Units(ctx context.Context) ([]Status, error) {
	var out []Status
	return out, c.do(ctx, "GET", "/v1/units", &out)
}

// Tree lists every unit, each running container with its children
// (Status.Children), as far down as MaxTreeDepth levels.
func (c *Client) Tree(ctx context.Context) ([]Status, error) {
	var out []Status
	return out, c.do(ctx, "GET", "/v1/units?tree=1", &out)
}

// unitURL is the path of a unit: a path inside a container ("alice/dev")
// is one segment, its slashes escaped.
func unitURL(name string) string { return "/v1/units/" + url.PathEscape(name) }

// Unit returns one unit's status; name may be a path ("alice/dev").
func (c *Client) Unit(ctx context.Context, name string) (Status, error) {
	var out Status
	return out, c.do(ctx, "GET", unitURL(name), &out)
}

// Act runs "start", "stop" or "restart" on a unit (or a path) and returns its status
// once the action has an outcome.
func (c *Client) Act(ctx context.Context, action, name string) (Status, error) {
	var out Status
	return out, c.do(ctx, "POST", unitURL(name)+"/"+action, &out)
}

// Power asks for "poweroff" or "reboot".
func (c *Client) Power(ctx context.Context, action string) error {
	return c.do(ctx, "POST", "/v1/"+action, nil)
}

// Reload asks the init to re-read its config.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, "POST", "/v1/reload", nil)
}

// Logs copies a unit's log to w; with follow it streams until ctx ends.
func (c *Client) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	path := unitURL(name) + "/logs"
	if follow {
		path += "?follow=1"
	}
	body, err := c.open(ctx, "GET", path)
	if err != nil {
		return err
	}
	defer body.Close()
	_, err = io.Copy(w, body)
	if ctx.Err() != nil {
		return nil // the caller stopped following
	}
	return err
}
