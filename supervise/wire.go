package supervise

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The control protocol is a strict subset of HTTP/1.1 over a unix socket,
// so `curl --unix-socket /run/nest/nest.sock http://nest/v1/units` is a
// client: one request per connection, no request body, a response that is
// JSON with a Content-Length, or a text stream delimited by the end of the
// connection. net/http would cost 4.8 MB of a static binary whose budget
// is 8 MB (measured); this subset is what nest needs of it.

// Limits on what a client may send.
const (
	maxHeaderBytes = 16 << 10
	headerTimeout  = 10 * time.Second
)

// request is one parsed request.
type request struct {
	method string
	path   string // escaped, as sent
	query  url.Values
	ctx    context.Context // done when the client hangs up
}

// reply writes the response to one request.
type reply struct {
	conn net.Conn
	sent bool
}

var statusText = map[int]string{
	200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found",
	405: "Method Not Allowed", 409: "Conflict", 500: "Internal Server Error", 501: "Not Implemented",
}

func (w *reply) header(code int, contentType string, length int) error {
	w.sent = true
	_, err := io.WriteString(w.conn, header(code, contentType, length))
	return err
}

// header is the status line and headers of an answer; length -1 leaves
// out Content-Length (a stream that ends with the connection).
func header(code int, contentType string, length int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nConnection: close\r\n", code, statusText[code], contentType)
	if length >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", length)
	}
	b.WriteString("\r\n")
	return b.String()
}

// json sends v as the whole response.
func (w *reply) json(code int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		code, body = 500, []byte(`{"error":"encoding the answer failed"}`)
	}
	body = append(body, '\n')
	if w.header(code, "application/json", len(body)) == nil {
		w.conn.Write(body)
	}
}

func (w *reply) error(code int, err error) { w.json(code, apiError{Error: err.Error()}) }

// stream starts a text response whose end is the end of the connection.
func (w *reply) stream() (io.Writer, error) {
	return w.conn, w.header(200, "text/plain; charset=utf-8", -1)
}

// readRequest reads a request line and headers. A request with a body is
// refused: no verb of the protocol has one.
func readRequest(conn net.Conn) (*request, error) {
	conn.SetReadDeadline(time.Now().Add(headerTimeout))
	tp := textproto.NewReader(bufio.NewReader(io.LimitReader(conn, maxHeaderBytes)))
	line, err := tp.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("request line: %w", err)
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || !strings.HasPrefix(proto, "HTTP/1.") {
		return nil, fmt.Errorf("malformed request line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return nil, fmt.Errorf("headers: %w", err)
	}
	if cl := hdr.Get("Content-Length"); (cl != "" && cl != "0") || hdr.Get("Transfer-Encoding") != "" {
		return nil, errors.New("requests have no body")
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		return nil, fmt.Errorf("target %q: %w", target, err)
	}
	conn.SetReadDeadline(time.Time{})
	// The path stays escaped: a unit path is one segment, "alice%2Fdev".
	return &request{method: method, path: u.EscapedPath(), query: u.Query()}, nil
}

// watchHangup returns a context that ends when the client closes its side.
// Nothing more is read from a client after its request.
func watchHangup(conn net.Conn) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		var b [1]byte
		conn.Read(b[:]) // returns at EOF, error, or a byte nobody asked for
		cancel()
	}()
	return ctx, cancel
}

// call is the client side: one request, the status and the body.
func call(ctx context.Context, socket, method, path string) (int, io.ReadCloser, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, nil, err
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: nest\r\nConnection: close\r\n\r\n", method, path)
	if err != nil {
		conn.Close()
		return 0, nil, err
	}
	br := bufio.NewReader(conn)
	code, hdr, err := readAnswer(br)
	if err != nil {
		conn.Close()
		return 0, nil, err
	}
	var body io.Reader = br
	if cl := hdr.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil {
			conn.Close()
			return 0, nil, fmt.Errorf("bad Content-Length %q", cl)
		}
		body = io.LimitReader(br, n)
	}
	return code, &bodyCloser{Reader: body, conn: conn, stop: stop}, nil
}

// readAnswer reads the status line and headers of an answer.
func readAnswer(br *bufio.Reader) (int, textproto.MIMEHeader, error) {
	tp := textproto.NewReader(br)
	line, err := tp.ReadLine()
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	_, rest, _ := strings.Cut(line, " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeText)
	if err != nil {
		return 0, nil, fmt.Errorf("malformed status line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return 0, nil, fmt.Errorf("reading the answer: %w", err)
	}
	return code, hdr, nil
}

type bodyCloser struct {
	io.Reader
	conn net.Conn
	stop func() bool
}

func (b *bodyCloser) Close() error {
	b.stop()
	return b.conn.Close()
}
