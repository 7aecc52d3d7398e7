package config

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// DirPath is the directory of child containers, one file each (see
// LoadDir), of an init with the default config file: DirFor(DefaultPath).
const DirPath = "/etc/nest/containers.d"

// Kind is what a child container is for.
type Kind string

const (
	KindUser   Kind = "user"   // one person's machine: services, packages, children
	KindDaemon Kind = "daemon" // one service (Container.Exec)
)

// RootfsHost is Container.Rootfs for a container that sees its parent's
// root filesystem.
const RootfsHost = "host"

// Container.Network values.
const (
	NetworkNone = "none" // a network namespace with only lo
	NetworkHost = "host" // the parent's network namespace
	NetworkVeth = "veth" // its own namespace with eth0 on the parent's bridge
)

// Limits of the container keys.
const (
	MinCPU  = 0.01    // Container.CPU, when not 0
	MaxCPU  = 1024    // Container.CPU
	MaxPids = 4194304 // Container.Pids: the kernel's PID_MAX_LIMIT
)

// SandboxLevel is the newest sandbox level: the one `nest create` writes.
const SandboxLevel = 1

// sandboxLevels are the known levels, oldest first.
var sandboxLevels = []int{1}

// Container is a child container of an init, from a [container.NAME] table
// or a containers.d file.
type Container struct {
	Name       string
	Kind       Kind     // KindUser or KindDaemon; required
	Rootfs     string   // RootfsHost (the default) or an absolute directory
	Binds      []Bind   // mounted in order
	Memory     int64    // bytes: memory.max; 0 = no limit
	MemoryHigh int64    // bytes: memory.high; 0 = no limit
	Pids       int64    // pids.max; 0 = no limit
	CPU        float64  // number of CPUs (cpu.max), MinCPU to MaxCPU; 0 = no limit
	Restart    Restart  // default RestartOnFailure
	After      []string // services or containers of the same init started (and ready) before it
	Hostname   string   // default: Name
	Network    string   // NetworkNone (the default), NetworkHost or NetworkVeth
	// Address, NAT, Publish and DNS are a veth container's: its pinned
	// address (the zero Addr: leased), whether it is masqueraded beyond
	// the parent (default true), its published ports, and its nameservers
	// (nil: the parent's).
	Address netip.Addr
	NAT     bool
	Publish []Publish
	DNS     []netip.Addr
	// Exec, Env and Dir are a daemon container's one service (Exec is
	// required for a daemon); a user container has none.
	Exec        []string
	Env         map[string]string
	Dir         string
	User        string // user kind: the user's name, default Name; "" for a daemon
	StopTimeout time.Duration
	StartLimit  int
	Sandbox     Sandbox
	// Escalate is how the container may escalate into this init;
	// PasswordHash is its password (escalate = "password"). Neither
	// reaches the container (ForChild); neither is part of Equal: a new
	// policy applies without a restart.
	Escalate     Escalate
	PasswordHash string
	Services     []Service   // [[container.NAME.service]]: services inside it
	Containers   []Container // [container.NAME.container.CHILD]: its own children
	// File is the file the container was defined in (nest.toml or a
	// containers.d file), for messages; "" when built by hand.
	File string

	ix *index // positions in File; nil when unknown
	at path   // the path of its table in ix
	id string // its name for messages: "alice/dev" for a grandchild
}

// Bind mounts a path of the starting init's view into a container.
type Bind struct {
	Source   string // absolute, clean; must exist (CheckPaths)
	Target   string // absolute, clean, not "/"; defaults to Source
	Writable bool   // default read-only
}

// Sandbox is how far a container is shut off from its parent. Every field
// defaults by Level and Kind (DefaultSandbox).
type Sandbox struct {
	PrivateUsers    bool // its own user namespace
	PrivateTmp      bool // private /tmp, /var/tmp and /run
	PrivateDevices  bool // a minimal /dev
	ProtectProc     bool // a masked /proc
	ProtectSys      bool // a read-only /sys
	NoNewPrivileges bool // no_new_privs: setuid programs gain nothing
	Nesting         bool // may make containers of its own
	Level           int  // the defaults of which release; SandboxLevel is the newest
}

// DefaultSandbox returns the defaults of a sandbox level for a kind of
// container, and false for a level nest does not know.
func DefaultSandbox(kind Kind, level int) (Sandbox, bool) {
	if !slices.Contains(sandboxLevels, level) {
		return Sandbox{}, false
	}
	return Sandbox{
		PrivateUsers:    true,
		PrivateTmp:      true,
		PrivateDevices:  true,
		ProtectProc:     true,
		ProtectSys:      true,
		NoNewPrivileges: kind == KindDaemon,
		Nesting:         kind == KindUser,
		Level:           level,
	}, true
}

// Container returns the child container with the given name.
func (c *Config) Container(name string) (*Container, bool) {
	for i := range c.Containers {
		if c.Containers[i].Name == name {
			return &c.Containers[i], true
		}
	}
	return nil, false
}

// Equal reports whether c and o describe the same container, children
// included. nil and empty slices and maps are equal; the order of Binds,
// After and Exec matters, the order of Services and Containers does not
// (their names are unique). File is left out: a container that moves
// from nest.toml to containers.d is the same container.
func (c Container) Equal(o Container) bool {
	return c.Name == o.Name &&
		c.Kind == o.Kind &&
		c.Rootfs == o.Rootfs &&
		slices.Equal(c.Binds, o.Binds) &&
		c.Memory == o.Memory &&
		c.MemoryHigh == o.MemoryHigh &&
		c.Pids == o.Pids &&
		c.CPU == o.CPU &&
		c.Restart == o.Restart &&
		slices.Equal(c.After, o.After) &&
		c.Hostname == o.Hostname &&
		c.Network == o.Network &&
		c.Address == o.Address &&
		c.NAT == o.NAT &&
		slices.Equal(c.Publish, o.Publish) &&
		slices.Equal(c.DNS, o.DNS) &&
		slices.Equal(c.Exec, o.Exec) &&
		maps.Equal(c.Env, o.Env) &&
		c.Dir == o.Dir &&
		c.User == o.User &&
		c.StopTimeout == o.StopTimeout &&
		c.StartLimit == o.StartLimit &&
		c.Sandbox == o.Sandbox &&
		equalByName(c.Services, o.Services, func(s Service) string { return s.Name }, Service.Equal) &&
		equalByName(c.Containers, o.Containers, func(c Container) string { return c.Name }, Container.Equal)
}

// equalByName compares two lists in the order of their names.
func equalByName[T any](a, b []T, name func(T) string, eq func(T, T) bool) bool {
	if len(a) != len(b) {
		return false
	}
	byName := func(x, y T) int { return cmp.Compare(name(x), name(y)) }
	a, b = slices.Clone(a), slices.Clone(b)
	slices.SortStableFunc(a, byName)
	slices.SortStableFunc(b, byName)
	for i := range a {
		if !eq(a[i], b[i]) {
			return false
		}
	}
	return true
}

// ParseContainer parses and validates one containers.d file: a container
// named name with the keys of a [container.NAME] table. file is the FILE
// of every error and the result's File. A bad name is an error naming the
// file. What needs the other units of the init (after, names taken) and
// the file system (CheckPaths) is not checked here: LoadDir checks the
// first.
func ParseContainer(name, file string, data []byte) (*Container, error) {
	if !ValidName(name) {
		return nil, &Error{File: file, Msg: fmt.Sprintf("container %s: the file name is the container's name: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters, then .toml; rename the file", strconv.Quote(name))}
	}
	var tree map[string]any
	if err := toml.Unmarshal(data, &tree); err != nil {
		return nil, tomlError(file, err)
	}
	ix := newIndex(data)
	d := &decoder{problems: problems{file: file, ix: ix}}
	c := d.container("", "", "", name, tree)
	if len(d.list) > 0 {
		return nil, d.err()
	}
	v := &problems{file: file, ix: ix}
	c.validate(v)
	if len(v.list) > 0 {
		return nil, v.err()
	}
	return &c, nil
}

// LoadDir adds the child containers of dir (an init's containers.d) to c:
// each dir/NAME.toml is one container named NAME, with the keys of a
// [container.NAME] table. Other files are ignored; a missing dir is no
// error. The containers join c's one set of names: a name that a service
// or an inline container already has is an error naming both places, and
// their after may name any service or container of c (while nest.toml may
// name only what it defines itself). Errors carry the FILE:LINE:COL of the
// file they are in. On an error c is left unchanged.
func LoadDir(c *Config, dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var loaded []Container
	var errs []error
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".toml")
		if !ok {
			continue
		}
		file := filepath.Join(dir, e.Name())
		data, err := os.ReadFile(file)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ct, err := ParseContainer(name, file, data)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		loaded = append(loaded, *ct)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return c.Add(loaded...)
}

// Add adds containers parsed from containers.d files (ParseContainer) to
// c, checked as LoadDir checks them: one set of names with c's services
// and containers, after naming units of c. On an error c is left
// unchanged.
func (c *Config) Add(list ...Container) error {
	if len(list) == 0 {
		return nil
	}
	all := append(slices.Clip(c.Containers), list...)
	v := &problems{file: c.Source, ix: c.ix}
	checkNetworkLevel(v, nil, all, c.BridgeSubnet())
	checkLevel(v, levelMembers(v, "", c.Services, all, path("")), c.reserved())
	if err := v.err(); err != nil {
		return err
	}
	c.Containers = all
	return nil
}

// CheckPaths checks what needs the file system of the init that starts
// the container: rootfs is a directory, and every bind source exists.
// Children's paths are not checked: the container's own init checks them
// when it starts them. Errors name the container, the key and what to do,
// at FILE:LINE:COL when the container was parsed from a file.
func (c *Container) CheckPaths() error {
	v := &problems{file: c.File, ix: c.ix}
	ctx := containerContext(c.display())
	if c.Rootfs != RootfsHost && c.Rootfs != "" {
		p := []path{c.at.key("rootfs"), c.at}
		fi, err := os.Stat(c.Rootfs)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.val(p, `%srootfs = %s: no such directory; create it, or set rootfs = "host"`, ctx, strconv.Quote(c.Rootfs))
		case err != nil:
			v.val(p, "%srootfs = %s: %v", ctx, strconv.Quote(c.Rootfs), unwrapPath(err))
		case !fi.IsDir():
			v.val(p, `%srootfs = %s: not a directory (images are not supported yet); give a directory, or "host"`, ctx, strconv.Quote(c.Rootfs))
		}
	}
	for i, b := range c.Binds {
		p := []path{c.at.key("bind").idx(i).key("source"), c.at.key("bind").idx(i), c.at}
		_, err := os.Stat(b.Source)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.val(p, "%sbind[%d].source = %s: does not exist; create it, or remove this bind", ctx, i, strconv.Quote(b.Source))
		case err != nil:
			v.val(p, "%sbind[%d].source = %s: %v", ctx, i, strconv.Quote(b.Source), unwrapPath(err))
		}
	}
	return v.err()
}

// unwrapPath drops the op and path of an *fs.PathError: the message names
// the path already.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// display is the container's name in messages: its path from the init
// whose file defined it ("alice/dev").
func (c *Container) display() string {
	if c.id != "" {
		return c.id
	}
	return c.Name
}
