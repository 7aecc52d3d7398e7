package bench

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"nest/escalate"
	"nest/supervise"
	"nest/vmtest"
)

// The user the escalations start from: it exists only in the helper mount
// namespace's /etc (an overlay on the host's, in memory), with the sudo
// and doas rules of the benchmark.
const (
	benchUser = "nestbench"
	benchUID  = 64000
)

// escContender is one command of BenchmarkEscalateTrue.
type escContender struct {
	metric string
	label  string
	argv   []string
	env    []string
	asUser bool // run as benchUser (else root)
	inNS   bool // run from the helper mount namespace
	runs   int  // 0: all
	failed string
	times  []time.Duration
}

// BenchmarkEscalateTrue is the side-by-side of the escalation issue:
// `nest escalate -- true` (policy allow, and key with an ed25519 key
// file) against `sudo -n true` (a NOPASSWD rule), `doas -n true` (nopass)
// and `ssh -o BatchMode=yes root@127.0.0.1 true` with a key, and a bare
// `true` (the floor), each started as an unprivileged user (ssh as root),
// interleaved round-robin, timed from fork to reaped. nest's broker runs
// as its init would start it (a process of its own with the socket handed
// over), serving a socket of the benchmark's; sudo's and doas's rules and
// the user live in an overlay of /etc in a mount namespace of the
// benchmark's own; sshd is started on a free port of 127.0.0.1 with its
// own host key. NEST_BENCH_N sets the runs per command (200; ssh 30).
func BenchmarkEscalateTrue(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: a user, an overlay of /etc, sshd")
	}
	n := benchRuns(b)
	dir := b.TempDir()
	openUp(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	nest, err := vmtest.BuildNest(ctx, dir)
	if err != nil {
		b.Fatalf("build nest: %v", err)
	}
	goExit := buildGoExit(ctx, b, dir)
	devnull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()

	ns, err := lockedNS(func() error { return etcOverlay(dir) })
	if err != nil {
		b.Fatalf("helper mount namespace with /etc for %s: %v", benchUser, err)
	}
	defer ns.close()
	key := writeKey(b, filepath.Join(dir, "id_ed25519"), benchUID)
	allowSock, keySock := startBroker(b, dir, nest, key, devnull)
	sshArgv, stopSSH, sshErr := startSSHD(dir)
	defer stopSSH()

	look := func(name string) string {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
		return name
	}
	all := []*escContender{
		{metric: "true", label: "`true` (the floor)", argv: []string{look("true")}, asUser: true, inNS: true},
		{metric: "nest_escalate", label: "`nest escalate -- true` (allow)", argv: []string{nest, "escalate", "--", "true"},
			env: []string{"NEST_ESCALATE_SOCKET=" + allowSock}, asUser: true, inNS: true},
		{metric: "nest_escalate_key", label: "`nest escalate --key KEY -- true` (key: SSHSIG, ed25519)",
			argv: []string{nest, "escalate", "--key", key, "--", "true"},
			env:  []string{"NEST_ESCALATE_SOCKET=" + keySock}, asUser: true, inNS: true},
		{metric: "sudo", label: "`sudo -n true` (NOPASSWD)", argv: []string{look("sudo"), "-n", "true"}, asUser: true, inNS: true},
		{metric: "doas", label: "`doas -n true` (nopass)", argv: []string{look("doas"), "-n", "true"}, asUser: true, inNS: true},
		{metric: "ssh", label: "`ssh -o BatchMode=yes root@127.0.0.1 true` (ed25519 key)", argv: sshArgv, runs: min(n, 30)},
		// What no escalation by a Go client goes below: its own start,
		// and the command's exec (the floor's row).
		{metric: "go_exit", label: "a static Go program that only exits (`bench/testdata/goexit`)", argv: []string{goExit}, asUser: true, inNS: true},
	}
	for _, c := range all {
		if c.metric == "ssh" && sshErr != nil {
			c.failed = "failed: " + firstLine(sshErr.Error())
		}
	}

	for b.Loop() {
		for _, c := range all {
			c.times = make([]time.Duration, 0, n)
			for range 3 { // warm up: page cache, first-use costs
				if c.failed == "" {
					if _, err := c.once(ns, devnull); err != nil {
						c.failed = "failed: " + c.output(ns, err)
					}
				}
			}
		}
		rng := mrand.New(mrand.NewPCG(1, 2))
		order := slices.Clone(all)
		for i := range n {
			rng.Shuffle(len(order), func(x, y int) { order[x], order[y] = order[y], order[x] })
			for _, c := range order {
				if c.failed != "" || (c.runs > 0 && i >= c.runs) {
					continue
				}
				d, err := c.once(ns, devnull)
				if err != nil {
					c.failed = "failed: " + c.output(ns, err)
					continue
				}
				c.times = append(c.times, d)
			}
		}
	}
	if all[1].failed != "" {
		b.Fatalf("nest escalate: %s", all[1].failed)
	}
	reportEscalate(b, all)
}

// once runs the command once, timed from before fork to after it was
// reaped.
func (c *escContender) once(ns *helperNS, devnull *os.File) (d time.Duration, err error) {
	f := func() {
		cmd := c.command()
		cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, devnull, devnull
		start := time.Now()
		err = cmd.Run()
		d = time.Since(start)
	}
	if c.inNS {
		ns.do(f)
	} else {
		f()
	}
	return d, err
}

func (c *escContender) command() *exec.Cmd {
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = append([]string{"PATH=" + escalate.SecurePath, "HOME=/"}, c.env...)
	if c.asUser {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: benchUID, Gid: benchUID, Groups: []uint32{}}}
	}
	return cmd
}

// output reruns the command untimed for its first line of output.
func (c *escContender) output(ns *helperNS, err error) string {
	var out []byte
	f := func() { out, _ = c.command().CombinedOutput() }
	if c.inNS {
		ns.do(f)
	} else {
		f()
	}
	if l := firstLine(string(out)); l != "" {
		return l
	}
	return err.Error()
}

// openUp lets benchUser reach dir (t.TempDir makes it and its parent
// 0700).
func openUp(dir string) {
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
}

// etcOverlay mounts, in this thread's mount namespace, an overlay of
// /etc whose changes live in a tmpfs: benchUser in passwd, group and
// shadow, a sudo rule and a doas rule for it.
func etcOverlay(dir string) error {
	mem := filepath.Join(dir, "etc-overlay")
	if err := os.Mkdir(mem, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", mem, "tmpfs", 0, "mode=0700"); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	upper, work := filepath.Join(mem, "upper"), filepath.Join(mem, "work")
	for _, d := range []string{upper, work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := unix.Mount("overlay", "/etc", "overlay", 0, "lowerdir=/etc,upperdir="+upper+",workdir="+work); err != nil {
		return fmt.Errorf("overlay on /etc: %w", err)
	}
	add := func(path, line string, mode os.FileMode) error {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, mode)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(line + "\n")
		return err
	}
	id := strconv.Itoa(benchUID)
	return errors.Join(
		add("/etc/passwd", benchUser+":x:"+id+":"+id+"::/nonexistent:/bin/sh", 0o644),
		add("/etc/group", benchUser+":x:"+id+":", 0o644),
		add("/etc/shadow", benchUser+":*:19000:0:99999:7:::", 0o640),
		os.MkdirAll("/etc/sudoers.d", 0o755),
		add("/etc/sudoers.d/nestbench", benchUser+" ALL=(ALL) NOPASSWD: ALL", 0o440),
		add("/etc/doas.conf", "permit nopass "+benchUser+" as root", 0o400),
	)
}

// lockedNS makes a helperNS: a new private mount namespace on one locked
// thread, which setup then changes.
func lockedNS(setup func() error) (*helperNS, error) {
	ns := &helperNS{req: make(chan func())}
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the namespace ends with the thread
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- fmt.Errorf("make / private: %w", err)
			return
		}
		if err := setup(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range ns.req {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return ns, nil
}

// writeKey writes a new ed25519 private key file owned by uid and returns
// its path.
func writeKey(b *testing.B, path string, uid int) string {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "bench")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		b.Fatal(err)
	}
	os.Chown(path, uid, uid)
	return path
}

// startBroker starts nest's broker as an init does (nest escalate-broker,
// its control socketpair as fd 3) and hands it two sockets of dir: one
// with policy allow, one with policy key for the key at keyFile.
func startBroker(b *testing.B, dir, nest, keyFile string, devnull *os.File) (allow, key string) {
	ctl, end, err := escalate.Pair()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(nest, supervise.BrokerMode, "--audit", filepath.Join(dir, "escalate.log"))
	cmd.ExtraFiles = []*os.File{end.File()}
	cmd.Stdout, cmd.Stderr = devnull, devnull
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	end.Close()
	b.Cleanup(func() {
		ctl.Close() // the broker ends when its init hangs up
		cmd.Wait()
	})
	pemBytes, _ := os.ReadFile(keyFile)
	signer, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		b.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	listen := func(name string, p escalate.Policy) string {
		sockDir := filepath.Join(dir, name)
		os.Mkdir(sockDir, 0o755)
		path := filepath.Join(sockDir, "sock")
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
		}
		if err == nil {
			err = os.Chmod(path, 0o666)
		}
		if err == nil {
			err = unix.Listen(fd, 64)
		}
		if err != nil {
			b.Fatalf("escalation socket: %v", err)
		}
		ln := os.NewFile(uintptr(fd), path)
		defer ln.Close() // the broker has its own copy
		body, _ := json.Marshal(escalate.Listen{Child: name, Policy: p})
		ctl.SetDeadline(time.Now().Add(30 * time.Second))
		if err := ctl.Send(&escalate.Message{Type: escalate.MsgListen, ID: 1, Body: body}, ln); err != nil {
			b.Fatal(err)
		}
		m, _, err := ctl.Recv()
		if err != nil || m.Type != escalate.MsgListen {
			b.Fatalf("the broker answered %+v, %v", m, err)
		}
		return path
	}
	return listen("allow", escalate.Policy{Method: escalate.MethodAllow}),
		listen("key", escalate.Policy{Method: escalate.MethodKey, Keys: []string{line}})
}

// startSSHD starts sshd on a free port of 127.0.0.1 with a host key and
// root's authorized key in dir, and returns the client's command.
func startSSHD(dir string) (argv []string, stop func(), err error) {
	stop = func() {}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		if sshd, err = exec.LookPath("/usr/sbin/sshd"); err != nil {
			return []string{"ssh"}, stop, errors.New("no sshd (install openssh-server: make bench does)")
		}
	}
	d := filepath.Join(dir, "ssh")
	os.Mkdir(d, 0o700)
	for _, k := range []string{"host", "client"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(d, k)).CombinedOutput(); err != nil {
			return []string{"ssh"}, stop, fmt.Errorf("ssh-keygen: %v %s", err, out)
		}
	}
	pub, _ := os.ReadFile(filepath.Join(d, "client.pub"))
	os.WriteFile(filepath.Join(d, "authorized_keys"), pub, 0o600)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return []string{"ssh"}, stop, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	conf := fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\nPermitRootLogin prohibit-password\n"+
		"PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile %s\nStrictModes no\n"+
		"PidFile %s\nLogLevel ERROR\n", port, filepath.Join(d, "host"), filepath.Join(d, "authorized_keys"), filepath.Join(d, "sshd.pid"))
	os.WriteFile(filepath.Join(d, "sshd_config"), []byte(conf), 0o600)
	madePrivsep := false
	if _, err := os.Stat("/run/sshd"); errors.Is(err, os.ErrNotExist) {
		os.Mkdir("/run/sshd", 0o755)
		madePrivsep = true
	}
	cmd := exec.Command(sshd, "-D", "-e", "-f", filepath.Join(d, "sshd_config"))
	out := new(strings.Builder)
	cmd.Stderr = out
	if err := cmd.Start(); err != nil {
		return []string{"ssh"}, stop, err
	}
	stop = func() {
		cmd.Process.Kill()
		cmd.Wait()
		if madePrivsep {
			os.Remove("/run/sshd")
		}
	}
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if i == 200 {
			return []string{"ssh"}, stop, fmt.Errorf("sshd does not listen: %s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return []string{"ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "LogLevel=ERROR", "-i", filepath.Join(d, "client"), "-p", strconv.Itoa(port), "root@127.0.0.1", "true"}, stop, nil
}

// reportEscalate emits the metrics and prints the markdown table for the
// README.
func reportEscalate(b *testing.B, all []*escContender) {
	var sudo float64
	for _, c := range all {
		if c.metric == "sudo" && c.failed == "" && len(c.times) > 0 {
			sudo, _ = stats(c.times)
		}
	}
	var t strings.Builder
	var uts unix.Utsname
	unix.Uname(&uts)
	fmt.Fprintf(&t, "\nEach command started as an unprivileged user (ssh as root), runs interleaved (each round shuffled), "+
		"timed from fork to reaped; Linux %s, %d CPUs.\n\n", unix.ByteSliceToString(uts.Release[:]), runtime.NumCPU())
	t.WriteString("| command | runs | median ms | p90 ms | × sudo |\n|---|---|---|---|---|\n")
	meds := map[string]float64{}
	for _, c := range all {
		if c.failed != "" || len(c.times) == 0 {
			msg := c.failed
			if msg == "" {
				msg = "failed: no successful run"
			}
			fmt.Fprintf(&t, "| %s | | %s | | |\n", c.label, strings.ReplaceAll(msg, "|", "\\|"))
			continue
		}
		med, p90 := stats(c.times)
		ratio := "—"
		if sudo > 0 {
			ratio = fmt.Sprintf("%.2f", med/sudo)
		}
		fmt.Fprintf(&t, "| %s | %d | %.2f | %.2f | %s |\n", c.label, len(c.times), med, p90, ratio)
		meds[c.metric] = med
		b.ReportMetric(med, c.metric+"_ms")
		if strings.HasPrefix(c.metric, "nest") {
			b.ReportMetric(p90, c.metric+"_p90_ms")
			if sudo > 0 {
				b.ReportMetric(med/sudo, c.metric+"_vs_sudo_x")
			}
		}
	}
	goExit, okGo := meds["go_exit"]
	floor, okTrue := meds["true"]
	if okGo && okTrue && sudo > 0 {
		low := goExit + floor
		fmt.Fprintf(&t, "\nA Go start and one exec, before any socket: %.2f ms, %.2f × sudo; ½ sudo is %.2f ms.\n", low, low/sudo, sudo/2)
		b.ReportMetric(low/sudo, "go_start_and_exec_vs_sudo_x")
	}
	fmt.Print(t.String())
}
