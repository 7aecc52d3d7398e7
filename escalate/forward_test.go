package escalate

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestForwardSignals: once the forwarder catches signals, one of this
// process goes to the session as a signal message.
func TestForwardSignals(t *testing.T) {
	client, broker := pair(t)
	fw := forwardSignals(client, []os.Signal{unix.SIGUSR1})
	select {
	case <-fw.ready:
	case <-time.After(10 * time.Second):
		t.Fatal("the forwarder never caught its signals")
	}
	if err := unix.Kill(os.Getpid(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	broker.SetReadDeadline(time.Now().Add(10 * time.Second))
	m, _ := recv(t, broker)
	var s Signal
	if m.Type != MsgSignal || DecodeBody(m, &s) != nil || s.Name != "USR1" {
		t.Fatalf("got %+v, want a signal message for USR1", m)
	}
	fw.stop()
}
