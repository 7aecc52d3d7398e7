package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
	"golang.org/x/term"

	"nest/escalate"
	"nest/supervise"
)

// Escalation verbs: nest escalate and nest passwd need no init; nest
// approve and nest deny talk to this init's control socket; the broker is
// an internal mode its init starts.

const brokerMode = supervise.BrokerMode

// standalone are the verbs besides up and run that need no running init.
var standalone = map[string]func(args []string) int{
	"escalate": escalateCmd,
	"passwd":   passwdCmd,
}

const escalateUsage = `usage: nest escalate [--key FILE]... [-- CMD [ARGS...]]

Runs CMD (or a login shell) in the parent container, as its config's
"escalate" policy for this container allows: on a new terminal of the
parent when stdin, stdout and stderr are all terminals, else on them as
they are. Exit status: CMD's; 1 when the parent refuses.
  --key FILE   a private key to sign with (method "key"), after the keys
               of $SSH_AUTH_SOCK; default ~/.ssh/id_ed25519, id_ecdsa, id_rsa
Environment: NEST_ESCALATE_SOCKET names another socket than
` + escalate.ParentSocket + `.
`

// escalateCmd is nest escalate.
func escalateCmd(args []string) int {
	fl := flag.NewFlagSet("nest escalate", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	var keys stringList
	fl.Var(&keys, "key", "")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Print(escalateUsage)
			return 0
		}
		fmt.Fprintf(os.Stderr, "nest escalate: %v\n%s", err, escalateUsage)
		return 2
	}
	argv := fl.Args()
	if len(argv) == 0 {
		argv = nil // a login shell
	}
	stdio, err := stdioFiles()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nest escalate: %v\n", err)
		return 1
	}
	c := &escalate.Client{
		Socket: os.Getenv("NEST_ESCALATE_SOCKET"),
		Argv:   argv,
		Stdin:  stdio[0], Stdout: stdio[1], Stderr: stdio[2],
		AgentSocket:    os.Getenv("SSH_AUTH_SOCK"),
		KeyFiles:       keys,
		Ask:            askSecret,
		Notify:         func(msg string) { fmt.Fprintf(os.Stderr, "nest escalate: %s\n", msg) },
		ForwardSignals: true,
		Env:            localeEnv(),
		Term:           os.Getenv("TERM"),
	}
	code, err := c.Run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nest escalate: %v\n", err)
		return 1
	}
	return code
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// stdioFiles are this process's stdin, stdout and stderr, /dev/null for
// any that is closed.
func stdioFiles() ([]*os.File, error) {
	out := []*os.File{os.Stdin, os.Stdout, os.Stderr}
	for fd := range 3 {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			continue
		}
		null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
		if err != nil {
			return nil, err
		}
		out[fd] = null
	}
	return out, nil
}

// localeEnv is what of this environment may cross: the locale and
// COLORTERM, with values the parent takes.
func localeEnv() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if k == "LANG" || k == "LANGUAGE" || k == "COLORTERM" || strings.HasPrefix(k, "LC_") {
			if v != "" && len(v) <= 64 && !strings.ContainsAny(v, "/ \t\n") {
				env[k] = v
			}
		}
	}
	return env
}

// askSecret asks on the controlling terminal, without echo.
func askSecret(prompt string) (string, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return "", errors.New("no terminal to ask on (/dev/tty)")
	}
	defer tty.Close()
	fmt.Fprint(tty, prompt)
	b, err := term.ReadPassword(int(tty.Fd()))
	fmt.Fprintln(tty)
	if err != nil {
		return "", fmt.Errorf("reading from the terminal: %w", err)
	}
	return string(b), nil
}

// passwdCmd is nest passwd: it asks for a password (twice on a terminal,
// one line of stdin otherwise) and prints its argon2id hash for a
// container's password_hash.
func passwdCmd(args []string) int {
	if len(args) > 0 {
		fmt.Fprintln(os.Stderr, "usage: nest passwd   (prints a password_hash for the config)")
		if args[0] == "-h" || args[0] == "--help" {
			return 0
		}
		return 2
	}
	var pw string
	if term.IsTerminal(int(os.Stdin.Fd())) {
		first, err := askSecret("Password: ")
		if err != nil {
			fmt.Fprintf(os.Stderr, "nest passwd: %v\n", err)
			return 1
		}
		again, err := askSecret("Again: ")
		if err != nil {
			fmt.Fprintf(os.Stderr, "nest passwd: %v\n", err)
			return 1
		}
		if first != again {
			fmt.Fprintln(os.Stderr, "nest passwd: the two differ; nothing printed")
			return 1
		}
		pw = first
	} else {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			fmt.Fprintf(os.Stderr, "nest passwd: %v\n", err)
			return 1
		}
		pw = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	}
	if pw == "" {
		fmt.Fprintln(os.Stderr, "nest passwd: an empty password; nothing printed")
		return 1
	}
	h, err := escalate.HashPassword(pw)
	if err != nil {
		fmt.Fprintf(os.Stderr, "nest passwd: %v\n", err)
		return 1
	}
	fmt.Println(h)
	return 0
}

// broker is the internal escalate-broker mode.
func broker(args []string, _ chan os.Signal) int { return supervise.RunBroker(args) }

// approveCmd is nest approve [ID] and nest deny ID.
func approveCmd(ctx context.Context, client *supervise.Client, verb string, args []string, asJSON bool, stdout, stderr io.Writer) int {
	if len(args) == 0 && verb == "approve" {
		list, err := client.Escalations(ctx)
		if err != nil {
			fmt.Fprintf(stderr, "nest %s: %v\n", verb, err)
			return 1
		}
		if asJSON {
			return printJSON(stdout, list)
		}
		if len(list) == 0 {
			fmt.Fprintln(stdout, "no escalation waits for approval")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCONTAINER\tPID\tUID\tAS\tWAITING\tCOMMAND")
		for _, p := range list {
			cmd := "(login shell)"
			if p.Command != nil {
				cmd = escalate.CommandString(p.Command)
			}
			fmt.Fprintf(tw, "%d\t%s\t%d\t%d\t%s\t%s\t%s\n", p.ID, printable(p.Child), p.Pid, p.UID,
				printable(p.As), uptime(time.Since(p.Since)), printable(cmd))
		}
		tw.Flush()
		return 0
	}
	if len(args) != 1 {
		fmt.Fprintf(stderr, "nest %s: want one request id (nest approve lists them)\n", verb)
		return 2
	}
	id, err := strconv.ParseUint(args[0], 10, 64)
	if err != nil {
		fmt.Fprintf(stderr, "nest %s: %q is not a request id (nest approve lists them)\n", verb, args[0])
		return 2
	}
	if err := client.DecideEscalation(ctx, id, verb == "approve"); err != nil {
		fmt.Fprintf(stderr, "nest %s: %v\n", verb, err)
		return 1
	}
	return 0
}
