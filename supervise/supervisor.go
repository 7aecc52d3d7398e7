package supervise

import (
	"fmt"
	"runtime/debug"
	"slices"
	"sync"

	"nest/config"
	"nest/mounts"
	"nest/sandbox"
)

// DefaultPath is the PATH every unit starts with (the kernel gives init none).
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Options is what the supervisor may use of the machine.
type Options struct {
	Reaper *Reaper
	// Logf prints one status line (started, ready, failed, stopped) to the
	// console or the caller's log.
	Logf func(format string, args ...any)
	// LogDir holds NAME.log for every unit ("" keeps logs in memory only).
	LogDir string
	// RunDir holds runtime files: notify sockets (RunDir/notify/NAME).
	RunDir string
	// Cgroups is the cgroup v2 directory under which each unit gets its own
	// cgroup ("" when there is no usable cgroup v2: pidfds only).
	Cgroups string
	// ContainerCgroups is the cgroup v2 directory under which each child
	// container gets its own, delegated to it ("" : none).
	ContainerCgroups string
	// IDs is the pool of user-namespace id ranges for child containers.
	IDs sandbox.Pool
	// Self is the nest binary that child containers run as their init
	// (default /proc/self/exe).
	Self string
	// Nested says this init is below the root's children: it maps its
	// children's ids one to one (sandbox.IdentityRange) instead of taking
	// ranges from IDs, and Layers is its own root.
	Nested bool
	// Layers are this init's own root layers, the lowers of its user
	// containers that see "host" (nil: the root's children get an
	// idmapped clone of the root file system instead).
	Layers *mounts.Layers
	// StateRoot holds the state of each user container (default
	// rootfs.StateRoot).
	StateRoot string
	// WorkloadUserns starts every service in a further user and mount
	// namespace (ids mapped one to one), where no mount this init made —
	// the masks of /proc — can be removed. For inits whose units keep
	// CAP_SYS_ADMIN (containers that may nest).
	WorkloadUserns bool
	// Net gives veth containers their network (nil: none here).
	Net *NetOptions
}

// Supervisor runs a set of units.
type Supervisor struct {
	opts Options

	mu       sync.Mutex
	units    map[string]*Unit
	order    []string // names in config order
	change   chan struct{}
	stopping bool

	netState   netState
	escalation *escalation // made at the first child container (escalation.go)
}

// New returns a supervisor with no units.
func New(opts Options) *Supervisor {
	return &Supervisor{opts: opts, units: make(map[string]*Unit), change: make(chan struct{})}
}

// Changes returns a channel that is closed at the next state change of any
// unit. Take it before reading the state it guards.
func (s *Supervisor) Changes() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.change
}

func (s *Supervisor) changed() {
	s.mu.Lock()
	close(s.change)
	s.change = make(chan struct{})
	s.mu.Unlock()
}

func (s *Supervisor) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// dependencies reports whether every unit in after is up (running and
// ready, or exited successfully); if not, which one is awaited, or which
// one failed so that the dependent must not start.
func (s *Supervisor) dependencies(after []string) (ok bool, waitFor, failed string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, name := range after {
		d := s.units[name]
		if d == nil {
			return false, "", name // validation prevents this; fail closed
		}
		state, _ := d.current()
		switch state {
		case StateRunning, StateExited:
		case StateFailed:
			return false, "", name
		default:
			return false, name, ""
		}
	}
	return true, "", ""
}

// Apply makes the running set match specs: new units start, removed units
// stop, changed units restart, unchanged ones are left alone. It returns
// once removed and changed units are down; starts proceed in the
// background, ordered by `after`.
func (s *Supervisor) Apply(specs []Spec) {
	want := make(map[string]Spec, len(specs))
	for _, sp := range specs {
		want[sp.Name] = sp
	}

	s.mu.Lock()
	var down []<-chan struct{}
	var gone []*config.Container // containers removed from the config
	var kept, removed []Spec
	for name, u := range s.units {
		sp, keep := want[name]
		if keep && sameSpec(u.spec, sp) {
			kept = append(kept, sp)
			continue
		}
		if !keep && u.spec.Container != nil {
			gone = append(gone, u.spec.Container)
		}
		down = append(down, u.send(opRemove))
		delete(s.units, name)
		removed = append(removed, u.spec)
	}
	s.mu.Unlock()
	for _, d := range down {
		<-d
	}
	for _, c := range gone {
		s.releaseNetwork(c.Name, c)
	}
	s.applyEscalation(kept, removed)

	s.mu.Lock()
	s.order = s.order[:0]
	var started []*Unit
	for _, sp := range specs {
		s.order = append(s.order, sp.Name)
		if _, ok := s.units[sp.Name]; ok {
			continue
		}
		u := newUnit(s, sp)
		u.state = StateWaiting // until its goroutine acts: not yet up
		s.units[sp.Name] = u
		started = append(started, u)
	}
	s.mu.Unlock()
	for _, u := range started {
		go u.run(true)
	}
	s.changed()
}

func sameSpec(a, b Spec) bool {
	if (a.Container == nil) != (b.Container == nil) {
		return false
	}
	if a.Container != nil && !a.Container.Equal(*b.Container) {
		return false
	}
	return a.TTY == b.TTY && a.InheritOutput == b.InheritOutput &&
		slices.Equal(a.Confine, b.Confine) && a.Service.Equal(b.Service)
}

// Unit returns the unit called name.
func (s *Supervisor) Unit(name string) (*Unit, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.units[name]
	return u, ok
}

// Units returns every unit in config order.
func (s *Supervisor) Units() []*Unit {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Unit, 0, len(s.units))
	for _, name := range s.order {
		if u, ok := s.units[name]; ok {
			out = append(out, u)
		}
	}
	return out
}

// Start, Stop and Restart act on one unit. Stop's channel is closed once
// the unit is down.
func (s *Supervisor) Start(u *Unit) { <-u.send(opStart) }

// Stop asks u to stop and returns a channel closed when it is down.
func (s *Supervisor) Stop(u *Unit) <-chan struct{} { return u.send(opStop) }

// Restart stops u if it runs and starts it again without backoff.
func (s *Supervisor) Restart(u *Unit) { <-u.send(opRestart) }

// Shutdown stops every unit in reverse dependency order (a unit stops only
// once every unit that runs after it is down; independent units stop in
// parallel) and returns when all are down. No unit restarts afterwards.
func (s *Supervisor) Shutdown() {
	s.mu.Lock()
	s.stopping = true
	units := make(map[string]*Unit, len(s.units))
	for name, u := range s.units {
		units[name] = u
	}
	s.mu.Unlock()

	downs := make(map[string]chan struct{}, len(units))
	for name := range units {
		downs[name] = make(chan struct{})
	}
	dependents := make(map[string][]string)
	for name, u := range units {
		for _, dep := range u.spec.After {
			dependents[dep] = append(dependents[dep], name)
		}
	}
	var wg sync.WaitGroup
	for name, u := range units {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(downs[name])
			defer s.recoverGoroutine("shutdown of " + name)
			for _, d := range dependents[name] {
				if ch, ok := downs[d]; ok {
					<-ch
				}
			}
			<-u.send(opStop)
		}()
	}
	wg.Wait()
	s.stopEscalation()
	// Nothing holds a log file open on a file system that shutdown is
	// about to unmount.
	for _, u := range units {
		u.log.Close()
	}
	s.closeNetwork()
}

// recoverUnit keeps a panic in one unit's goroutine from ending the init:
// the unit is marked failed and everything else goes on.
func (s *Supervisor) recoverUnit(u *Unit) {
	if r := recover(); r != nil {
		if s.opts.Logf != nil {
			s.opts.Logf("%s: internal error: %v\n%s", u.spec.Name, r, debug.Stack())
		}
		u.set(StateFailed, fmt.Sprintf("internal error: %v", r))
	}
}

func (s *Supervisor) recoverGoroutine(what string) {
	if r := recover(); r != nil && s.opts.Logf != nil {
		s.opts.Logf("%s: internal error: %v\n%s", what, r, debug.Stack())
	}
}

// StartAll ends a Shutdown and starts every unit again (a reboot of a
// container whose init may not reboot the machine).
func (s *Supervisor) StartAll() {
	s.mu.Lock()
	s.stopping = false
	s.mu.Unlock()
	for _, u := range s.Units() {
		u.log.Reopen()
		s.Start(u)
	}
}
