package escalate

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestForwardSignals: once the forwarder catches signals, one of this
// process goes to the session as a signal message; a forwarder stopped
// before its time never catches any.
func TestForwardSignals(t *testing.T) {
	client, broker := pair(t)
	never := forwardSignals(client, []os.Signal{unix.SIGUSR2}, time.Hour)
	never.stop()

	fw := forwardSignals(client, []os.Signal{unix.SIGUSR1}, 0)
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
	never.mu.Lock()
	defer never.mu.Unlock()
	if never.catching {
		t.Error("a forwarder stopped before its time catches signals")
	}
}
