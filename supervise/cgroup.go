package supervise

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cgroup is one unit run's cgroup v2 directory. The process is born in it
// (CLONE_INTO_CGROUP, 5.7), so everything it forks can be killed with it
// (cgroup.kill, 5.14).
type cgroup struct {
	path string
	fd   int
}

func newCgroup(path string) (*cgroup, error) {
	if err := os.Mkdir(path, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	fd, err := unix.Open(path, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return &cgroup{path: path, fd: fd}, nil
}

func (c *cgroup) closeFD() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// Kill sends SIGKILL to every process in the cgroup.
func (c *cgroup) Kill() {
	if err := os.WriteFile(filepath.Join(c.path, "cgroup.kill"), []byte("1"), 0); err == nil {
		return
	}
	// Before 5.14: kill the members one by one until none is left.
	for range 100 {
		pids := readPids(filepath.Join(c.path, "cgroup.procs"))
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Remove kills what is left in the cgroup and removes it with every
// cgroup below it (a child container's init makes its own), deepest
// first, waiting briefly for the killed processes to be reaped.
func (c *cgroup) Remove() {
	c.closeFD()
	if populated(c.path) {
		c.Kill()
	}
	for range 200 {
		if err := removeTree(c.path); err == nil || errors.Is(err, unix.ENOENT) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// removeTree removes the cgroup directory dir and every cgroup below it.
func removeTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeTree(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, unix.ENOENT) {
				return err
			}
		}
	}
	return unix.Rmdir(dir)
}

func populated(path string) bool {
	b, err := os.ReadFile(filepath.Join(path, "cgroup.events"))
	if err != nil {
		return false
	}
	return strings.Contains(string(b), "populated 1")
}

func readPids(path string) []int {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
