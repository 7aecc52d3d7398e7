package config

import (
	"reflect"
	"strings"
	"testing"
)

const testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGQ3O4KHbvdBxsnKXJ5qLn4mEuGMgVY+K3jqTBnWJbGj alice@laptop"

func TestEscalateKeys(t *testing.T) {
	doc := user("alice",
		`escalate = "key"`,
		`keys = ["`+testKey+`"]`,
		`keys_file = "/etc/nest/keys/alice"`,
		`as = "admin"`,
		`commands = [["nest", "restart", "web"], ["/usr/bin/apt", "..."]]`,
		`password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA"`,
	) + user("bob")
	c, err := Parse("t.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := c.Container("alice")
	want := Escalate{Method: EscalateKey, Keys: []string{testKey}, KeysFile: "/etc/nest/keys/alice", As: "admin",
		Commands: [][]string{{"nest", "restart", "web"}, {"/usr/bin/apt", "..."}}}
	if !reflect.DeepEqual(a.Escalate, want) || !strings.HasPrefix(a.PasswordHash, "$argon2id$") {
		t.Errorf("alice's escalation = %+v, %q", a.Escalate, a.PasswordHash)
	}
	b, _ := c.Container("bob")
	if b.Escalate.Method != "" {
		t.Errorf("bob's escalation = %+v, want the default (deny)", b.Escalate)
	}
	// The child never gets its own policy or hash; a grandchild's stays
	// with the child, its parent.
	nested, err := Parse("t.toml", []byte(user("a", `escalate = "allow"`, `password_hash = "$6$saltsalt$xxxxxxxxxxxx"`, "[container.a.container.b]", `kind = "user"`, `escalate = "confirm"`)))
	if err != nil {
		t.Fatal(err)
	}
	fc := nested.Containers[0].ForChild()
	if fc.Escalate.Method != "" || fc.PasswordHash != "" || fc.Containers[0].Escalate.Method != EscalateConfirm {
		t.Errorf("ForChild = %+v, want no policy or hash of its own and its child's kept", fc)
	}
	if nested.Containers[0].Escalate.Method != EscalateAllow {
		t.Errorf("ForChild changed the original")
	}
	// Escalation keys are not part of Equal: a new policy restarts nothing.
	x := *a
	x.Escalate.Method = EscalateDeny
	if !a.Equal(x) {
		t.Errorf("a container with another policy is not Equal")
	}
}

func TestEscalateErrors(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"method", user("a", `escalate = "sudo"`), `3:12: container "a": escalate = "sudo": want one of "deny", "allow", "key", "password", "confirm"`},
		{"method type", user("a", `escalate = true`), `3:12: container "a": escalate = true: want a string`},
		{"key without keys", user("a", `escalate = "key"`), `3:12: container "a": escalate = "key" needs keys = ["ssh-ed25519 …"] or keys_file`},
		{"bad key", user("a", `escalate = "key"`, `keys = ["ssh-ed25519 nope"]`), `4:9: container "a": keys[0] = "ssh-ed25519 nope": not an SSH public key`},
		{"key options", user("a", `escalate = "key"`, `keys = ["command=\"x\" `+testKey+`"]`), `4:9: container "a": keys[0]: options before the key are not supported`},
		{"empty key", user("a", `escalate = "key"`, `keys = [""]`), `4:9: container "a": keys[0]: want an SSH public key`},
		{"keys without key", user("a", `escalate = "allow"`, `keys = ["`+testKey+`"]`), `4:1: container "a": keys are only for escalate = "key"`},
		{"keys_file relative", user("a", `escalate = "key"`, `keys_file = "keys"`), `4:13: container "a": keys_file = "keys": want an absolute path`},
		{"as", user("a", `escalate = "allow"`, `as = "ro ot"`), `4:6: container "a": as = "ro ot": want a user name of the parent`},
		{"password without hash", user("a", `escalate = "password"`), `3:12: container "a": escalate = "password" needs password_hash`},
		{"bad hash", user("a", `escalate = "password"`, `password_hash = "secret"`), `4:17: container "a": password_hash: want an argon2id hash`},
		{"commands type", user("a", `escalate = "allow"`, `commands = ["nest"]`), `4:13: container "a": commands[0] = "nest": want an array of strings`},
		{"commands empty", user("a", `escalate = "allow"`, `commands = []`), `4:12: container "a": commands = []: no command could run`},
		{"command empty", user("a", `escalate = "allow"`, `commands = [[]]`), `4:12: container "a": commands[0]: want a command and its arguments`},
		{"command relative", user("a", `escalate = "allow"`, `commands = [["bin/x"]]`), `4:13: container "a": commands[0]: "bin/x": want a command name or an absolute path`},
		{"dots not last", user("a", `escalate = "allow"`, `commands = [["apt", "...", "x"]]`), `4:13: container "a": commands[0]: "..." stands for any further arguments and must come last`},
		{"commands with deny", user("a", `commands = [["id"]]`), `3:1: container "a": commands: escalate is "deny", so nothing runs`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("t.toml", []byte(tc.doc))
			if err == nil || !strings.HasPrefix(err.Error(), "t.toml:"+tc.want) {
				t.Errorf("Parse(%q) =\n%v\nwant\nt.toml:%s…", tc.doc, err, tc.want)
			}
		})
	}
}
