package escalate

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"unicode/utf8"
)

// The client's request packet is written by hand: it is the one thing
// nest escalate does before the parent can start to work, and the first
// json.Marshal in a fresh process costs 0.1 to 0.4 ms (its reflection code
// paged in), a tenth of a whole escalation of true. The bytes are exactly
// json.Marshal's (TestEncodeRequestMatchesJSON), so that the broker, which
// decodes with encoding/json, and a signature over the body see the same.

// requestPacket is the packet json.Marshal(&Message{Type: MsgRequest,
// Body: body}) makes, with body json.Marshal(q), and the body. A string
// that is not valid UTF-8 is an error (encoding/json would replace its bad
// bytes, and another command would run).
func requestPacket(q *Request) (packet, body []byte, err error) {
	for i, a := range q.Argv {
		if !utf8.ValidString(a) {
			return nil, nil, fmt.Errorf("argument %d is not valid UTF-8", i)
		}
	}
	for k, v := range q.Env {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return nil, nil, fmt.Errorf("environment variable %s is not valid UTF-8", quote(k))
		}
	}
	if !utf8.ValidString(q.Term) {
		return nil, nil, fmt.Errorf("TERM is not valid UTF-8")
	}
	const head = `{"type":"request","body":`
	b := make([]byte, 0, 256)
	b = append(b, head...)
	b = append(b, '{')
	comma := false
	field := func(name string) {
		if comma {
			b = append(b, ',')
		}
		comma = true
		b = append(b, '"')
		b = append(b, name...)
		b = append(b, '"', ':')
	}
	if len(q.Argv) > 0 {
		field("argv")
		b = append(b, '[')
		for i, a := range q.Argv {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, a)
		}
		b = append(b, ']')
	}
	if q.PTY {
		field("pty")
		b = append(b, "true"...)
	}
	if q.Term != "" {
		field("term")
		b = appendJSONString(b, q.Term)
	}
	if q.Rows != 0 {
		field("rows")
		b = strconv.AppendInt(b, int64(q.Rows), 10)
	}
	if q.Cols != 0 {
		field("cols")
		b = strconv.AppendInt(b, int64(q.Cols), 10)
	}
	if len(q.Env) > 0 {
		field("env")
		b = append(b, '{')
		for i, k := range slices.Sorted(maps.Keys(q.Env)) {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, q.Env[k])
		}
		b = append(b, '}')
	}
	b = append(b, '}')
	body = b[len(head):len(b):len(b)]
	b = append(b, '}')
	return b, body, nil
}

// appendJSONString appends s, valid UTF-8, as encoding/json writes a
// string: quoted, with control characters, quotes, backslashes, <, >, &,
// U+2028 and U+2029 escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b = append(b, '\\', byte(r))
		case r == '\b':
			b = append(b, '\\', 'b')
		case r == '\f':
			b = append(b, '\\', 'f')
		case r == '\n':
			b = append(b, '\\', 'n')
		case r == '\r':
			b = append(b, '\\', 'r')
		case r == '\t':
			b = append(b, '\\', 't')
		case r < 0x20 || r == '<' || r == '>' || r == '&':
			b = append(b, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xf])
		case r == '\u2028' || r == '\u2029':
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
		default:
			b = utf8.AppendRune(b, r)
		}
	}
	return append(b, '"')
}
