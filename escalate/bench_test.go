package escalate

import (
	"os"
	"testing"
)

// BenchmarkEscalateTrue is one escalation of /bin/true with policy allow,
// client and broker in this process: the protocol and the spawn, without
// the start of a client process (bench/ times the whole `nest escalate`).
func BenchmarkEscalateTrue(b *testing.B) {
	tb := newTestBroker(b)
	benchEscalate(b, tb.listen(b, "alice", Policy{Method: MethodAllow}), nil)
}

// BenchmarkEscalateKey is the same with policy key and an ed25519 key
// file: the signature, its check, and a round trip more.
func BenchmarkEscalateKey(b *testing.B) {
	tb := newTestBroker(b)
	k := newTestKey(b, tb.dir, "k")
	benchEscalate(b, tb.listen(b, "alice", Policy{Method: MethodKey, Keys: []string{k.line}}), []string{k.file})
}

func benchEscalate(b *testing.B, sock string, keyFiles []string) {
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	c := &Client{Socket: sock, Argv: []string{"/bin/true"}, Stdin: null, Stdout: null, Stderr: null, KeyFiles: keyFiles}
	for b.Loop() {
		if code, err := c.Run(); err != nil || code != 0 {
			b.Fatalf("Run = %d, %v", code, err)
		}
	}
}
