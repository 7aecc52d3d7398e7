package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"golang.org/x/sys/unix"

	"nest/supervise"
)

const usage = `usage: nest [--socket PATH] [--json] VERB [ARGS]

Verbs that need no running init:
  up [-c FILE] [-- CMD ARGS]   run the services of FILE here (or CMD as an entrypoint)
  escalate [-- CMD ARGS]       run CMD (or a shell) in the parent container, as its policy allows
  passwd                       print a password_hash for the config
  --version                    print the version

Verbs that talk to the nearest init's control socket:
  ls [--tree]                  every unit (--tree: and every unit inside each container)
  status [NAME]                every unit, or one in detail
  start NAME | stop NAME | restart NAME
  logs [-f] NAME               a unit's output (-f: follow)
  reload                       re-read the config (as SIGHUP does)
  poweroff | reboot            stop everything in order, then power off or reboot
  create NAME --kind user|daemon [--rootfs DIR|host] [--bind SRC[:DST[:rw]]]...
         [--network none|host|veth] [--memory SIZE] [--pids N] [--no-start] [-- CMD ARGS]
                               a container in containers.d (a daemon runs CMD)
  rm NAME [--force] [--purge]  remove a container of containers.d (--purge: its home too)
  reset NAME [--force]         drop a user container's changes, keep its home
  shell NAME [-- CMD ARGS]     a login shell (or CMD) on a new terminal in a container
  approve [ID] | deny ID       answer a child's escalation that waits (approve alone lists them)

NAME is a unit of this init, or a path to one inside a container: alice/dev
is unit dev of container alice (logs, create, rm and reset only of this
init's own units).
The socket is /run/nest/nest.sock unless --socket or NEST_SOCKET say otherwise.
Exit status: 0 done, 1 failed, 2 usage.
`

// socketPath picks the control socket: the flag, then NEST_SOCKET, then
// the default.
func socketPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("NEST_SOCKET"); env != "" {
		return env
	}
	return controlSocket
}

// cliArgs are the global flags and the verb with its arguments.
type cliArgs struct {
	socket string
	json   bool
	follow bool
	tree   bool
	verb   string
	args   []string
}

// ownFlags are the verbs that parse their own flags: what follows the
// verb goes to them as it is, but for --json and --socket, and
// everything from -- on.
var ownFlags = map[string]bool{"create": true, "rm": true, "reset": true, "shell": true}

func parseCLI(args []string) (cliArgs, error) {
	var c cliArgs
	for i := 0; i < len(args); i++ {
		a := args[i]
		if ownFlags[c.verb] && a == "--" {
			c.args = append(c.args, args[i:]...)
			break
		}
		switch {
		case a == "--json":
			c.json = true
		case a == "-f" || a == "--follow":
			c.follow = true
		case a == "--tree":
			c.tree = true
		case a == "--socket":
			if i+1 >= len(args) {
				return c, fmt.Errorf("--socket needs a path")
			}
			i++
			c.socket = args[i]
		case strings.HasPrefix(a, "--socket="):
			c.socket = strings.TrimPrefix(a, "--socket=")
		case a == "--version" || a == "-h" || a == "--help" || a == "help":
			if c.verb == "" {
				c.verb = a
			} else {
				c.args = append(c.args, a)
			}
		case ownFlags[c.verb]:
			c.args = append(c.args, a)
		case strings.HasPrefix(a, "-") && a != "-":
			return c, fmt.Errorf("unknown flag %s", a)
		case c.verb == "":
			c.verb = a
		default:
			c.args = append(c.args, a)
		}
	}
	c.socket = socketPath(c.socket)
	return c, nil
}

// cli runs a CLI verb and returns the exit status.
func cli(args []string, stdout, stderr io.Writer) int {
	c, err := parseCLI(args)
	if err != nil {
		fmt.Fprintf(stderr, "nest: %v\n%s", err, usage)
		return 2
	}
	need := func(n int, what string) bool {
		if len(c.args) != n {
			fmt.Fprintf(stderr, "nest %s: want %s\n", c.verb, what)
			return false
		}
		return true
	}
	ctx, cancel := signal.NotifyContext(context.Background(), unix.SIGINT, unix.SIGTERM)
	defer cancel()
	client := supervise.NewClient(c.socket)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "nest %s: %v\n", c.verb, err)
		return 1
	}

	if c.tree && c.verb != "ls" {
		fmt.Fprintf(stderr, "nest %s: --tree is a flag of ls\n", c.verb)
		return 2
	}

	switch c.verb {
	case "--version":
		fmt.Fprintf(stdout, "nest %s\n", version)
		return 0
	case "", "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		if c.verb == "" {
			return 2
		}
		return 0
	case "status":
		if len(c.args) > 1 {
			need(1, "at most one unit name")
			return 2
		}
		if len(c.args) == 1 {
			st, err := client.Unit(ctx, c.args[0])
			if err != nil {
				return fail(err)
			}
			if c.json {
				return printJSON(stdout, st)
			}
			printDetail(stdout, st)
			return 0
		}
		list, err := client.Units(ctx)
		if err != nil {
			return fail(err)
		}
		if c.json {
			return printJSON(stdout, list)
		}
		printTable(stdout, list)
		return 0
	case "ls":
		if !need(0, "no arguments (nest status NAME shows one unit)") {
			return 2
		}
		var list []supervise.Status
		if c.tree {
			list, err = client.Tree(ctx)
		} else {
			list, err = client.Units(ctx)
		}
		if err != nil {
			return fail(err)
		}
		if c.json {
			return printJSON(stdout, list)
		}
		printList(stdout, list, time.Now())
		return 0
	case "start", "stop", "restart":
		if !need(1, "one unit name") {
			return 2
		}
		st, err := client.Act(ctx, c.verb, c.args[0])
		if err != nil {
			return fail(err)
		}
		if c.json {
			printJSON(stdout, st)
		} else {
			fmt.Fprintf(stdout, "%s: %s\n", st.Name, summary(st))
		}
		if st.State == supervise.StateFailed {
			return 1
		}
		return 0
	case "logs":
		if !need(1, "one unit name") {
			return 2
		}
		if err := client.Logs(ctx, c.args[0], c.follow, stdout); err != nil {
			return fail(err)
		}
		return 0
	case "reload":
		if !need(0, "no arguments") {
			return 2
		}
		if err := client.Reload(ctx); err != nil {
			return fail(err)
		}
		return 0
	case "approve", "deny":
		return approveCmd(ctx, client, c.verb, c.args, c.json, stdout, stderr)
	case "poweroff", "reboot":
		if !need(0, "no arguments") {
			return 2
		}
		if err := client.Power(ctx, c.verb); err != nil {
			return fail(err)
		}
		return 0
	case "create", "rm", "reset":
		return containerVerb(ctx, client, c, stdout, stderr)
	case "shell":
		return shellVerb(ctx, client, c, stderr)
	default:
		fmt.Fprintf(stderr, "nest: unknown verb %q\n%s", c.verb, usage)
		return 2
	}
}

func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return 1
	}
	return 0
}

// summary is one unit's state in a few words: "running (pid 42)",
// "failed: exit status 1".
func summary(st supervise.Status) string {
	s := string(st.State)
	if st.Pid != 0 {
		s += fmt.Sprintf(" (pid %d)", st.Pid)
	}
	if st.Reason != "" {
		s += ": " + st.Reason
	}
	return s
}

func printTable(w io.Writer, list []supervise.Status) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tPID\tUPTIME\tRESTARTS\tINFO")
	for _, st := range list {
		pid := "-"
		if st.Pid != 0 {
			pid = fmt.Sprint(st.Pid)
		}
		info := st.Reason
		if st.Status != "" {
			info = strings.TrimSpace(info + " " + st.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", st.Name, st.Kind, st.State, pid,
			age(st.Since), st.Restarts, info)
	}
	tw.Flush()
}

func printDetail(w io.Writer, st supervise.Status) {
	fmt.Fprintf(w, "%s: %s, since %s (%s ago)\n", st.Name, summary(st), st.Since.Format(time.DateTime), age(st.Since))
	fmt.Fprintf(w, "  exec:     %s\n", strings.Join(st.Exec, " "))
	if st.Memory != 0 {
		fmt.Fprintf(w, "  memory:   %s\n", formatBytes(st.Memory))
	}
	if st.IDs != "" {
		fmt.Fprintf(w, "  ids:      %s (its root is the first)\n", st.IDs)
	}
	if st.Address != "" {
		fmt.Fprintf(w, "  address:  %s\n", printable(st.Address))
	}
	fmt.Fprintf(w, "  restart:  %s (%d restarts)\n", st.Restart, st.Restarts)
	if len(st.After) > 0 {
		fmt.Fprintf(w, "  after:    %s\n", strings.Join(st.After, ", "))
	}
	if st.LastExit != "" {
		fmt.Fprintf(w, "  last exit: %s\n", st.LastExit)
	}
	if st.Status != "" {
		fmt.Fprintf(w, "  status:   %s\n", st.Status)
	}
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	default:
		return d.Round(time.Hour).String()
	}
}

// printList is the table of nest ls: one row per unit, and with a tree the
// units inside each container below it, indented and named by their path
// ("alice/dev"). Where a container's listing is incomplete a row says why.
func printList(w io.Writer, list []supervise.Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tKIND\tSTATE\tPID\tMEMORY\tUPTIME\tADDRESS")
	var rows func(list []supervise.Status, prefix, indent string)
	rows = func(list []supervise.Status, prefix, indent string) {
		for _, st := range list {
			path := prefix + st.Name
			pid, mem, up, addr := "-", "-", "-", "-"
			if st.Address != "" {
				addr = printable(st.Address)
			}
			if st.Pid != 0 {
				pid = fmt.Sprint(st.Pid)
			}
			if st.Memory != 0 {
				mem = formatBytes(st.Memory)
			}
			switch st.State {
			case supervise.StateRunning, supervise.StateStarting, supervise.StateStopping:
				up = uptime(now.Sub(st.Since))
			}
			fmt.Fprintf(tw, "%s%s\t%s\t%s\t%s\t%s\t%s\t%s\n", indent, printable(path), printable(st.Kind),
				printable(string(st.State)), pid, mem, up, addr)
			rows(st.Children, path+"/", indent+"  ")
			if st.Incomplete != "" {
				fmt.Fprintf(tw, "%s  %s/…\t-\tincomplete: %s\t-\t-\t-\t-\n", indent, printable(path), printable(st.Incomplete))
			}
		}
	}
	rows(list, "", "")
	tw.Flush()
}

// formatBytes writes a size with binary units as the config takes them:
// 512B, 4.0K, 12M, 1.5G.
func formatBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v := float64(n)
	unit := ""
	for _, u := range []string{"K", "M", "G", "T", "P", "E"} {
		v /= 1024
		unit = u
		if v < 1024 {
			break
		}
	}
	if v < 10 {
		return fmt.Sprintf("%.1f%s", v, unit)
	}
	return fmt.Sprintf("%.0f%s", v, unit)
}

// uptime is a duration in its two largest units: 42s, 5m12s, 3h4m, 2d7h.
func uptime(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	s := int64(d / time.Second)
	switch {
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm%ds", s/60, s%60)
	case s < 86400:
		return fmt.Sprintf("%dh%dm", s/3600, s/60%60)
	default:
		return fmt.Sprintf("%dd%dh", s/86400, s/3600%24)
	}
}

// printable replaces what a terminal would take as a command.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return '?'
	}, s)
}
