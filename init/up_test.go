package main

// Host-side tests of `nest up`, no VM: the nest binary built by TestMain runs
// as a plain child of the test (a subreaper, set by nest itself) and as PID 1
// of a new pid namespace (unshare --pid --fork --mount-proc).

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// upMode is how nest up runs: as a subreaper below the test, or as PID 1 of
// a pid namespace of its own.
type upMode struct {
	name string
	pid1 bool
}

var upModes = []upMode{{"subreaper", false}, {"pid1", true}}

var (
	unshareOnce sync.Once
	unsharePath string
	unshareErr  error
)

// require skips a PID-1 test where pid namespaces are not available (not
// root, no unshare, a sandbox that forbids them).
func (m upMode) require(t *testing.T) {
	t.Helper()
	if !m.pid1 {
		return
	}
	unshareOnce.Do(func() {
		p, err := exec.LookPath("unshare")
		if err != nil {
			unshareErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, p, "--pid", "--fork", "--mount-proc", "true").CombinedOutput()
		if err != nil {
			unshareErr = fmt.Errorf("unshare --pid --fork --mount-proc true: %v: %s", err, out)
			return
		}
		unsharePath = p
	})
	if unshareErr != nil {
		t.Skipf("no pid namespace for nest as PID 1: %v", unshareErr)
	}
}

// command is nest with args in mode m, in a process group of its own.
func (m upMode) command(ctx context.Context, args ...string) *exec.Cmd {
	argv := append([]string{nestBin}, args...)
	if m.pid1 {
		argv = append([]string{unsharePath, "--pid", "--fork", "--mount-proc"}, argv...)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		killTree(cmd.Process.Pid)
		return nil
	}
	// A process that nest wrongly leaves behind holds stdout and stderr
	// open; Wait must not wait for it.
	cmd.WaitDelay = 3 * time.Second
	return cmd
}

// output is a concurrency-safe buffer that can be waited on.
type output struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newOutput() *output { return &output{changed: make(chan struct{})} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	close(o.changed)
	o.changed = make(chan struct{})
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// waitUntil returns once ok(output so far) holds, or false when ctx ends.
func (o *output) waitUntil(ctx context.Context, ok func(string) bool) bool {
	for {
		o.mu.Lock()
		s, ch := o.buf.String(), o.changed
		o.mu.Unlock()
		if ok(s) {
			return true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}

func (o *output) waitFor(ctx context.Context, want string) bool {
	return o.waitUntil(ctx, func(s string) bool { return strings.Contains(s, want) })
}

// nestRun is one started nest (or unshare running nest).
type nestRun struct {
	name           string // "nest up -- sh -c ...", for messages
	mode           upMode
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{} // closed once Wait has returned
	waitErr        error
}

// launch starts cmd (made by m.command) and makes sure that, whatever
// happens, nothing of it outlives the test. Unless the caller set them,
// stdout and stderr are collected. Safe to call from any goroutine.
func launch(t *testing.T, m upMode, cmd *exec.Cmd) (*nestRun, error) {
	r := &nestRun{
		name:   "nest " + shellJoin(cmd.Args[len(cmd.Args)-argsAfterNest(cmd.Args):]...),
		mode:   m,
		cmd:    cmd,
		stdout: newOutput(),
		stderr: newOutput(),
		done:   make(chan struct{}),
	}
	if cmd.Stdout == nil {
		cmd.Stdout = r.stdout
	}
	if cmd.Stderr == nil {
		cmd.Stderr = r.stderr
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", r.name, err)
	}
	// Before Wait can reap it: its pid is its own until then.
	recordStart(cmd.Process.Pid)
	go func() {
		r.waitErr = cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
			return
		default:
		}
		killTree(cmd.Process.Pid)
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Errorf("%s: still not reaped 10 s after SIGKILL", r.name)
		}
	})
	return r, nil
}

// startNest runs nest with args in mode m until ctx ends.
func startNest(t *testing.T, ctx context.Context, m upMode, args ...string) *nestRun {
	t.Helper()
	r, err := launch(t, m, m.command(ctx, args...))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// argsAfterNest is how many of argv are nest's own arguments.
func argsAfterNest(argv []string) int {
	for i, a := range argv {
		if a == nestBin {
			return len(argv) - i - 1
		}
	}
	return len(argv)
}

func shellJoin(args ...string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}

// wait returns nest's exit code once it has exited (-1 after a signal; the
// context of the command bounds the wait).
func (r *nestRun) wait() int {
	<-r.done
	return r.cmd.ProcessState.ExitCode()
}

// exited reports whether nest has exited.
func (r *nestRun) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// describe is how the run ended and what it printed, for failure messages.
func (r *nestRun) describe() string {
	st := "still running"
	if r.exited() {
		st = r.cmd.ProcessState.String()
		if r.waitErr != nil && !errors.As(r.waitErr, new(*exec.ExitError)) {
			st += " (" + r.waitErr.Error() + ")"
		}
	}
	return fmt.Sprintf("%s\nstdout:\n%s\nstderr:\n%s", st, r.stdout, r.stderr)
}

// nestPid is the host pid of nest itself: the started process, or in PID-1
// mode the child that unshare forked into the new namespace (unshare --fork
// forwards no signals).
func (r *nestRun) nestPid(ctx context.Context) (int, error) {
	if !r.mode.pid1 {
		return r.cmd.Process.Pid, nil
	}
	for {
		if kids := procChildren()[r.cmd.Process.Pid]; len(kids) > 0 {
			return kids[0], nil
		}
		if r.exited() {
			return 0, errors.New("unshare exited before its child could be found")
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no child of unshare (pid %d): %w", r.cmd.Process.Pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// signal sends sig to nest itself.
func (r *nestRun) signal(ctx context.Context, sig unix.Signal) error {
	pid, err := r.nestPid(ctx)
	if err != nil {
		return err
	}
	return unix.Kill(pid, sig)
}

// procChildren maps every pid to its children, from /proc/*/stat.
func procChildren() map[int][]int {
	kids := make(map[int][]int)
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, err := strconv.Atoi(f[1]); err == nil {
			kids[ppid] = append(kids[ppid], pid)
		}
	}
	return kids
}

func descendants(kids map[int][]int, pid int) []int {
	var out []int
	for queue := []int{pid}; len(queue) > 0; queue = queue[1:] {
		for _, c := range kids[queue[0]] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// killTree stops root and everything below it (SIGSTOP until no new process
// shows up, so nothing forks or restarts behind our back), then SIGKILLs
// them all. Only for cleanup: a pid could in principle have been recycled.
func killTree(root int) {
	if root <= 1 {
		return
	}
	// The root must still be the process launch started: once reaped,
	// its pid may be another test's (pid_max is 32768 here).
	rootFD, err := unix.PidfdOpen(root, 0)
	if err != nil {
		return
	}
	want, known := started.Load(root)
	if got, ok := startTime(root); !known || !ok || got != want.(uint64) {
		unix.Close(rootFD)
		return
	}
	// Each process is held by a pidfd opened after it was seen as a child
	// of the tree and checked again: pids are recycled fast (pid_max is
	// 32768 here), and a stale pid could be another test's process.
	held := map[int]int{root: rootFD}
	unix.PidfdSendSignal(rootFD, unix.SIGSTOP, nil, 0)
	defer func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	}()
	ours := func(p int) bool {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(p) + "/stat")
		if err != nil {
			return false
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 2 {
			return false
		}
		pp, _ := strconv.Atoi(f[1])
		_, ok := held[pp]
		return ok
	}
	for range 50 {
		pids := append([]int{root}, descendants(procChildren(), root)...)
		grew := false
		for _, p := range pids {
			if _, seen := held[p]; seen || p <= 1 || p == os.Getpid() {
				continue
			}
			fd, err := unix.PidfdOpen(p, 0)
			if err != nil {
				continue
			}
			if !ours(p) {
				unix.Close(fd)
				continue
			}
			held[p], grew = fd, true
			unix.PidfdSendSignal(fd, unix.SIGSTOP, nil, 0)
		}
		if !grew {
			break
		}
	}
	for _, fd := range held {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
	}
}

// started holds the start time of every process launch started, by pid.
var started sync.Map

func recordStart(pid int) {
	if t, ok := startTime(pid); ok {
		started.Store(pid, t)
	}
}

// startTime is field 22 of /proc/PID/stat: when the process started, in
// clock ticks after boot; a recycled pid has another.
func startTime(pid int) (uint64, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 20 {
		return 0, false
	}
	t, err := strconv.ParseUint(f[19], 10, 64)
	return t, err == nil
}

// runNest runs nest with args in mode m to the end and returns its exit
// code and output.
func runNest(t *testing.T, ctx context.Context, m upMode, args ...string) (int, *nestRun) {
	t.Helper()
	r := startNest(t, ctx, m, args...)
	return r.wait(), r
}

// pidfd pins a process the test watches; closed at cleanup, after a SIGKILL
// if it still runs.
func pidfd(t *testing.T, pid int) (int, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, err
	}
	t.Cleanup(func() {
		unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0)
		unix.Close(fd)
	})
	return fd, nil
}

// processGone reports whether the process behind fd has exited (a pidfd
// polls readable once it has).
func processGone(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n == 1
}

// waitGone waits until the process behind fd has exited or ctx ends.
func waitGone(ctx context.Context, fd int) bool {
	for !processGone(fd) {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(5 * time.Millisecond):
		}
	}
	return true
}

func randSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// shortTempDir is a temporary directory with a path short enough for a
// unix socket in it (t.TempDir's carry the test's name).
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nest-up-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// TestUpExitStatus: nest up -- CMD exits with CMD's status, 0 to 255, and
// with 128+N when CMD dies of signal N.
func TestUpExitStatus(t *testing.T) {
	t.Parallel()
	type tc struct {
		script string
		want   int
	}
	signals := []tc{{"kill -KILL $$", 137}, {"kill -TERM $$", 143}}
	for _, m := range upModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			m.require(t)
			codes := []int{0, 1, 42, 255}
			if !m.pid1 {
				codes = codes[:0]
				for c := range 256 {
					codes = append(codes, c)
				}
			}
			cases := append([]tc(nil), signals...)
			for _, c := range codes {
				cases = append(cases, tc{"exit " + strconv.Itoa(c), c})
			}
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			work := make(chan tc)
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for c := range work {
						r, err := launch(t, m, m.command(ctx, "up", "--", "sh", "-c", c.script))
						if err != nil {
							t.Error(err)
							continue
						}
						if got := r.wait(); got != c.want {
							t.Errorf("%s = %d, want %d\n%s", r.name, got, c.want, r.describe())
						}
					}
				})
			}
			for _, c := range cases {
				work <- c
			}
			close(work)
			wg.Wait()
		})
	}
}

// TestUpForwardsSignals: SIGTERM, SIGINT, SIGHUP and SIGUSR1 sent to nest
// reach CMD, whose trap exits 0; nest then exits 0 too.
func TestUpForwardsSignals(t *testing.T) {
	t.Parallel()
	sigs := []struct {
		name string
		sig  unix.Signal
	}{{"TERM", unix.SIGTERM}, {"INT", unix.SIGINT}, {"HUP", unix.SIGHUP}, {"USR1", unix.SIGUSR1}}
	for _, m := range upModes {
		for _, s := range sigs {
			t.Run(m.name+"/"+s.name, func(t *testing.T) {
				t.Parallel()
				m.require(t)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				script := fmt.Sprintf(`trap "echo got %[1]s; exit 0" %[1]s; echo ready; while :; do sleep 0.05; done`, s.name)
				r := startNest(t, ctx, m, "up", "--", "sh", "-c", script)
				if !r.stdout.waitFor(ctx, "ready\n") {
					t.Fatalf("%s: no \"ready\" from CMD: %s", r.name, r.describe())
				}
				if err := r.signal(ctx, s.sig); err != nil {
					t.Fatalf("kill %s to nest: %v", s.name, err)
				}
				if got := r.wait(); got != 0 {
					t.Errorf("%s after SIG%s = %d, want 0\n%s", r.name, s.name, got, r.describe())
				}
				if want := "got " + s.name + "\n"; !strings.Contains(r.stdout.String(), want) {
					t.Errorf("%s after SIG%s: stdout %q, want it to contain %q", r.name, s.name, r.stdout, want)
				}
			})
		}
	}
}

// orphansScript makes 1,000 orphans (each subshell's background child
// outlives it and is reparented to nest), then waits up to 1 s for nest to
// have reaped them all: no zombie whose parent is nest ($PPID) is left.
// /proc/PID/stat is parsed after the last ')': field 3 is the state, 4 the
// parent.
const orphansScript = `
for i in $(seq 1000); do (true &); done
zombies() {
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v p="$PPID" '
		{ s = $0; sub(/^.*\) /, "", s); split(s, f, " "); if (f[1] == "Z" && f[2] == p) n++ }
		END { print n + 0 }'
}
end=$(( $(date +%s%N) + 1000000000 ))
while n=$(zombies); [ "$n" != 0 ] && [ "$(date +%s%N)" -lt "$end" ]; do sleep 0.01; done
echo "zombies=$n"
[ "$n" = 0 ]
`

// TestUpReapsOrphans: 1,000 orphans are all reaped within a second.
func TestUpReapsOrphans(t *testing.T) {
	t.Parallel()
	for _, m := range upModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			m.require(t)
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			got, r := runNest(t, ctx, m, "up", "--", "sh", "-c", orphansScript)
			if got != 0 || !strings.Contains(r.stdout.String(), "zombies=0\n") {
				t.Errorf("nest up -- sh -c <1,000 orphans, then count zombies of nest> = %d, want 0 with zombies=0\n%s", got, r.describe())
			}
		})
	}
}

// graceScript leaves behind a grandchild that ignores SIGTERM (SIG_IGN
// survives exec) and has written its pid to $1, then CMD exits 0.
const graceScript = `
sh -c 'trap "" TERM; echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 100' sh "$1" &
while [ ! -s "$1" ]; do sleep 0.01; done
exit 0
`

// TestUpGraceKill: once CMD has exited, a grandchild that ignores SIGTERM
// is killed after --grace, and nest exits with CMD's status within seconds.
func TestUpGraceKill(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	for _, m := range upModes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			m.require(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			pidFile := filepath.Join(t.TempDir(), "grandchild.pid")
			r := startNest(t, ctx, m, "up", "--grace", grace.String(), "--", "sh", "-c", graceScript, "sh", pidFile)

			// Pin the grandchild (its pid is the host's only as a
			// subreaper) before nest can kill it.
			var seen time.Time
			fd := -1
			for {
				b, err := os.ReadFile(pidFile)
				if err == nil && len(b) > 0 && b[len(b)-1] == '\n' {
					seen = time.Now()
					if !m.pid1 {
						pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
						if err != nil {
							t.Fatalf("pid file %q: %v", b, err)
						}
						switch fd, err = pidfd(t, pid); {
						case errors.Is(err, unix.ESRCH):
							// Only if the test was starved for the whole
							// grace; stderr below still proves the grace.
							t.Logf("grandchild %d already gone when the test looked", pid)
						case err != nil:
							t.Fatalf("pidfd_open(%d): %v", pid, err)
						}
					}
					break
				}
				if r.exited() {
					t.Fatalf("%s exited before the grandchild wrote its pid: %s", r.name, r.describe())
				}
				select {
				case <-ctx.Done():
					t.Fatalf("no pid file from the grandchild: %s", r.describe())
				case <-time.After(2 * time.Millisecond):
				}
			}

			got := r.wait()
			took := time.Since(seen)
			if got != 0 {
				t.Errorf("%s = %d, want 0\n%s", r.name, got, r.describe())
			}
			if took > 5*time.Second {
				t.Errorf("%s took %v after the grandchild started, want the grace (%v) and at most 5 s", r.name, took, grace)
			}
			// Printed only once the whole grace has passed with processes
			// left: proof that nest waited it out before SIGKILL.
			if want := "ignored SIGTERM for " + grace.String(); !strings.Contains(r.stderr.String(), want) {
				t.Errorf("%s: stderr %q, want it to report killing processes that %s", r.name, r.stderr, want)
			}
			if fd >= 0 && !processGone(fd) {
				t.Errorf("%s: grandchild that ignores SIGTERM still runs after nest exited", r.name)
			}
		})
	}
}

// unitStatus is the part of `nest status --json` the tests read.
type unitStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Pid   int    `json:"pid"`
}

// nestCLI runs a CLI verb of nest (never in a namespace: the control socket
// is a file).
func nestCLI(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, nestBin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	code = -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	if err != nil && code == 0 {
		code = -1
	}
	if code == -1 && err != nil {
		e.WriteString("(nestCLI: " + err.Error() + ")")
	}
	return o.String(), e.String(), code
}

// service is one [[service]] of a test config.
type service struct {
	name, script, after string
}

// serviceScript prints a greeting, appends name to stopFile on SIGTERM and
// exits 0.
func serviceScript(name, stopFile string) string {
	return fmt.Sprintf(`trap 'echo %s >> %s; exit 0' TERM; echo hello from %s; while :; do sleep 0.05; done`, name, stopFile, name)
}

// servicesFixture is a config of services in a short temporary directory
// with room for a control socket. Unit names are unique per test: logs go
// to the shared logDir (removed at cleanup).
type servicesFixture struct {
	dir, conf, sock, stopFile string
	suffix                    string
}

func newServicesFixture(t *testing.T) *servicesFixture {
	dir := shortTempDir(t)
	return &servicesFixture{
		dir:      dir,
		conf:     filepath.Join(dir, "nest.toml"),
		sock:     filepath.Join(dir, "nest.sock"),
		stopFile: filepath.Join(dir, "stopped"),
		suffix:   randSuffix(),
	}
}

// name is a unit name unique to this fixture.
func (f *servicesFixture) name(base string) string { return "up-" + base + "-" + f.suffix }

// write (re)writes the config with console = "none" and services.
func (f *servicesFixture) write(t *testing.T, services ...service) {
	t.Helper()
	var b strings.Builder
	b.WriteString("console = \"none\"\n")
	for _, s := range services {
		fmt.Fprintf(&b, "\n[[service]]\nname = %q\nexec = [\"/bin/sh\", \"-c\", %q]\n", s.name, s.script)
		if s.after != "" {
			fmt.Fprintf(&b, "after = [%q]\n", s.after)
		}
		t.Cleanup(func() {
			os.Remove(filepath.Join(logDir, s.name+".log"))
			os.Remove(filepath.Join(logDir, s.name+".log.1"))
			os.Remove(logDir) // only if empty: others may use it
		})
	}
	if err := os.WriteFile(f.conf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitUnits polls `nest status --json` until ok(units) holds, and returns
// the units. It fails the test if nest exits or ctx ends first.
func (f *servicesFixture) waitUnits(t *testing.T, ctx context.Context, r *nestRun, what string, ok func([]unitStatus) bool) []unitStatus {
	t.Helper()
	for {
		out, errOut, code := nestCLI(ctx, "--socket", f.sock, "status", "--json")
		var units []unitStatus
		if code == 0 {
			if err := json.Unmarshal([]byte(out), &units); err != nil {
				t.Fatalf("nest status --json: %v\n%s", err, out)
			}
			if ok(units) {
				return units
			}
		}
		if r.exited() {
			t.Fatalf("%s exited while waiting for %s: %s", r.name, what, r.describe())
		}
		select {
		case <-ctx.Done():
			t.Fatalf("nest status --json = %d, %s%s; want %s\n%s", code, out, errOut, what, r.describe())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// running reports whether every unit in names runs, and no other exists.
func running(names ...string) func([]unitStatus) bool {
	return func(units []unitStatus) bool {
		if len(units) != len(names) {
			return false
		}
		for _, u := range units {
			if !slices.Contains(names, u.Name) || u.State != "running" || u.Pid <= 0 {
				return false
			}
		}
		return true
	}
}

// stopWithin is how long nest up may take to stop services that exit at
// once on SIGTERM: far below their stop_timeout (10 s), so a nest that
// no longer reaps is caught here rather than by the test's deadline.
const stopWithin = 5 * time.Second

// waitExit waits up to d for nest to exit; ok is false if it still runs.
func (r *nestRun) waitExit(d time.Duration) (code int, ok bool) {
	select {
	case <-r.done:
		return r.cmd.ProcessState.ExitCode(), true
	case <-time.After(d):
		return 0, false
	}
}

// TestUpServices: nest up -c FILE runs the services of FILE with a control
// socket; a second nest on the same socket is refused; SIGINT (Ctrl-C),
// SIGTERM or `nest poweroff` stop the services in reverse order with
// SIGTERM and nest exits 0, leaving nothing behind and not touching what
// it did not start.
func TestUpServices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		mode upMode
		stop string // "SIGINT", "SIGTERM" or "poweroff"
	}{
		{upModes[0], "SIGINT"},
		{upModes[1], "SIGINT"},
		{upModes[0], "SIGTERM"},
		{upModes[0], "poweroff"},
	}
	for _, tt := range tests {
		m := tt.mode
		t.Run(m.name+"/"+tt.stop, func(t *testing.T) {
			t.Parallel()
			m.require(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			f := newServicesFixture(t)
			a, b := f.name("a"), f.name("b")
			f.write(t,
				service{name: a, script: serviceScript(a, f.stopFile)},
				service{name: b, script: serviceScript(b, f.stopFile), after: a})

			// A process beside nest, not started by it: nest up must not
			// touch it (no kill(-1)).
			sibling := -1
			if !m.pid1 {
				sib := exec.Command("sleep", "60")
				if err := sib.Start(); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { sib.Process.Kill(); sib.Wait() })
				fd, err := pidfd(t, sib.Process.Pid)
				if err != nil {
					t.Fatal(err)
				}
				sibling = fd
			}

			r := startNest(t, ctx, m, "up", "-c", f.conf, "--socket", f.sock)
			units := f.waitUnits(t, ctx, r, a+" and "+b+" running", running(a, b))

			var fds []int
			if !m.pid1 { // the pids are the host's only outside a namespace
				for _, u := range units {
					fd, err := pidfd(t, u.Pid)
					if err != nil {
						t.Fatalf("pidfd_open(%d) of service %s: %v", u.Pid, u.Name, err)
					}
					fds = append(fds, fd)
				}
			}

			second, r2 := runNest(t, ctx, m, "up", "-c", f.conf, "--socket", f.sock)
			if want := "a nest already runs here"; second != 1 || !strings.Contains(r2.stderr.String(), want) {
				t.Errorf("second %s = %d, want 1 with %q\n%s", r2.name, second, want, r2.describe())
			}
			if r.exited() {
				t.Fatalf("the first nest up exited when a second one started: %s", r.describe())
			}

			for {
				out, errOut, code := nestCLI(ctx, "--socket", f.sock, "logs", a)
				if code == 0 && strings.Contains(out, "hello from "+a) {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("nest logs %s = %d, %q; want \"hello from %s\"", a, code, out+errOut, a)
				case <-time.After(20 * time.Millisecond):
				}
			}

			switch tt.stop {
			case "SIGINT", "SIGTERM":
				sig := map[string]unix.Signal{"SIGINT": unix.SIGINT, "SIGTERM": unix.SIGTERM}[tt.stop]
				if err := r.signal(ctx, sig); err != nil {
					t.Fatalf("%s to nest: %v", tt.stop, err)
				}
			case "poweroff":
				if _, errOut, code := nestCLI(ctx, "--socket", f.sock, "poweroff"); code != 0 {
					t.Fatalf("nest poweroff = %d, want 0: %s", code, errOut)
				}
			}
			got, ok := r.waitExit(stopWithin)
			if !ok {
				t.Fatalf("%s still runs %v after %s, want it stopped and exited 0\n%s", r.name, stopWithin, tt.stop, r.describe())
			}
			if got != 0 {
				t.Errorf("%s after %s = %d, want 0\n%s", r.name, tt.stop, got, r.describe())
			}
			// b runs after a, so it stops first; both got SIGTERM.
			stopped, _ := os.ReadFile(f.stopFile)
			if want := b + "\n" + a + "\n"; string(stopped) != want {
				t.Errorf("%s after %s: services trapped SIGTERM as %q, want %q (reverse order)", r.name, tt.stop, stopped, want)
			}
			for i, fd := range fds {
				if !processGone(fd) {
					t.Errorf("%s after %s: service %s (pid %d) still runs", r.name, tt.stop, units[i].Name, units[i].Pid)
				}
			}
			if sibling >= 0 {
				if err := unix.PidfdSendSignal(sibling, 0, nil, 0); err != nil {
					t.Errorf("%s: a process it did not start is gone: %v", r.name, err)
				}
			}
			if _, _, code := nestCLI(ctx, "--socket", f.sock, "status"); code != 1 {
				t.Errorf("nest status once nest up is gone = %d, want 1", code)
			}
		})
	}
}

// TestUpReload: a changed config is applied on SIGHUP and on `nest reload`
// (the changed service restarts, a new one starts), and `nest reboot`
// restarts every unit; nest up goes on running and stops cleanly after.
func TestUpReload(t *testing.T) {
	t.Parallel()
	m := upModes[0]
	for _, how := range []string{"SIGHUP", "reload", "reboot"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			f := newServicesFixture(t)
			a, c := f.name("a"), f.name("c")
			f.write(t, service{name: a, script: serviceScript(a, f.stopFile)})
			r := startNest(t, ctx, m, "up", "-c", f.conf, "--socket", f.sock)
			before := f.waitUnits(t, ctx, r, a+" running", running(a))

			want := []string{a}
			switch how {
			case "SIGHUP", "reload":
				f.write(t,
					service{name: a, script: "echo v2; " + serviceScript(a, f.stopFile)},
					service{name: c, script: serviceScript(c, f.stopFile)})
				want = append(want, c)
				if how == "SIGHUP" {
					if err := r.signal(ctx, unix.SIGHUP); err != nil {
						t.Fatal(err)
					}
				} else if _, errOut, code := nestCLI(ctx, "--socket", f.sock, "reload"); code != 0 {
					t.Fatalf("nest reload = %d, want 0: %s", code, errOut)
				}
			case "reboot":
				if _, errOut, code := nestCLI(ctx, "--socket", f.sock, "reboot"); code != 0 {
					t.Fatalf("nest reboot = %d, want 0: %s", code, errOut)
				}
			}
			bound, cancelBound := context.WithTimeout(ctx, stopWithin)
			defer cancelBound()
			f.waitUnits(t, bound, r, fmt.Sprintf("%s running, %s with a pid other than %d", strings.Join(want, " and "), a, before[0].Pid),
				func(units []unitStatus) bool {
					if !running(want...)(units) {
						return false
					}
					for _, u := range units {
						if u.Name == a && u.Pid == before[0].Pid {
							return false
						}
					}
					return true
				})

			if err := r.signal(ctx, unix.SIGTERM); err != nil {
				t.Fatal(err)
			}
			got, ok := r.waitExit(stopWithin)
			if !ok {
				t.Fatalf("%s still runs %v after SIGTERM\n%s", r.name, stopWithin, r.describe())
			}
			if got != 0 {
				t.Errorf("%s after %s and SIGTERM = %d, want 0\n%s", r.name, how, got, r.describe())
			}
		})
	}
}

// TestUpUsageErrors: what is wrong with the command line or the config is
// said on stderr, with the documented status, before anything runs.
func TestUpUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("console = \"none\"\nbogus = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.toml")
	tests := []struct {
		name   string
		args   []string
		want   int
		stderr string
	}{
		{"no-such-cmd", []string{"up", "--", "nonexistent-cmd-for-nest-test"}, 127, "nonexistent-cmd-for-nest-test"},
		{"unknown-flag", []string{"up", "--bogus"}, 2, "bogus"},
		{"bad-grace", []string{"up", "--grace", "soon", "--", "true"}, 2, "grace"},
		{"unknown-key", []string{"up", "-c", bad}, 1, bad + ":2:1"},
		{"no-config", []string{"up", "-c", missing}, 1, "no config at " + missing},
	}
	for _, m := range upModes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				t.Parallel()
				m.require(t)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				got, r := runNest(t, ctx, m, tt.args...)
				if got != tt.want || !strings.Contains(r.stderr.String(), tt.stderr) {
					t.Errorf("%s = %d, stderr %q; want %d, stderr with %q", r.name, got, r.stderr, tt.want, tt.stderr)
				}
			})
		}
	}
}
