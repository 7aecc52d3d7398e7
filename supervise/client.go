package supervise

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// Client talks to an init's control socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client for the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}
	return &Client{Socket: path, http: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://nest"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			return fmt.Errorf("no nest answers on %s (is it running? --socket or NEST_SOCKET name another): %w", c.Socket, op.Err)
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

// Units lists every unit.
func (c *Client) Units(ctx context.Context) ([]Status, error) {
	var out []Status
	return out, c.do(ctx, http.MethodGet, "/v1/units", &out)
}

// Unit returns one unit's status.
func (c *Client) Unit(ctx context.Context, name string) (Status, error) {
	var out Status
	return out, c.do(ctx, http.MethodGet, "/v1/units/"+url.PathEscape(name), &out)
}

// Act runs "start", "stop" or "restart" on a unit and returns its status
// once the action has an outcome.
func (c *Client) Act(ctx context.Context, action, name string) (Status, error) {
	var out Status
	return out, c.do(ctx, http.MethodPost, "/v1/units/"+url.PathEscape(name)+"/"+action, &out)
}

// Power asks for "poweroff" or "reboot".
func (c *Client) Power(ctx context.Context, action string) error {
	return c.do(ctx, http.MethodPost, "/v1/"+action, nil)
}

// Reload asks the init to re-read its config.
func (c *Client) Reload(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reload", nil)
}

// Logs copies a unit's log to w; with follow it streams until ctx ends.
func (c *Client) Logs(ctx context.Context, name string, follow bool, w io.Writer) error {
	path := "/v1/units/" + url.PathEscape(name) + "/logs"
	if follow {
		path += "?follow=1"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://nest"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("no nest answers on %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		if json.NewDecoder(resp.Body).Decode(&e) == nil && e.Error != "" {
			return errors.New(e.Error)
		}
		return fmt.Errorf("logs %s: %s", name, resp.Status)
	}
	_, err = io.Copy(w, resp.Body)
	if err != nil && ctx.Err() != nil {
		return nil
	}
	if err != nil && strings.Contains(err.Error(), "use of closed") {
		return nil
	}
	return err
}
