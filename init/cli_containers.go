package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"nest/supervise"
)

// The CLI of the verbs that make and unmake containers: create, rm,
// reset. The init does the work (init/create.go); the CLI parses its flags
// and says what happened.

// bindStrings collects --bind SRC[:DST[:rw]], checked as nest run checks
// them, as written.
type bindStrings []string

func (b *bindStrings) String() string { return strings.Join(*b, " ") }

func (b *bindStrings) Set(v string) error {
	var check bindFlags
	if err := check.Set(v); err != nil {
		return err
	}
	*b = append(*b, v)
	return nil
}

// splitName takes NAME, the one argument that is not a flag, from before or
// after the flags: `create web --kind user` or `create --kind user web`.
func splitName(fl *flag.FlagSet, args []string) (string, error) {
	name := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		name, args = args[0], args[1:]
	}
	if err := fl.Parse(args); err != nil {
		return "", err
	}
	rest := fl.Args()
	if name == "" && len(rest) > 0 {
		name, rest = rest[0], rest[1:]
	}
	switch {
	case name == "":
		return "", errors.New("want a container name")
	case len(rest) > 0:
		return "", fmt.Errorf("unexpected %q", rest[0])
	}
	return name, nil
}

// parseCreate reads `create NAME --kind … [-- CMD ARGS]`.
func parseCreate(args []string) (string, supervise.CreateRequest, error) {
	var req supervise.CreateRequest
	if i := slices.Index(args, "--"); i >= 0 {
		args, req.Exec = args[:i], args[i+1:]
		if len(req.Exec) == 0 {
			return "", req, errors.New("-- wants a command after it")
		}
	}
	fl := flag.NewFlagSet("nest create", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.StringVar(&req.Kind, "kind", "", "")
	fl.StringVar(&req.Rootfs, "rootfs", "", "")
	fl.StringVar(&req.Network, "network", "", "")
	fl.StringVar(&req.Memory, "memory", "", "")
	fl.StringVar(&req.Pids, "pids", "", "")
	noStart := fl.Bool("no-start", false, "")
	var binds bindStrings
	fl.Var(&binds, "bind", "")
	name, err := splitName(fl, args)
	if err != nil {
		return "", req, err
	}
	req.Binds, req.Start = binds, !*noStart
	switch {
	case req.Kind != "user" && req.Kind != "daemon":
		return "", req, fmt.Errorf("--kind %q: want user or daemon", req.Kind)
	case req.Network != "" && req.Network != "none" && req.Network != "host":
		return "", req, fmt.Errorf("--network %q: want none or host", req.Network)
	case req.Kind == "daemon" && len(req.Exec) == 0:
		return "", req, errors.New("a daemon container runs a command: add -- CMD ARGS")
	case req.Kind == "user" && len(req.Exec) > 0:
		return "", req, errors.New("a user container runs no command (give it services in its file); leave out -- CMD")
	}
	if req.Pids != "" {
		if _, err := strconv.ParseUint(req.Pids, 10, 32); err != nil {
			return "", req, fmt.Errorf("--pids %q: want a whole number (0: no limit)", req.Pids)
		}
	}
	return name, req, nil
}

// containerVerb runs create, rm or reset.
func containerVerb(ctx context.Context, client *supervise.Client, c cliArgs, stdout, stderr io.Writer) int {
	usage := map[string]string{
		"create": "nest create NAME --kind user|daemon [--rootfs DIR|host] [--bind SRC[:DST[:rw]]]... [--network none|host|veth] [--memory SIZE] [--pids N] [--no-start] [-- CMD ARGS]",
		"rm":     "nest rm NAME [--force] [--purge]",
		"reset":  "nest reset NAME [--force]",
	}
	bad := func(err error) int {
		fmt.Fprintf(stderr, "nest %s: %v\nusage: %s\n", c.verb, err, usage[c.verb])
		return 2
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "nest %s: %v\n", c.verb, err)
		return 1
	}
	report := func(st supervise.Status, what string) int {
		if c.json {
			return printJSON(stdout, st)
		}
		fmt.Fprintf(stdout, "%s: %s, %s\n", st.Name, what, summary(st))
		if st.State == supervise.StateFailed {
			return 1
		}
		return 0
	}
	switch c.verb {
	case "create":
		name, req, err := parseCreate(c.args)
		if err != nil {
			return bad(err)
		}
		st, err := client.Create(ctx, name, req)
		if err != nil {
			return fail(err)
		}
		return report(st, "created")
	case "rm":
		fl := flag.NewFlagSet("nest rm", flag.ContinueOnError)
		fl.SetOutput(io.Discard)
		force := fl.Bool("force", false, "")
		purge := fl.Bool("purge", false, "")
		name, err := splitName(fl, c.args)
		if err != nil {
			return bad(err)
		}
		if err := client.Remove(ctx, name, *force, *purge); err != nil {
			return fail(err)
		}
		if c.json {
			return printJSON(stdout, map[string]string{"name": name, "state": "removed"})
		}
		fmt.Fprintf(stdout, "%s: removed\n", name)
		return 0
	default:
		fl := flag.NewFlagSet("nest reset", flag.ContinueOnError)
		fl.SetOutput(io.Discard)
		force := fl.Bool("force", false, "")
		name, err := splitName(fl, c.args)
		if err != nil {
			return bad(err)
		}
		st, err := client.Reset(ctx, name, *force)
		if err != nil {
			return fail(err)
		}
		return report(st, "reset")
	}
}
