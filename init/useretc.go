package main

import (
	"fmt"
	"os"
	"strings"
)

// userEtc makes a user container's /etc say who its user is: the user is
// uid 0 of the container, listed first in /etc/passwd and /etc/group
// under their name (so `whoami` says it), with /home/USER as home; and
// /etc/hostname is the container's hostname. It runs in the container's
// own root, after pivot_root, and writes only into the container's upper
// layer.
func userEtc(user, hostname string) error {
	home := "/home/" + user
	edits := []struct {
		path, first string
	}{
		{"/etc/passwd", user + ":x:0:0:" + user + ":" + home + ":" + loginShell()},
		{"/etc/group", user + ":x:0:"},
	}
	for _, e := range edits {
		if err := putFirst(e.path, user, e.first); err != nil {
			return err
		}
	}
	if err := replaceFile("/etc/hostname", []byte(hostname+"\n")); err != nil {
		return err
	}
	return nil
}

// loginShell is the user's shell: bash where the system has it.
func loginShell() string {
	if _, err := os.Stat("/bin/bash"); err == nil {
		return "/bin/bash"
	}
	return "/bin/sh"
}

// putFirst makes line the first line of the colon-separated database at
// path, dropping any other entry for name.
func putFirst(path, name, line string) error {
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("%s: %w", path, err)
	}
	out := []string{line}
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if l == "" || strings.HasPrefix(l, name+":") {
			continue
		}
		out = append(out, l)
	}
	data := strings.Join(out, "\n") + "\n"
	if data == string(old) {
		return nil
	}
	return replaceFile(path, []byte(data))
}

// replaceFile writes data to path through a temporary file and a rename,
// so that a reader sees the old file or the new one.
func replaceFile(path string, data []byte) error {
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(path); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := path + ".nest-new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
