package supervise

import (
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Descendants returns the pids of every process below pid, read from
// /proc. It is how an init that may not use kill(-1) (nest up) finds what
// it started and what that left behind.
func Descendants(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := make(map[int][]int)
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := parentOf(p); ok {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// parentOf reads the ppid from /proc/PID/stat. The command name (field 2)
// may hold spaces and parentheses, so parse after its last ')'.
func parentOf(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}

// KillDescendants stops every descendant of this process: SIGTERM and
// SIGCONT, a grace that ends as soon as none is left, then SIGKILL. The
// caller must be PID 1 or a subreaper, so that orphans come back to it and
// are reaped here. It reports whether it had to use SIGKILL.
func (r *Reaper) KillDescendants(grace time.Duration) bool {
	// Every descendant's chain of parents ends at a child of this process
	// (an orphan's parent is this process): no child, no descendant, and
	// no need to read /proc.
	r.Reap()
	if !r.HasChildren() {
		return false
	}
	self := os.Getpid()
	signalAll := func(sig unix.Signal) {
		below := Descendants(self)
		ours := map[int]bool{self: true}
		for _, p := range below {
			ours[p] = true
		}
		for _, p := range below {
			// The pid may have been recycled since /proc was read: open a
			// pidfd (which pins whatever has the pid now), then check that
			// its parent is still this process or one of its descendants.
			fd, err := unix.PidfdOpen(p, 0)
			if err != nil {
				continue
			}
			if pp, ok := parentOf(p); ok && ours[pp] {
				unix.PidfdSendSignal(fd, sig, nil, 0)
			}
			unix.Close(fd)
		}
	}
	signalAll(unix.SIGTERM)
	signalAll(unix.SIGCONT)
	if r.WaitNoChildren(grace) {
		return false
	}
	for range 10 {
		signalAll(unix.SIGKILL)
		if r.WaitNoChildren(200 * time.Millisecond) {
			break
		}
	}
	return true
}
