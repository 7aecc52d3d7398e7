// Command nest is an init (PID 1) that runs Linux as a hierarchy of
// containers. One binary, several modes, decided at start:
//
//   - boot: PID 1 of the machine (the /init of an initramfs or init=): early
//     mounts, modules, hostname, console, then the supervisor, and an
//     orderly poweroff or reboot at the end;
//   - up: `nest up` runs the same supervisor inside an existing container or
//     host, as its PID 1 or as a subreaper, or as a container entrypoint
//     (`nest up -- CMD`);
//   - CLI: every other verb talks to the nearest init's control socket.
//
// Hidden internal modes (reboot-helper, run-init, child-init, confine,
// escalate-broker, login) are registered in one table and checked before
// anything else.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// pid1Signals is every signal an init can receive and must therefore
// handle: without a handler Go exits with status 2 on SIGTERM, SIGINT or
// SIGHUP, which in PID 1 is a kernel panic. SIGKILL and SIGSTOP cannot be
// caught; SIGURG is the Go runtime's own preemption signal; 32 and 33 are
// reserved for the C library's threads.
func pid1Signals() []os.Signal {
	var sigs []os.Signal
	for s := unix.Signal(1); s <= 64; s++ {
		switch s {
		case unix.SIGKILL, unix.SIGSTOP, unix.SIGURG, 32, 33:
			continue
		}
		sigs = append(sigs, s)
	}
	return sigs
}

// earlySignals are caught by every init for its whole life, and by nest
// up before it does anything else: the ones whose default action in a Go
// program ends it (HUP, INT and TERM exit, QUIT and ABRT dump the stacks
// and exit, PIPE exits after a write to a closed stdout or stderr) and
// PWR, which stops a child container. Go ignores every other signal while
// nobody has asked for it.
var earlySignals = []os.Signal{unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGABRT, unix.SIGTERM, unix.SIGPIPE, unix.SIGPWR}

// lateSignals is done once notifyInit has enabled every signal it was
// given.
var lateSignals sync.WaitGroup

// notifyInit routes early, late and earlySignals to sigs. os/signal
// enables each signal with a synchronous round trip to a thread of its own
// (two thread switches each: all 59 of pid1Signals took 1-5 ms here, on
// the start path of every container), so it enables early before it
// returns and the rest in the background, while the init builds its root;
// lateSignals.Wait before starting any process.
func notifyInit(sigs chan<- os.Signal, early, late []os.Signal) {
	if len(early) > 0 {
		signal.Notify(sigs, early...)
	}
	late = slices.DeleteFunc(append(slices.Clone(late), earlySignals...), func(s os.Signal) bool { return slices.Contains(early, s) })
	if len(late) == 0 {
		return
	}
	lateSignals.Add(1)
	go func() {
		defer lateSignals.Done()
		signal.Notify(sigs, late...)
	}()
}

// initSignals returns the signals the init of mode (an internal mode, or
// "up") handles or forwards: a child init acts on TERM, INT and PWR only;
// nest run's sandbox forwards what nest run forwards to it; nest up's
// entrypoint form forwards everything.
func initSignals(mode string) []os.Signal {
	switch mode {
	case "child-init":
		return []os.Signal{unix.SIGTERM, unix.SIGINT, unix.SIGPWR}
	case "run-init":
		return runForwarded
	}
	return pid1Signals()
}

// initEarlySignals returns the signals the init of mode enables before it
// does anything else: earlySignals, but none for the init of a container
// or of nest run's sandbox. Until it starts a process, only its parent can
// signal it, and a signal that ends it then ends a namespace with nothing
// in it yet: nest run's signals end the sandbox, and a container's parent
// that stops it sees it stopped.
func initEarlySignals(mode string) []os.Signal {
	if mode == "run-init" || mode == "child-init" {
		return nil
	}
	return earlySignals
}

func main() {
	// First thing, before any other work: a signal that arrives while PID 1
	// is still starting must not kill it.
	var sigs chan os.Signal
	if os.Getpid() == 1 {
		sigs = make(chan os.Signal, 128)
		if bootMode(os.Args) {
			signal.Notify(sigs, pid1Signals()...)
			reexecWithoutTHP()
		} else {
			notifyInit(sigs, initEarlySignals(os.Args[1]), initSignals(os.Args[1]))
		}
	}
	os.Exit(run(os.Args, sigs))
}

// bootMode reports whether PID 1 boots the machine: anything but `nest up`
// and the internal modes (run-init is PID 1 of a sandbox's namespace).
func bootMode(args []string) bool {
	if len(args) < 2 {
		return true
	}
	_, isInternal := internal[args[1]]
	return args[1] != "up" && !isInternal
}

// reexecWithoutTHP restarts PID 1 once with GODEBUG=disablethp=1. With
// transparent huge pages set to "always" (Debian's kernels), every 2 MB of
// Go heap PID 1 ever touched stays resident after the runtime returns it:
// measured in the VM, 4.6 MB of an idle PID 1's 5.3 MB of anonymous memory.
// The setting exists only in the environment, which the kernel gives init,
// and it marks only nest's own heap MADV_NOHUGEPAGE (prctl's
// PR_SET_THP_DISABLE would reach every service too). The pid stays 1 across
// execve, and the kernel drops signals to an init that has no handler, so
// the instant between is safe. If the exec fails, boot goes on as is.
func reexecWithoutTHP() {
	const setting = "disablethp=1"
	godebug := os.Getenv("GODEBUG")
	if strings.Contains(godebug, setting) {
		return
	}
	if godebug != "" {
		godebug += ","
	}
	env := append(os.Environ(), "GODEBUG="+godebug+setting)
	syscall.Exec(os.Args[0], os.Args, env)
}

// internal modes are exec'd by nest itself, never typed by people.
var internal map[string]func(args []string, sigs chan os.Signal) int

func init() {
	internal = map[string]func(args []string, sigs chan os.Signal) int{
		"reboot-helper": func(args []string, _ chan os.Signal) int { return rebootHelper(args) },
		"run-init":      runInit,
		"child-init":    childInit,
		"confine":       confine,
		brokerMode:      broker,
		"login":         loginMode,
	}
}

func run(args []string, sigs chan os.Signal) int {
	if len(args) > 1 {
		if f, ok := internal[args[1]]; ok {
			return f(args[2:], sigs)
		}
	}
	if os.Getpid() == 1 && bootMode(args) {
		boot(sigs) // never returns
	}
	if len(args) > 1 && args[1] == "up" {
		return up(args[2:], sigs)
	}
	if len(args) > 1 && args[1] == "run" {
		return runSandbox(args[2:])
	}
	if len(args) > 1 {
		if f, ok := standalone[args[1]]; ok {
			return f(args[2:])
		}
	}
	return cli(args[1:], os.Stdout, os.Stderr)
}

// rebootHelper calls reboot(2) in a process of its own: if the kernel
// cannot power off it ends the calling process, which must not be PID 1.
func rebootHelper(args []string) int {
	cmds := map[string]int{
		"poweroff": unix.LINUX_REBOOT_CMD_POWER_OFF,
		"reboot":   unix.LINUX_REBOOT_CMD_RESTART,
		"halt":     unix.LINUX_REBOOT_CMD_HALT,
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "nest reboot-helper: want poweroff, reboot or halt")
		return 2
	}
	cmd, ok := cmds[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "nest reboot-helper: unknown action %q\n", args[0])
		return 2
	}
	err := unix.Reboot(cmd)
	fmt.Fprintf(os.Stderr, "nest: reboot(%s): %v\n", args[0], err)
	return 1
}
