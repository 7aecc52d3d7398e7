package supervise

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// notifyMessage is what one sd_notify datagram said that nest acts on.
type notifyMessage struct {
	ready  bool
	status string
}

// parseNotify reads the systemd notify protocol: newline-separated
// KEY=VALUE assignments. Unknown keys are ignored, as systemd does.
func parseNotify(b []byte) notifyMessage {
	var m notifyMessage
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "READY":
			m.ready = v == "1"
		case "STATUS":
			m.status = v
		}
	}
	return m
}

// notifySocket is one run's $NOTIFY_SOCKET: a datagram socket made fresh
// for each start, so a late message from an earlier run cannot make a new
// one look ready.
type notifySocket struct {
	path     string
	conn     *net.UnixConn
	messages chan notifyMessage
}

func listenNotify(path string) (*notifySocket, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	n := &notifySocket{path: path, conn: conn, messages: make(chan notifyMessage, 8)}
	go n.read()
	return n, nil
}

func (n *notifySocket) read() {
	defer close(n.messages)
	buf := make([]byte, 4096)
	for {
		k, err := n.conn.Read(buf)
		if err != nil {
			return // closed
		}
		m := parseNotify(buf[:k])
		select {
		case n.messages <- m:
		default: // the unit is not keeping up; a flood must not block us
		}
	}
}

// Close removes the socket; the reader goroutine ends.
func (n *notifySocket) Close() {
	n.conn.Close()
	os.Remove(n.path)
}
