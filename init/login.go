package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/term"

	"nest/config"
	"nest/escalate"
	"nest/supervise"
)

// The console's login prompt (console = "login"): the root init runs it
// on /dev/console as the console unit. It asks for a user name and a
// password, checks them against the user container of that user (its
// password_hash, in the root's config, checked here in the root: the
// container never sees the hash or the password), and becomes
// `nest shell NAME`: a login shell inside the user's own container, on a
// terminal of that container, while this prompt's terminal — the
// machine's console — stays the root's. When the shell ends, the unit
// starts the prompt again.

// loginUnit is the console unit of console = "login": the prompt on
// /dev/console, started again whenever it ends (a shell that exits).
func loginUnit(cfgPath string) supervise.Spec {
	if cfgPath == config.BuiltIn {
		cfgPath = config.DefaultPath // missing: the built-in config again
	}
	return supervise.Spec{
		Service: config.Service{
			Name:        config.ConsoleUnit,
			Exec:        []string{"/proc/self/exe", "login", "-c", cfgPath},
			Restart:     config.RestartAlways,
			StopTimeout: 3 * time.Second,
			StartLimit:  config.MaxStartLimit,
		},
		TTY: "/dev/console",
	}
}

// loginMode is the internal mode "login": nest login -c CONFIG.
func loginMode(args []string, _ chan os.Signal) int {
	fl := flag.NewFlagSet("nest login", flag.ContinueOnError)
	cfgPath := fl.String("c", config.DefaultPath, "config `file` with the user containers")
	if err := fl.Parse(args); err != nil || fl.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: nest login [-c FILE] (the console's login prompt, started by the root init)")
		return 2
	}
	host, _ := os.Hostname()
	in := bufio.NewReader(os.Stdin)
	failures := 0
	for {
		name, ok, eof := loginPrompt(in, host, *cfgPath)
		if eof {
			return 0 // the unit starts the prompt again
		}
		if ok {
			env := []string{"PATH=" + supervise.DefaultPath, "TERM=" + termOr(os.Getenv("TERM"), "linux")}
			if s := os.Getenv("NEST_SOCKET"); s != "" {
				env = append(env, "NEST_SOCKET="+s) // an init other than the machine's (tests)
			}
			err := syscall.Exec("/proc/self/exe", []string{"nest", "shell", name}, env)
			fmt.Fprintf(os.Stdout, "nest login: %v\n", err)
			return 1
		}
		// As login(1) does: a growing pause, the same words for a wrong
		// name and a wrong password.
		failures++
		time.Sleep(min(time.Duration(failures)*2*time.Second, 30*time.Second))
		fmt.Fprint(os.Stdout, "\nLogin incorrect\n")
	}
}

// loginPrompt asks for one login: ok with the name of the container to
// enter; eof at the end of the input.
func loginPrompt(in *bufio.Reader, host, cfgPath string) (name string, ok, eof bool) {
	fmt.Fprintf(os.Stdout, "\n%s login: ", host)
	line, err := in.ReadString('\n')
	user := strings.TrimSpace(line)
	if err != nil && user == "" {
		return "", false, true
	}
	if user == "" {
		return "", false, false
	}
	fmt.Fprint(os.Stdout, "Password: ")
	pw, err := readSecret(os.Stdin, in)
	fmt.Fprintln(os.Stdout)
	if err != nil {
		return "", false, false
	}
	cfg, err := loadConfig(cfgPath, true)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(os.Stdout, "nest login: %v\n", err)
		}
		return "", false, false
	}
	for _, c := range cfg.Containers {
		if c.Kind != config.KindUser || userName(c) != user || c.PasswordHash == "" {
			continue
		}
		good, err := escalate.VerifyPassword(c.PasswordHash, pw)
		return c.Name, err == nil && good, false
	}
	// No such user: the same time a check takes, so that names do not
	// show.
	escalate.VerifyPassword("$argon2id$v=19$m=19456,t=2,p=1$bm90aGluZ2hlcmU$bm9ib2R5bm9ib2R5bm9ib2R5bm9ib2R5", pw)
	return "", false, false
}

// readSecret reads a line without echo where stdin is a terminal.
func readSecret(f *os.File, in *bufio.Reader) (string, error) {
	if term.IsTerminal(int(f.Fd())) && in.Buffered() == 0 {
		b, err := term.ReadPassword(int(f.Fd()))
		return string(b), err
	}
	line, err := in.ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}

func termOr(t, def string) string {
	if supervise.ValidTerm(t) {
		return t
	}
	return def
}
