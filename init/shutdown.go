package main

import (
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"nest/mounts"
)

// Grace periods of the final kill of a shutdown: SIGTERM to everything
// left, then SIGKILL after killGrace (or as soon as nothing is left).
const (
	killGrace = 5 * time.Second
	killFinal = 2 * time.Second
)

// shutdown starts an orderly poweroff, reboot or halt, once.
func (b *booter) shutdown(action string) {
	b.mu.Lock()
	already := b.stopping
	b.stopping = true
	b.mu.Unlock()
	if already {
		b.logf("%s requested: a shutdown is already under way", action)
		return
	}
	go b.finish(action)
}

// finish stops the system: units in reverse dependency order, then every
// remaining process, then sync, unmount and reboot(2). The main loop keeps
// reaping meanwhile.
func (b *booter) finish(action string) {
	defer b.recoverLog("shutdown")
	b.logf("%s: stopping units", action)
	if b.sup != nil {
		b.sup.Shutdown()
	}
	if b.ctl != nil {
		b.ctl.Close()
	}

	// Everything not started as a unit: TERM (and CONT, so stopped ones can
	// act on it), a grace that ends as soon as nothing is left, then KILL.
	if b.reaper.HasChildren() {
		b.logf("%s: stopping remaining processes", action)
		unix.Kill(-1, unix.SIGTERM)
		unix.Kill(-1, unix.SIGCONT)
		if !b.reaper.WaitNoChildren(killGrace) {
			b.logf("%s: killing remaining processes", action)
			unix.Kill(-1, unix.SIGKILL)
			b.reaper.WaitNoChildren(killFinal)
		}
	}

	unix.Sync()
	if err := mounts.UnmountAll(b.logf); err != nil {
		b.logf("%s: %v", action, err)
	}
	unix.Sync()
	b.logf("%s", action)

	// reboot(2) from a child: a failing poweroff ends the calling process,
	// which must not be PID 1.
	exe := "/proc/self/exe"
	p, err := b.reaper.Start([]string{exe, "reboot-helper", action}, &syscall.ProcAttr{
		Files: []uintptr{0, 1, 2},
	})
	if err == nil {
		<-p.Done()
		p.Close()
	} else {
		b.logf("%s: %v", action, err)
	}
	if action == "reboot" {
		// The kernel either restarts or returns an error here; it never
		// ends the caller.
		unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	}
	b.logf("%s failed: the system is halted; it is safe to switch it off", action)
	select {}
}
