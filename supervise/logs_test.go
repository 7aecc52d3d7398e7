package supervise

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLogRing(t *testing.T) {
	l := NewLog("")
	l.Write([]byte("hello "))
	l.Write([]byte("world"))
	got, cur := l.Snapshot()
	if string(got) != "hello world" || cur != 11 {
		t.Fatalf("Snapshot() = %q, %d, want %q, 11", got, cur, "hello world")
	}
	l.Write([]byte("!"))
	if more, _ := l.Since(cur); string(more) != "!" {
		t.Errorf("Since(%d) = %q, want %q", cur, more, "!")
	}

	// Overflow keeps exactly the newest RingSize bytes, in order.
	var all bytes.Buffer
	for i := 0; all.Len() < 3*RingSize; i++ {
		chunk := []byte(strings.Repeat(string(rune('a'+i%26)), 1000+i%7))
		all.Write(chunk)
		l.Write(chunk)
	}
	full := append([]byte("hello world!"), all.Bytes()...)
	got, _ = l.Snapshot()
	if want := full[len(full)-RingSize:]; !bytes.Equal(got, want) {
		t.Errorf("Snapshot after overflow: %d bytes, not the newest %d", len(got), RingSize)
	}
}

func TestLogFileRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "svc.log")
	l := NewLog(path)
	line := []byte(strings.Repeat("x", 1023) + "\n")
	for range LogFileMax/len(line) + 10 {
		l.Write(line)
	}
	l.Close()
	cur, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.Stat(path + ".1")
	if err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	if cur.Size() > LogFileMax || old.Size() > LogFileMax {
		t.Errorf("sizes %d and %d, want each <= %d", cur.Size(), old.Size(), LogFileMax)
	}
	if cur.Size()+old.Size() < LogFileMax {
		t.Errorf("sizes %d + %d lose data before the cap", cur.Size(), old.Size())
	}
}

func TestLogFileUnwritable(t *testing.T) {
	l := NewLog("/proc/nonexistent/dir/x.log")
	if n, err := l.Write([]byte("still kept")); n != 10 || err != nil {
		t.Errorf("Write = %d, %v, want 10, nil", n, err)
	}
	if got, _ := l.Snapshot(); string(got) != "still kept" {
		t.Errorf("Snapshot = %q", got)
	}
	if l.FileError() == nil {
		t.Error("FileError() = nil, want the open error")
	}
}

func TestParseNotify(t *testing.T) {
	tests := []struct {
		in   string
		want notifyMessage
	}{
		{"READY=1", notifyMessage{ready: true}},
		{"READY=1\nSTATUS=serving 3 clients\n", notifyMessage{ready: true, status: "serving 3 clients"}},
		{"STATUS=starting", notifyMessage{status: "starting"}},
		{"READY=0\nMAINPID=1\nbogus", notifyMessage{}},
		{"", notifyMessage{}},
	}
	for _, tt := range tests {
		if got := parseNotify([]byte(tt.in)); got != tt.want {
			t.Errorf("parseNotify(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}
