package config

import (
	"errors"
	"maps"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// DefaultPath is where an init looks for its config unless told otherwise.
const DefaultPath = "/etc/nest/nest.toml"

// BuiltIn is the Source of the config returned by Default.
const BuiltIn = "built-in"

// What runs on /dev/console (Config.Console).
const (
	ConsoleShell = "shell" // a root shell
	ConsoleLogin = "login" // a login prompt into the user containers
	ConsoleNone  = "none"  // nothing
)

// ConsoleUnit is the name of the unit that runs the console shell; no
// service may take it while console = "shell".
const ConsoleUnit = "console"

// Restart says what the supervisor does when a service exits on its own.
type Restart string

const (
	RestartAlways    Restart = "always"     // restart after any exit
	RestartOnFailure Restart = "on-failure" // restart after a non-zero exit or a signal
	RestartNo        Restart = "no"         // never restart
)

// Limits and defaults of Service.StopTimeout.
const (
	DefaultStopTimeout = 10 * time.Second
	MaxStopTimeout     = time.Hour
)

// Limits and defaults of Service.StartLimit.
const (
	DefaultStartLimit = 10
	MaxStartLimit     = 1000
)

// Config is the validated spec of the container an init runs.
type Config struct {
	Source   string // file path it came from, or BuiltIn
	Hostname string // "" keeps the current hostname
	Modules  []string
	Console  string // ConsoleShell, ConsoleLogin or ConsoleNone
	// Subnet is the pool of container addresses this init owns (the
	// root's, or nest up's): its bridge takes the first /24, each child
	// init that has veth children of its own another. The zero Prefix
	// means DefaultSubnet.
	Subnet   netip.Prefix
	Mounts   []Mount
	Services []Service
	// Containers are the child containers: [container.NAME] tables, and
	// the files LoadDir adds.
	Containers []Container

	ix *index // positions in Source; nil when unknown
}

// Mount is a filesystem mounted at boot. Mounts are mounted in order and
// unmounted in reverse order at shutdown.
type Mount struct {
	Source  string
	Target  string   // absolute, clean
	Type    string   // filesystem type, as mount(2) takes it
	Options []string // one option per element: flags ("ro", "nosuid") or fs data ("data=ordered")
}

// Service is a process of this container, kept running by the supervisor.
type Service struct {
	Name        string            // [a-z0-9][a-z0-9-]{0,31}, unique among services
	Exec        []string          // argv; Exec[0] is an absolute path
	Env         map[string]string // added to the environment
	Dir         string            // working directory, absolute; "" keeps the init's
	Restart     Restart
	After       []string // names of services started (and ready) before this one
	Notify      bool     // ready when it sends READY=1 on $NOTIFY_SOCKET
	StopTimeout time.Duration
	// StartLimit is how many consecutive failed runs (each shorter than
	// the supervisor's healthy run) mark the service failed instead of
	// restarting it again.
	StartLimit int
}

// Load reads and parses the config file at path. A missing file returns an
// error for which errors.Is(err, fs.ErrNotExist) is true.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// Parse parses and validates a config document. name is the Source of the
// result and the FILE of every error. The error is an *Error, or an
// errors.Join of up to maxErrors of them (sorted by position, each with its
// own position).
func Parse(name string, data []byte) (*Config, error) {
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		return nil, tomlError(name, err)
	}
	ix := newIndex(data)
	d := &decoder{problems: problems{file: name, ix: ix}}
	c := d.config(tree)
	if len(d.list) > 0 {
		return nil, d.err()
	}
	v := &problems{file: name, ix: ix}
	c.validate(v)
	if len(v.list) > 0 {
		return nil, v.err()
	}
	return c, nil
}

// Default returns the built-in config, used when no config file exists.
//
// It is also the demo that `make demo` boots: a shell on the console, two
// daemon containers — "hello", that shows what a child container is
// (`nest ls --tree`, `nest logs hello`), and "web", a web server on its
// own address on the bridge, published on port 8080 of the root
// (`wget -qO- 127.0.0.1:8080`) — and a user container, "alice", whose root
// is an overlay over the machine's (it needs a root file system that
// allows idmapped mounts: not an initramfs on Linux 6.1).
func Default() *Config {
	sandbox, _ := DefaultSandbox(KindDaemon, SandboxLevel)
	userSandbox, _ := DefaultSandbox(KindUser, SandboxLevel)
	daemon := func(name, script string) Container {
		return Container{
			Name:        name,
			Kind:        KindDaemon,
			Hostname:    name,
			Exec:        []string{"/bin/sh", "-c", script},
			Rootfs:      RootfsHost,
			Network:     NetworkNone,
			Memory:      64 << 20,
			Pids:        64,
			Restart:     RestartOnFailure,
			StopTimeout: DefaultStopTimeout,
			StartLimit:  DefaultStartLimit,
			Sandbox:     sandbox,
			File:        BuiltIn,
		}
	}
	web := daemon("web", `mkdir -p /tmp/www && `+
		`echo "hello from $(hostname), a daemon container at $(ip -4 -o addr show eth0 | sed 's/.* inet \([^ ]*\) .*/\1/')" > /tmp/www/index.html && `+
		`if command -v httpd >/dev/null; then exec httpd -f -p 80 -h /tmp/www; fi; exec busybox httpd -f -p 80 -h /tmp/www`)
	web.Network, web.NAT = NetworkVeth, true
	web.Publish = []Publish{{Host: 8080, Container: 80, Proto: "tcp"}}
	alice := Container{
		Name:        "alice",
		Kind:        KindUser,
		Hostname:    "alice",
		User:        "alice",
		Rootfs:      RootfsHost,
		Network:     NetworkNone,
		Memory:      256 << 20,
		Pids:        512,
		Restart:     RestartOnFailure,
		StopTimeout: DefaultStopTimeout,
		StartLimit:  DefaultStartLimit,
		Sandbox:     userSandbox,
		File:        BuiltIn,
	}
	return &Config{
		Source:   BuiltIn,
		Hostname: "nest",
		Console:  ConsoleShell,
		Containers: []Container{
			daemon("hello", "echo hello from a daemon container: $(hostname), uid $(id -u), pid $$, read-only /; "+
				"while :; do sleep 3600; done"),
			web,
			alice,
		},
	}
}

// Validate checks every rule that Parse checks on values. Errors have no
// line and column (Parse adds them), except those of containers parsed
// from a file, which are placed in their File.
func (c *Config) Validate() error {
	v := &problems{file: c.Source}
	c.validate(v)
	return v.err()
}

// Service returns the service with the given name.
func (c *Config) Service(name string) (*Service, bool) {
	for i := range c.Services {
		if c.Services[i].Name == name {
			return &c.Services[i], true
		}
	}
	return nil, false
}

// Equal reports whether s and o describe the same service. nil and empty
// slices and maps are equal; the order of Exec and After matters.
func (s Service) Equal(o Service) bool {
	return s.Name == o.Name &&
		slices.Equal(s.Exec, o.Exec) &&
		maps.Equal(s.Env, o.Env) &&
		s.Dir == o.Dir &&
		s.Restart == o.Restart &&
		slices.Equal(s.After, o.After) &&
		s.Notify == o.Notify &&
		s.StopTimeout == o.StopTimeout &&
		s.StartLimit == o.StartLimit
}

// tomlError turns an error of the TOML decoder into an *Error.
func tomlError(file string, err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		msg := de.Error()
		if len(msg) > 6 && msg[:6] == "toml: " {
			msg = msg[6:]
		}
		return &Error{File: file, Line: line, Col: col, Msg: msg}
	}
	return &Error{File: file, Msg: err.Error()}
}
