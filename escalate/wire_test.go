package escalate

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// The exact-name check in Decode must know every field of Message.
func TestFieldsMatchMessage(t *testing.T) {
	typ := reflect.TypeFor[Message]()
	if typ.NumField() != len(fields) {
		t.Fatalf("Message has %d fields, fields has %d", typ.NumField(), len(fields))
	}
	for i := range typ.NumField() {
		name, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		if !fields[name] {
			t.Errorf("field %s (json %q) missing from fields", typ.Field(i).Name, name)
		}
	}
}

func TestDecode(t *testing.T) {
	good := []struct {
		in   string
		want Message
	}{
		{`{"type":"ready"}`, Message{Type: "ready"}},
		{` {"type":"state","id":7,"body":{"unit":"sshd"}} ` + "\n", Message{Type: "state", ID: 7, Body: json.RawMessage(`{"unit":"sshd"}`)}},
		{`{"error":"no such unit","id":18446744073709551615,"type":"error"}`, Message{Type: "error", ID: 1<<64 - 1, Error: "no such unit"}},
		{`{"type":"shutdown","body":"poweroff"}`, Message{Type: "shutdown", Body: json.RawMessage(`"poweroff"`)}},
		{`{"type":"subtree","body":[{"a":1},{"a":2}]}`, Message{Type: "subtree", Body: json.RawMessage(`[{"a":1},{"a":2}]`)}},
		{`{"typ\u0065":"ready","error":"a\":1, \"type\" :"}`, Message{Type: "ready", Error: `a":1, "type" :`}},
		{`{"type":"state","body":{"a":"x","b":{"a":1},"c":[{"a":1}]}}`, Message{Type: "state", Body: json.RawMessage(`{"a":"x","b":{"a":1},"c":[{"a":1}]}`)}},
	}
	for _, tc := range good {
		m, err := Decode([]byte(tc.in))
		if err != nil {
			t.Errorf("Decode(%s) = %v, want %+v", tc.in, err, tc.want)
			continue
		}
		if !reflect.DeepEqual(*m, tc.want) {
			t.Errorf("Decode(%s) = %+v, want %+v", tc.in, *m, tc.want)
		}
	}
	bad := []struct{ in, want string }{
		{``, "EOF"},
		{`   `, "EOF"},
		{`not json`, "invalid character"},
		{`{"type":"ready"`, "EOF"},
		{`{"type":"nope"}`, "unknown message type"},
		{`{"type":""}`, "no type"},
		{`{}`, "no type"},
		{`{"id":1}`, "no type"},
		{`{"type":null}`, "no type"},
		{`{"type":"ready","extra":1}`, `unknown field "extra"`},
		{`{"TYPE":"ready"}`, `unknown field "TYPE"`},
		{`{"Type":"ready"}`, `unknown field "Type"`},
		{`{"type":"ready","type":"spec"}`, `key "type" appears twice`},
		{`{"type":"ready","body":{"a":1,"a":2}}`, `key "a" appears twice`},
		{`{"type":"ready","body":[{"a":{"b":1,"b":1}}]}`, `key "b" appears twice`},
		{`{"type":"ready"} x`, "data after"},
		{`{"type":"ready"}{"type":"ready"}`, "data after"},
		{`{"type":"ready"}]`, "data after"},
		{`[{"type":"ready"}]`, "cannot unmarshal array"},
		{`"ready"`, "cannot unmarshal string"},
		{`{"type":"ready","\u0074ype":"spec"}`, `key "type" appears twice`},
		{`{"type":"ready","body":{"a\"":1,"a\u0022":2}}`, `key "a\"" appears twice`},
		{`null`, "not a JSON object"},
		{`{"type":"ready","id":-1}`, "cannot unmarshal"},
		{`{"type":"ready","id":1.5}`, "cannot unmarshal"},
		{`{"type":"ready","id":"1"}`, "cannot unmarshal"},
		{`{"type":"ready","id":18446744073709551616}`, "cannot unmarshal"},
		{`{"type":1}`, "cannot unmarshal"},
		{"{\"type\":\"ready\",\"error\":\"\xff\"}", "UTF-8"},
		{`{"type":"ready","body":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`, "exceeded max depth"},
		{`{"type":"spec","body":"` + strings.Repeat("x", MaxMessage) + `"}`, "over the limit"},
	}
	for _, tc := range bad {
		m, err := Decode([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			short := tc.in
			if len(short) > 80 {
				short = short[:80] + "…"
			}
			t.Errorf("Decode(%s) = %+v, %v; want an error with %q", short, m, err, tc.want)
		}
	}
}

func TestDecodeBody(t *testing.T) {
	type shutdown struct {
		Action string `json:"action"`
	}
	var v shutdown
	if err := DecodeBody(&Message{Type: "shutdown", Body: json.RawMessage(`{"action":"reboot"}`)}, &v); err != nil || v.Action != "reboot" {
		t.Errorf("DecodeBody = %+v, %v; want reboot", v, err)
	}
	for _, body := range []string{``, `null`, ` null `, `{"action":"reboot","force":true}`, `{"action":"a","action":"b"}`, `{"action":"reboot"} {}`, `{"action":1}`, `[]`} {
		var v shutdown
		if err := DecodeBody(&Message{Type: "shutdown", Body: json.RawMessage(body)}, &v); err == nil {
			t.Errorf("DecodeBody(%s) = %+v, nil; want an error", body, v)
		}
	}
}

// FuzzDecode checks that Decode never panics, that whatever it accepts
// marshals back to a packet it accepts again with the same meaning, and
// that DecodeBody of an accepted body never panics either.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"type":"ready"}`,
		`{"type":"state","id":7,"body":{"unit":"sshd","state":"running","pid":42}}`,
		`{"type":"error","id":3,"error":"no such unit: \u003cx\u003e"}`,
		`{"type":"shutdown","body":"poweroff"}`,
		`{"type":"subtree","id":1,"body":[{"name":"a","children":[{"name":"b"}]}]}`,
		`{"type":"spec","body":{"env":{"A":"1"},"argv":["/bin/sh","-c","echo <&>"]}}`,
		`{"type":"ready","body":null}`,
		`{"type":"ready","id":0,"error":"","body":{}}`,
		`{"type":"nope"}`,
		`{"type":"ready","extra":1}`,
		`{"TYPE":"ready"}`,
		`{"type":"ready","type":"spec"}`,
		`{"type":"ready","body":{"a":1,"a":2}}`,
		`{"type":"ready"} x`,
		`{"type":"ready"`,
		`[{"type":"ready"}]`,
		`{"type":"ready","id":-1}`,
		"{\"type\":\"ready\",\"error\":\"\xff\"}",
		``,
		`null`,
		`{"type":"request","body":{"argv":["id","-u"],"env":{"LANG":"C.UTF-8"}}}`,
		`{"type":"request","body":{"pty":true,"term":"xterm","rows":24,"cols":80}}`,
		`{"type":"request","body":{"argv":[]}}`,
		`{"type":"request","body":{"argv":["/bin/sh","-c","x"],"env":{"LD_PRELOAD":"x"}}}`,
		`{"type":"auth","body":{"signature":"U1NIU0lH","password":"x"}}`,
		`{"type":"data","body":{"data":"aGVsbG8="}}`,
		`{"type":"resize","body":{"rows":-1,"cols":70000}}`,
		`{"type":"signal","body":{"name":"INT"}}`,
		`{"type":"listen","body":{"child":"a","policy":{"method":"key","keys":["x"]}}}`,
	} {
		f.Add([]byte(s))
	}
	policy := &Policy{Method: MethodAllow, Commands: [][]string{{"id", "-u"}, {"echo", AnyArgs}}}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkKeys(b, fields) // must not panic even on input encoding/json refuses
		checkKeys(b, nil)
		m1, err := Decode(b)
		if err != nil {
			return
		}
		if len(m1.Body) > 0 {
			var anything any
			DecodeBody(m1, &anything)
			var typed struct {
				Name     string            `json:"name"`
				Children []json.RawMessage `json:"children"`
				Env      map[string]string `json:"env"`
			}
			DecodeBody(m1, &typed)
			checkEscalationBody(t, m1, policy)
		}
		b2, err := json.Marshal(m1)
		if err != nil {
			t.Fatalf("Decode(%q) = %+v, which does not marshal: %v", b, m1, err)
		}
		m2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(%q) accepted, but its re-marshalled %q is refused: %v", b, b2, err)
		}
		if m1.Type != m2.Type || m1.ID != m2.ID || m1.Error != m2.Error {
			t.Fatalf("Decode(%q) = %+v; re-decoded %+v", b, m1, m2)
		}
		var v1, v2 any
		if len(m1.Body) > 0 {
			if err := json.Unmarshal(m1.Body, &v1); err != nil {
				t.Fatalf("accepted body %q does not unmarshal: %v", m1.Body, err)
			}
		}
		if len(m2.Body) > 0 {
			if err := json.Unmarshal(m2.Body, &v2); err != nil {
				t.Fatalf("re-decoded body %q does not unmarshal: %v", m2.Body, err)
			}
		}
		if !reflect.DeepEqual(v1, v2) {
			t.Fatalf("body %q re-decoded as %q", m1.Body, m2.Body)
		}
		b3, err := json.Marshal(m2)
		if err != nil || !bytes.Equal(b2, b3) {
			t.Fatalf("marshal is not a fixed point: %q then %q (%v)", b2, b3, err)
		}
	})
}

// checkEscalationBody decodes an escalation message's body as the broker
// does and checks what a request turns into.
func checkEscalationBody(t *testing.T, m *Message, policy *Policy) {
	switch m.Type {
	case MsgRequest:
		var q Request
		if DecodeBody(m, &q) != nil {
			return
		}
		pl, err := checkRequest(&q, policy, "f")
		if err != nil {
			return
		}
		if len(pl.argv) == 0 || pl.argv[0] == "" || !strings.HasPrefix(pl.path, "/") {
			t.Fatalf("request %s made plan %+v", m.Body, pl)
		}
		if len(q.Argv) == 0 || !allowedCommand(pl.path, q.Argv[1:], policy.Commands) {
			t.Fatalf("request %s passed the commands rules: %+v", m.Body, pl)
		}
		for _, kv := range pl.env {
			k, _, _ := strings.Cut(kv, "=")
			switch {
			case k == "HOME", k == "USER", k == "LOGNAME", k == "SHELL", k == "PATH", k == "NEST_ESCALATED_FROM",
				k == "TERM", k == "LANG", k == "LANGUAGE", k == "COLORTERM", strings.HasPrefix(k, "LC_"):
			default:
				t.Fatalf("request %s put %s in the environment", m.Body, kv)
			}
			if strings.ContainsAny(kv, "/") && !strings.HasPrefix(kv, "PATH=") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "SHELL=") {
				t.Fatalf("request %s put a path in the environment: %s", m.Body, kv)
			}
		}
	case MsgAuth:
		var a Auth
		if DecodeBody(m, &a) == nil {
			Verify(a.Signature, SigNamespace, []byte("m"), nil)
		}
	case MsgData, MsgResize, MsgSignal, MsgExit, MsgWait, MsgHello, MsgListen, MsgDecide, MsgForget:
		for _, v := range []any{&Data{}, &Size{}, &Signal{}, &Exit{}, &Wait{}, &Hello{}, &Listen{}, &Decide{}, &Forget{}} {
			DecodeBody(m, v)
		}
	}
}
