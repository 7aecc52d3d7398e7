package escalate

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// TestEncodeRequestMatchesJSON: the hand-written request packet is
// json.Marshal's, byte for byte, and its body is the packet's.
func TestEncodeRequestMatchesJSON(t *testing.T) {
	odd := "q\"b\\s/ \b\f\n\r\t\x00\x01\x1f\x7f <>& \u2028\u2029 é 日本 🙂"
	cases := []Request{
		{},
		{Argv: []string{"true"}},
		{Argv: []string{"sh", "-c", odd, ""}},
		{Argv: []string{}},
		{PTY: true, Term: "xterm-256color", Rows: 24, Cols: 80},
		{PTY: true, Rows: -1, Cols: 100000},
		{Argv: []string{"id"}, Env: map[string]string{"LANG": "C.UTF-8", "LC_ALL": odd, "COLORTERM": "truecolor", odd: "x"}},
		{Env: map[string]string{}},
	}
	for i, q := range cases {
		packet, body, err := requestPacket(&q)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		wantBody, err := json.Marshal(q)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal(&Message{Type: MsgRequest, Body: wantBody})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(packet, want) {
			t.Errorf("case %d:\n got %s\nwant %s", i, packet, want)
		}
		if !bytes.Equal(body, wantBody) {
			t.Errorf("case %d: body\n got %s\nwant %s", i, body, wantBody)
		}
		m, err := Decode(packet)
		if err != nil {
			t.Fatalf("case %d: Decode: %v", i, err)
		}
		if !bytes.Equal(m.Body, body) {
			t.Errorf("case %d: the decoded body differs from the signed one", i)
		}
	}
}

// FuzzEncodeRequest: for any valid UTF-8 the packet is json.Marshal's;
// invalid UTF-8 is refused, never sent changed.
func FuzzEncodeRequest(f *testing.F) {
	f.Add("true", "C.UTF-8", "xterm", 3)
	f.Add("\xff", "<&>", "\u2028", -7)
	f.Fuzz(func(t *testing.T, arg, lang, term string, n int) {
		q := Request{Argv: []string{arg, lang}, Term: term, Rows: n, Env: map[string]string{"LANG": lang, term: arg}}
		packet, _, err := requestPacket(&q)
		if !utf8.ValidString(arg) || !utf8.ValidString(lang) || !utf8.ValidString(term) {
			if err == nil {
				t.Fatalf("invalid UTF-8 accepted: %q", packet)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := json.Marshal(q)
		want, _ := json.Marshal(&Message{Type: MsgRequest, Body: body})
		if !bytes.Equal(packet, want) {
			t.Fatalf("\n got %s\nwant %s", packet, want)
		}
	})
}
