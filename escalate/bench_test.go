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
	sock := tb.listen(b, "alice", Policy{Method: MethodAllow})
	null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer null.Close()
	c := &Client{Socket: sock, Argv: []string{"/bin/true"}, Stdin: null, Stdout: null, Stderr: null}
	for b.Loop() {
		if code, err := c.Run(); err != nil || code != 0 {
			b.Fatalf("Run = %d, %v", code, err)
		}
	}
}
