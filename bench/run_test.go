package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/vmtest"
)

// hostBusybox is the static busybox of Debian's busybox-static package.
const hostBusybox = "/bin/busybox"

// unifiedCgroup is the cgroup2 mount of a host with hybrid cgroups. crun
// 1.8 refuses such a host ("cgroups in hybrid mode not supported"), so it
// runs from a mount namespace without it.
const unifiedCgroup = "/sys/fs/cgroup/unified"

// idPrefix names this process's OCI containers, so that leftovers can be
// found and nothing of another user's is touched.
var idPrefix = fmt.Sprintf("nestbench-%d-", os.Getpid())

// contender is one command under test.
type contender struct {
	metric string // metric name without "_ms"; also names the row
	ratio  string // if set, the metric of the ratio to the floor (nest)
	label  string // the command as the table shows it
	setup  string // what the command sets up, for the table
	argv   func(run int) []string
	// after, if set, runs untimed after each run (OCI: delete a container
	// that a failed run may have left).
	after func(run int)
	// mayHide lets the command fall back to the helper mount namespace
	// without /sys/fs/cgroup/unified when it fails from the host's.
	mayHide bool
	must    bool // a failure fails the benchmark (nest)

	hidden bool   // runs from the helper mount namespace
	note   string // why hidden: the error from the host's namespace
	failed string // "failed: ..." once it failed
	times  []time.Duration
}

// BenchmarkRunTrue is the side-by-side of the issue: `nest run -- /bin/true`
// against the floor (`unshare -Umpinuf --mount-proc true`), bubblewrap,
// crun and runc, N runs of each (NEST_BENCH_N, 200 by default) interleaved
// round-robin (each round shuffled), each exec'd directly with stdio on
// /dev/null and timed from fork to reaped. It reports medians (and nest's
// p90) in ms, nest's ratio to the floor, and prints a markdown table. Run
// with -benchtime 1x: one iteration measures everything.
func BenchmarkRunTrue(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: nest run maps an id range, the OCI runtimes run rootful")
	}
	n := benchRuns(b)

	dir := b.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nest, err := vmtest.BuildNest(ctx, dir)
	if err != nil {
		b.Fatalf("build nest: %v", err)
	}
	goExit := buildGoExit(ctx, b, dir)
	rootfs := filepath.Join(dir, "rootfs")
	if err := makeBusyboxRoot(rootfs); err != nil {
		b.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	bundleErr := makeBundle(bundle, rootfs)

	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	ns, err := newHelperNS()
	if err != nil {
		b.Fatalf("helper mount namespace: %v", err)
	}
	defer ns.close()

	look := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		return name // fails at the first run and is reported as such
	}
	unshare, bwrap := look("unshare"), look("bwrap")
	fixed := func(argv ...string) func(int) []string { return func(int) []string { return argv } }
	const bwrapSetup = "user, mount, pid, ipc, net, uts, cgroup ns; read-only root, /proc, minimal /dev, tmpfs /tmp"
	const ociSetup = "OCI `spec` default: mount, pid, ipc, net, uts ns, no user ns; read-only root, /proc, tmpfs /dev, read-only /sys, masked paths, cgroups (v1), 3 caps"
	const nestSetup = "user ns with a mapped range, mount, pid, ipc, net, uts, cgroup ns; read-only root, private /tmp /var/tmp /run, minimal /dev, masked /proc, read-only /sys, 14 caps, no_new_privs, nest as PID 1"
	all := []*contender{
		{metric: "floor", label: "`unshare -Umpinuf --mount-proc true` (floor)",
			setup: "user (unmapped), mount, pid, ipc, net, uts ns; fork; /proc",
			argv:  fixed(unshare, "-Umpinuf", "--mount-proc", "true")},
		{metric: "nest_run", ratio: "nest_vs_floor_x", label: "`nest run -- /bin/true`", setup: nestSetup, must: true,
			argv: fixed(nest, "run", "--", "/bin/true")},
		{metric: "nest_run_busybox", ratio: "nest_busybox_vs_floor_x", label: "`nest run --rootfs BUSYBOX -- /bin/true`", setup: nestSetup, must: true,
			argv: fixed(nest, "run", "--rootfs", rootfs, "--", "/bin/true")},
		{metric: "bwrap", label: "`bwrap --unshare-all --die-with-parent --ro-bind BUSYBOX / --proc /proc --dev /dev --tmpfs /tmp /bin/true`",
			setup: bwrapSetup,
			argv:  fixed(bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", rootfs, "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true")},
		{metric: "bwrap_host", label: "`bwrap ... --ro-bind / / ... /bin/true`", setup: bwrapSetup,
			argv: fixed(bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true")},
	}
	// What no design of nest run can go below: it starts Go twice (nest
	// run, the sandbox's init) and execs CMD once.
	all = append(all,
		&contender{metric: "go_exit", label: "a static Go program that only exits (`bench/testdata/goexit`)",
			setup: "no sandbox: one Go start; nest run has two", argv: fixed(goExit)},
		&contender{metric: "true", label: "`/bin/true`", setup: "no sandbox: one exec", argv: fixed(look("true"))})
	for _, rt := range []string{"crun", "runc"} {
		path := look(rt)
		c := &contender{metric: rt, label: "`" + rt + " run --bundle BUNDLE ID`", setup: ociSetup, mayHide: true,
			argv: func(run int) []string {
				return []string{path, "run", "--bundle", bundle, fmt.Sprintf("%s%s-%d", idPrefix, rt, run)}
			}}
		c.after = func(run int) {
			id := fmt.Sprintf("%s%s-%d", idPrefix, rt, run)
			if _, err := os.Stat(filepath.Join("/run", rt, id)); err == nil {
				c.do(ns, func() { exec.Command(path, "delete", "-f", id).Run() })
			}
		}
		if bundleErr != nil {
			c.failed = "failed: " + firstLine(bundleErr.Error())
		}
		all = append(all, c)
	}
	defer sweep(b)

	for b.Loop() {
		for _, c := range all {
			c.times = make([]time.Duration, 0, n)
			c.warmUp(b, ns, devnull)
		}
		// Round-robin, each round in a new order (fixed seed), so that
		// drift and noise spread over every command and none always
		// follows another.
		rng := rand.New(rand.NewPCG(1, 2))
		order := slices.Clone(all)
		for i := range n {
			rng.Shuffle(len(order), func(x, y int) { order[x], order[y] = order[y], order[x] })
			for _, c := range order {
				if c.failed != "" {
					continue
				}
				var d time.Duration
				var err error
				c.do(ns, func() { d, err = timeOnce(c.argv(i), devnull) })
				if c.after != nil {
					c.after(i)
				}
				if err != nil {
					c.fail(b, ns, i, err)
					continue
				}
				c.times = append(c.times, d)
			}
		}
	}
	report(b, n, all)
}

// buildGoExit builds bench/testdata/goexit, a static Go program that only
// exits, into dir: the cost of one Go start, set beside nest's.
func buildGoExit(ctx context.Context, b *testing.B, dir string) string {
	b.Helper()
	out := filepath.Join(dir, "goexit")
	if err := vmtest.BuildBinary(ctx, "./bench/testdata/goexit", out); err != nil {
		b.Fatalf("build goexit: %v", err)
	}
	return out
}

// benchRuns is how many times each command runs: NEST_BENCH_N, 200 by
// default.
func benchRuns(b *testing.B) int {
	v := os.Getenv("NEST_BENCH_N")
	if v == "" {
		return 200
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("NEST_BENCH_N=%q: want a positive integer", v)
	}
	return n
}

// warmUp runs the command three times untimed (page cache, first-use
// costs). When it fails from the host's mount namespace and may hide the
// unified cgroup, it moves to the helper namespace if it works there.
func (c *contender) warmUp(b *testing.B, ns *helperNS, devnull *os.File) {
	if c.failed != "" {
		return
	}
	const warm = -1 // run number of warm-up runs (their OCI ids end in --1)
	for range 3 {
		var err error
		c.do(ns, func() { _, err = timeOnce(c.argv(warm), devnull) })
		if c.after != nil {
			c.after(warm)
		}
		if err == nil {
			continue
		}
		if c.mayHide && !c.hidden {
			c.note = c.output(ns, warm, err)
			c.hidden = true
			c.do(ns, func() { _, err = timeOnce(c.argv(warm), devnull) })
			if c.after != nil {
				c.after(warm)
			}
			if err == nil {
				continue
			}
		}
		c.fail(b, ns, warm, err)
		return
	}
}

// do runs f on the helper namespace's thread if the command is hidden
// there, here otherwise.
func (c *contender) do(ns *helperNS, f func()) {
	if c.hidden {
		ns.do(f)
	} else {
		f()
	}
}

// fail marks c failed with the first line of what a rerun prints (the
// timed runs discard output); for nest it fails the benchmark.
func (c *contender) fail(b *testing.B, ns *helperNS, run int, err error) {
	out := c.output(ns, run, err)
	if c.must {
		b.Fatalf("%s: %v\n%s", strings.Join(c.argv(run), " "), err, out)
	}
	c.failed = "failed: " + firstLine(out)
	if c.hidden && c.note != "" {
		c.failed += " (from the host's mount namespace: " + c.note + ")"
	}
}

// output reruns the command, untimed, and returns its first line of output
// or err's text.
func (c *contender) output(ns *helperNS, run int, err error) string {
	var out []byte
	argv := c.argv(run)
	c.do(ns, func() { out, _ = exec.Command(argv[0], argv[1:]...).CombinedOutput() })
	if c.after != nil {
		c.after(run)
	}
	if l := firstLine(string(out)); l != "" {
		return l
	}
	return err.Error()
}

// timeOnce runs argv with stdio on devnull and returns the time from
// before fork to after it was reaped.
func timeOnce(argv []string, devnull *os.File) (time.Duration, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
	start := time.Now()
	err := cmd.Run()
	return time.Since(start), err
}

// helperNS is one mount namespace, private and without the unified cgroup
// mount, held by one locked OS thread: a child forked from that thread
// starts in it, so a hidden command pays nothing per run for it (unlike
// wrapping each run in `unshare -m sh -c 'umount ...; exec crun ...'`).
type helperNS struct{ req chan func() }

func newHelperNS() (*helperNS, error) {
	return lockedNS(func() error {
		err := unix.Unmount(unifiedCgroup, unix.MNT_DETACH)
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("umount %s: %w", unifiedCgroup, err)
		}
		return nil
	})
}

func (ns *helperNS) do(f func()) {
	done := make(chan struct{})
	ns.req <- func() { defer close(done); f() }
	<-done
}

func (ns *helperNS) close() { close(ns.req) }

// makeBusyboxRoot makes a root file system of the host's static busybox:
// /bin/busybox, a symlink for every applet, and the usual mount points.
func makeBusyboxRoot(root string) error {
	out, err := exec.Command(hostBusybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("%s --list-full: %w (install busybox-static: make bench does)", hostBusybox, err)
	}
	for _, d := range []string{"bin", "proc", "sys", "dev", "tmp", "run", "etc", "var/tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		if err := os.Chmod(filepath.Join(root, d), 0o1777); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(hostBusybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "bin/busybox" || strings.Contains(applet, "..") || filepath.IsAbs(applet) {
			continue
		}
		p := filepath.Join(root, applet)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", p); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if _, err := os.Lstat(filepath.Join(root, "bin", "true")); err != nil {
		return fmt.Errorf("busybox root: no /bin/true: %w", err)
	}
	return nil
}

// makeBundle writes an OCI bundle whose config.json is the default of
// `crun spec` (or `runc spec`) running /bin/true of rootfs, read-only,
// without a terminal; namespaces and everything else stay the default.
func makeBundle(bundle, rootfs string) error {
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, rt := range []string{"crun", "runc"} {
		cmd := exec.Command(rt, "spec")
		cmd.Dir = bundle
		out, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		errs = append(errs, fmt.Errorf("%s spec: %v %s", rt, err, bytes.TrimSpace(out)))
	}
	path := filepath.Join(bundle, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	var spec map[string]any
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	proc, ok := spec["process"].(map[string]any)
	if !ok {
		return fmt.Errorf("%s: no process", path)
	}
	proc["args"] = []string{"/bin/true"}
	proc["terminal"] = false
	spec["root"] = map[string]any{"path": rootfs, "readonly": true}
	if data, err = json.MarshalIndent(spec, "", "\t"); err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// sweep removes what an OCI runtime may have left of this process's
// containers (state under /run/crun and /run/runc, cgroups): a foreground
// `run` deletes its container on exit, so normally there is nothing.
func sweep(b *testing.B) {
	for _, rt := range []string{"crun", "runc"} {
		entries, _ := os.ReadDir(filepath.Join("/run", rt))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), idPrefix) {
				b.Logf("removing leftover %s container %s", rt, e.Name())
				exec.Command(rt, "delete", "-f", e.Name()).Run()
			}
		}
	}
	filepath.WalkDir("/sys/fs/cgroup", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if strings.Count(strings.TrimPrefix(p, "/sys/fs/cgroup"), "/") > 3 {
			return fs.SkipDir
		}
		if strings.HasPrefix(d.Name(), idPrefix) {
			b.Logf("removing leftover cgroup %s", p)
			unix.Rmdir(p)
			return fs.SkipDir
		}
		return nil
	})
}

// stats returns the median and the 90th percentile (nearest rank) in ms.
func stats(ds []time.Duration) (median, p90 float64) {
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / 1e6 }
	n := len(s)
	if n%2 == 1 {
		median = ms(s[n/2])
	} else {
		median = (ms(s[n/2-1]) + ms(s[n/2])) / 2
	}
	rank := (9*n + 9) / 10 // ceil(0.9 n)
	return median, ms(s[rank-1])
}

// report emits the metrics and prints the markdown table for the README.
func report(b *testing.B, n int, all []*contender) {
	var floor float64
	if all[0].failed == "" && len(all[0].times) > 0 {
		floor, _ = stats(all[0].times)
	}
	var t strings.Builder
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Fprintf(&t, "\n%d runs of each command, interleaved (each round shuffled); Linux %s, %d CPUs; "+
		"BUSYBOX is a root of busybox-static, BUNDLE its OCI bundle (`%s spec` with args /bin/true, root read-only).\n\n",
		n, unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU(), specTool())
	t.WriteString("| command | median ms | p90 ms | × floor | sandbox |\n|---|---|---|---|---|\n")
	var notes []string
	meds := map[string]float64{}
	for i, c := range all {
		setup := c.setup
		if i > 0 && setup == all[i-1].setup {
			setup = "as above"
		}
		if c.failed != "" || len(c.times) == 0 {
			msg := c.failed
			if msg == "" {
				msg = "failed: no successful run"
			}
			fmt.Fprintf(&t, "| %s | %s | | | %s |\n", c.label, strings.ReplaceAll(msg, "|", "\\|"), setup)
			continue
		}
		med, p90 := stats(c.times)
		ratio := "—"
		if floor > 0 {
			ratio = fmt.Sprintf("%.2f", med/floor)
		}
		label := c.label
		if c.hidden {
			label += " ¹"
			notes = append(notes, fmt.Sprintf("¹ %s refuses this host's mount namespace (%q), so it runs from a mount namespace "+
				"that hides %s, made once and held by one thread: the time is %s's alone.", c.metric, c.note, unifiedCgroup, c.metric))
		}
		fmt.Fprintf(&t, "| %s | %.2f | %.2f | %s | %s |\n", label, med, p90, ratio, setup)
		meds[c.metric] = med
		b.ReportMetric(med, c.metric+"_ms")
		if c.must {
			b.ReportMetric(p90, c.metric+"_p90_ms")
			if floor > 0 && c.ratio != "" {
				b.ReportMetric(med/floor, c.ratio)
			}
		}
	}
	for _, note := range notes {
		t.WriteString("\n" + note + "\n")
	}
	if goExit, ok := meds["go_exit"]; ok && floor > 0 {
		if tr, ok := meds["true"]; ok {
			low := 2*goExit + tr
			fmt.Fprintf(&t, "\nTwo Go starts and one exec, before any namespace: %.2f ms, %.2f × the floor; "+
				"1.5 × the floor is %.2f ms.\n", low, low/floor, 1.5*floor)
			b.ReportMetric(low/floor, "two_go_starts_vs_floor_x")
		}
	}
	fmt.Print(t.String())
}

// specTool names the runtime whose `spec` made the bundle's config.
func specTool() string {
	if _, err := exec.LookPath("crun"); err == nil {
		return "crun"
	}
	return "runc"
}

func firstLine(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			return l
		}
	}
	return ""
}
