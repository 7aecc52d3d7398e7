package vmtest

import (
	"bytes"
	"fmt"
	"os/exec"
	"path"
	"strings"
)

// hostBusybox is the static busybox from Debian's busybox-static package.
var hostBusybox = "/bin/busybox"

// AddBusybox adds the host's static busybox as /bin/busybox, /bin/sh and a
// symlink for every applet it lists (busybox --list-full), except init and
// linuxrc: nest is the image's /init and nothing may shadow it.
func (img *Image) AddBusybox() error {
	out, err := exec.Command(hostBusybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("add busybox: %s --list-full: %w (install busybox-static: run make deps)", hostBusybox, err)
	}
	applets, err := busyboxApplets(out)
	if err != nil {
		return fmt.Errorf("add busybox: %w", err)
	}
	img.AddFile("/bin/busybox", hostBusybox, 0o755)
	img.AddSymlink("/bin/sh", "/bin/busybox")
	for _, a := range applets {
		if a == "bin/busybox" {
			continue
		}
		img.AddSymlink("/"+a, "/bin/busybox")
	}
	return img.err
}

// busyboxApplets parses busybox --list-full output ("usr/bin/env" per
// line), dropping the applets that would replace /init.
func busyboxApplets(listing []byte) ([]string, error) {
	var applets []string
	for _, line := range strings.Split(string(bytes.TrimSpace(listing)), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.Contains(line, "..") || strings.HasPrefix(line, "/") {
			return nil, fmt.Errorf("unexpected applet path %q", line)
		}
		switch path.Base(line) {
		case "init", "linuxrc":
			continue
		}
		applets = append(applets, line)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("busybox lists no applets")
	}
	return applets, nil
}
