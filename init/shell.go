package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"nest/supervise"
)

// The CLI side of `nest shell NAME [-- CMD ARGS]`: the container's own init
// starts the command on a new terminal of the container and sends its
// master here (supervise/shell.go); this end puts the caller's terminal
// in raw mode, copies both ways, passes window size changes on, and exits
// with the command's status. Ctrl-C, Ctrl-Z and the rest are bytes to the
// container's terminal, whose line discipline turns them into signals of
// the command's foreground process group, as on any terminal.

// drainTime is how long output may still come once the command has
// ended (something it left running in the background may hold the
// terminal open).
const drainTime = time.Second

// shellVerb runs `nest shell`.
func shellVerb(ctx context.Context, client *supervise.Client, c cliArgs, stderr io.Writer) int {
	args, cmd := c.args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		args, cmd = args[:i], args[i+1:]
	}
	if len(args) != 1 || strings.HasPrefix(args[0], "-") || (cmd != nil && len(cmd) == 0) {
		fmt.Fprintln(stderr, "usage: nest shell NAME [-- CMD ARGS]")
		return 2
	}
	interactive := term.IsTerminal(0)
	req := supervise.ShellRequest{Argv: cmd}
	if t := os.Getenv("TERM"); supervise.ValidTerm(t) {
		req.Term = t
	}
	if interactive {
		if cols, rows, err := term.GetSize(0); err == nil && rows > 0 && cols > 0 && rows < 1<<16 && cols < 1<<16 {
			req.Rows, req.Cols = uint16(rows), uint16(cols)
		}
	}
	sess, err := client.Shell(ctx, args[0], req)
	if err != nil {
		fmt.Fprintf(stderr, "nest shell: %v\n", err)
		return 1
	}
	defer sess.Close()
	code, err := runSession(ctx, sess, interactive)
	if err != nil {
		fmt.Fprintf(stderr, "nest shell: %v\n", err)
	}
	return code
}

// runSession copies between this process's stdio and the session's
// terminal until the command's status comes, and returns it.
func runSession(ctx context.Context, sess *supervise.ShellSession, interactive bool) (int, error) {
	master := sess.Master
	if interactive {
		old, err := term.MakeRaw(0)
		if err != nil {
			return 1, fmt.Errorf("raw mode: %w", err)
		}
		defer term.Restore(0, old)
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, unix.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if ws, err := unix.IoctlGetWinsize(0, unix.TIOCGWINSZ); err == nil {
					unix.IoctlSetWinsize(int(master.Fd()), unix.TIOCSWINSZ, ws)
				}
			}
		}()
	}
	go func() {
		in := &lastByte{w: master}
		_, err := io.Copy(in, os.Stdin)
		if err == nil && !interactive {
			// The end of a piped input is the terminal's end of file: a
			// Ctrl-D (VEOF) at the start of a line.
			if in.last != '\n' && in.last != 0 {
				master.Write([]byte("\n"))
			}
			master.Write([]byte{4})
		}
	}()
	outDone := make(chan struct{})
	go func() {
		io.Copy(os.Stdout, master) // until the terminal hangs up: EIO
		close(outDone)
	}()

	type result struct {
		exit supervise.ShellExit
		err  error
	}
	waited := make(chan result, 1)
	go func() {
		e, err := sess.Wait()
		waited <- result{e, err}
	}()
	var r result
	select {
	case r = <-waited:
	case <-ctx.Done():
		return 1, errors.New("interrupted: the session's terminal hangs up")
	}
	select {
	case <-outDone:
	case <-time.After(drainTime):
		master.SetReadDeadline(time.Now())
		<-outDone
	}
	if r.err != nil {
		return 1, r.err
	}
	return r.exit.Code, nil
}

// lastByte remembers the last byte written through it.
type lastByte struct {
	w    io.Writer
	last byte
}

func (l *lastByte) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if n > 0 {
		l.last = p[n-1]
	}
	return n, err
}
