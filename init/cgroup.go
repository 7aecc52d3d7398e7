package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"nest/mounts"
)

// setupRootCgroup prepares the cgroup v2 tree of an init whose cgroup is
// root (PID 1 of the machine, or of a container with its own cgroup
// namespace): the init moves itself into the leaf init.scope (cgroup v2
// forbids processes in a cgroup that delegates controllers), every
// available controller is enabled for children, and services get their own
// parent. It returns that parent, under which each unit gets a cgroup.
func setupRootCgroup(root string) (string, error) {
	return unitParent(root, "services")
}

// containerCgroups returns the parent of child containers' cgroups, beside
// services (setupRootCgroup must have run).
func containerCgroups(root string) (string, error) {
	dir := filepath.Join(root, "containers")
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup %s: %w", dir, err)
	}
	return dir, enableControllers(dir)
}

func unitParent(root, name string) (string, error) {
	if !mounts.Mounted(root, unix.CGROUP2_SUPER_MAGIC) {
		return "", fmt.Errorf("no cgroup v2 at %s", root)
	}
	if err := joinCgroup(filepath.Join(root, "init.scope")); err != nil {
		return "", err
	}
	if err := enableControllers(root); err != nil {
		return "", err
	}
	services := filepath.Join(root, name)
	if err := os.Mkdir(services, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("cgroup %s: %w", services, err)
	}
	if err := enableControllers(services); err != nil {
		return "", err
	}
	return services, nil
}

// joinCgroup moves the whole process (all threads) into dir, creating it.
func joinCgroup(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	pid := strconv.Itoa(os.Getpid())
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pid), 0); err != nil {
		return fmt.Errorf("join cgroup %s: %w", dir, err)
	}
	return nil
}

// enableControllers enables for dir's children every controller dir has.
// Each is enabled on its own, so one the kernel refuses does not keep the
// others off.
func enableControllers(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup controllers of %s: %w", dir, err)
	}
	var errs []error
	for _, c := range strings.Fields(string(b)) {
		err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0)
		if err != nil {
			errs = append(errs, fmt.Errorf("enable %s in %s: %w", c, dir, err))
		}
	}
	return errors.Join(errs...)
}

// ownCgroup returns the cgroup v2 path of this process from /proc/self/cgroup.
func ownCgroup() (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			return rest, nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
}
