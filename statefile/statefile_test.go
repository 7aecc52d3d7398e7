package statefile

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestWrite(t *testing.T) {
	for _, durable := range []bool{false, true} {
		dir := t.TempDir()
		path := filepath.Join(dir, "state")
		for _, data := range []string{"one\n", "two\n"} {
			if err := Write(path, []byte(data), durable); err != nil {
				t.Fatal(err)
			}
			if b, err := os.ReadFile(path); err != nil || string(b) != data {
				t.Errorf("Write(durable=%v) then read = %q, %v; want %q", durable, b, err, data)
			}
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 1 {
			t.Errorf("Write left %d files in its directory, want 1", len(entries))
		}
	}
	if err := Write(filepath.Join(t.TempDir(), "no", "dir"), nil, true); err == nil {
		t.Error("Write into a missing directory succeeded")
	}
}

func TestLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	unlock, err := Lock(path)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	order := []string{}
	done := make(chan struct{})
	go func() {
		u, err := Lock(path)
		if err != nil {
			t.Error(err)
		}
		mu.Lock()
		order = append(order, "second")
		mu.Unlock()
		u()
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	mu.Lock()
	order = append(order, "first")
	mu.Unlock()
	unlock()
	<-done
	if len(order) != 2 || order[0] != "first" {
		t.Errorf("lock order %v: the second Lock did not wait for the first", order)
	}
}
