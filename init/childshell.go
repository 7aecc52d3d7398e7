package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"nest/config"
	"nest/supervise"
)

// shellHost opens the `nest shell` sessions of a child container
// (supervise.ShellHost): a terminal of the container's own devpts, and
// the user's login shell (a user container) or /bin/sh (a daemon
// container), or the command asked for, confined as the container's
// workload is.
type shellHost struct {
	c config.Container
	// pts is the container's /dev/pts (O_PATH), opened by the init right
	// after it built the root, before any process of the container ran:
	// what the container does to the names under /dev later cannot
	// redirect it.
	pts    int
	passwd string // the container's /etc/passwd
}

func newShellHost(c config.Container) *shellHost {
	fd, err := unix.Open("/dev/pts", unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		fd = -1
	}
	return &shellHost{c: c, pts: fd, passwd: "/etc/passwd"}
}

func (h *shellHost) Terminal() (master, slave *os.File, err error) {
	if h.pts < 0 {
		return nil, nil, errors.New("this container has no /dev/pts")
	}
	return supervise.OpenTerminal(h.pts)
}

// Command is the shell session's process: the command asked for (a name
// without a slash is looked up in PATH), or the login shell, with the
// user's HOME as its directory where it exists.
func (h *shellHost) Command(req supervise.ShellRequest) (supervise.Spec, error) {
	user, home, shell := "root", "/root", "/bin/sh"
	if h.c.Kind == config.KindUser {
		user = userName(h.c)
		home = "/home/" + user
		if e, ok := passwdEntry(h.passwd, user); ok {
			if filepath.IsAbs(e.home) {
				home = e.home
			}
			if filepath.IsAbs(e.shell) {
				shell = e.shell
			}
		}
	}
	argv := req.Argv
	if len(argv) == 0 {
		argv = []string{shell, "-l"}
	} else if !strings.Contains(argv[0], "/") {
		path, err := exec.LookPath(argv[0])
		if err != nil {
			return supervise.Spec{}, fmt.Errorf("%s: not found in %s", argv[0], supervise.DefaultPath)
		}
		argv = append([]string{path}, argv[1:]...)
	} else if err := unix.Access(argv[0], unix.X_OK); err != nil {
		return supervise.Spec{}, fmt.Errorf("%s: %w", argv[0], err)
	}
	term := req.Term
	if term == "" {
		term = "xterm"
	}
	// The home as the directory, where the container may enter it (a
	// daemon container's /root is the parent's, which it may not).
	dir := "/"
	if unix.Access(home, unix.X_OK) == nil {
		dir = home
	}
	return supervise.Spec{
		Service: config.Service{
			Exec: argv, Dir: dir, StopTimeout: time.Second,
			Env: map[string]string{"TERM": term, "HOME": home, "USER": user, "LOGNAME": user, "SHELL": shell},
		},
		Confine: workloadConfine(h.c),
	}, nil
}

// workloadConfine is the `nest confine` prefix of what a container runs
// (its daemon, a shell in it): no_new_privs and the daemon's capability
// set as its sandbox says; nil when there is nothing to drop.
func workloadConfine(c config.Container) []string {
	confine := []string{"/proc/self/exe", "confine"}
	if c.Sandbox.NoNewPrivileges {
		confine = append(confine, "--nnp")
	}
	if !c.Sandbox.Nesting {
		confine = append(confine, "--caps", "daemon")
	}
	if len(confine) == 2 {
		return nil
	}
	return confine
}

// passwdInfo is what a shell session needs of a passwd entry.
type passwdInfo struct{ home, shell string }

// passwdEntry reads the entry of user from a passwd file of the container.
// The file is the container's: it is opened without blocking (a FIFO
// cannot hold the init), must be a regular file, and is read up to 1 MiB.
func passwdEntry(path, user string) (passwdInfo, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0)
	if err != nil {
		return passwdInfo{}, false
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return passwdInfo{}, false
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return passwdInfo{}, false
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) == 7 && f[0] == user {
			return passwdInfo{home: f[5], shell: f[6]}, true
		}
	}
	return passwdInfo{}, false
}
