package supervise

import (
	"io"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestSealedSelf(t *testing.T) {
	path, err := sealedSelf()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := sealedSelf()
	if again != path {
		t.Errorf("sealedSelf() = %s then %s, want one copy per process", path, again)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	seals, err := unix.FcntlInt(f.Fd(), unix.F_GET_SEALS, 0)
	if err != nil || seals&unix.F_SEAL_WRITE == 0 || seals&unix.F_SEAL_SEAL == 0 {
		t.Errorf("seals = %#x, %v, want F_SEAL_WRITE and F_SEAL_SEAL", seals, err)
	}
	if _, err := f.Write([]byte("x")); err == nil {
		t.Error("writing the sealed copy succeeded")
	}
	f.Close() // an fd open for writing would make exec fail with ETXTBSY
	// It runs: the test binary answers -test.list. (Started through the
	// package's reaper: exec.Cmd.Wait beside it would lose its status.)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	p, err := testReaper.Start([]string{path, "-test.list", "TestSealedSelf"}, &syscall.ProcAttr{Files: []uintptr{0, w.Fd(), 2}})
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	r.Close()
	if st := wait(t, p); !st.Success() || !strings.Contains(string(out), "TestSealedSelf") {
		t.Errorf("exec of the sealed copy = %q, %v", out, st)
	}
}
