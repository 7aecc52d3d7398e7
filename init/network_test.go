package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUpNetwork: under nest up, in a network namespace of its own (so that
// nothing reaches the host's), veth containers get their addresses, reach
// each other by name, publish a port, keep their address across a stop,
// and leave nothing behind when they stop; none and host containers see
// what they must.
func TestUpNetwork(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("containers need root")
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("no busybox")
	}
	m := upModes[1]
	m.require(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	dir := shortTempDir(t)
	os.Chmod(dir, 0o755) // the containers' root is an unprivileged uid outside
	www := filepath.Join(dir, "www")
	os.Mkdir(www, 0o755)
	os.WriteFile(filepath.Join(www, "index.html"), []byte("hello from netweb\n"), 0o644)
	conf := filepath.Join(dir, "nest.toml")
	sock := filepath.Join(dir, "nest.sock")
	bb := busybox
	// The names are fixed: their leases persist in /var/lib/nest/net.
	os.WriteFile(conf, []byte(fmt.Sprintf(`console = "none"
subnet  = "10.77.0.0/16"

[container.netweb]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "%[1]s httpd -p 80 -h /srv; until %[1]s grep -q netclient /etc/hosts; do sleep 0.1; done; echo HOSTS-UPDATED; exec sleep 1000"]
bind    = [{ source = %[2]q, target = "/srv" }]
network = "veth"
publish = ["8080:80"]

[container.netclient]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "cat /etc/hosts; %[1]s wget -q -O- http://netweb/; exec sleep 1000"]
network = "veth"
address = "10.77.0.9"
after   = ["netweb"]

[container.netnone]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "%[1]s ip -o link | %[1]s cut -d: -f2; exec sleep 1000"]

[container.nethost]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "%[1]s ip -o link | %[1]s cut -d: -f2; exec sleep 1000"]
network = "host"
after   = ["netweb"]
`, bb, www)), 0o644)

	cmd := m.command(ctx, "up", "-c", conf, "--socket", sock)
	cmd.Args = append([]string{cmd.Args[0], "--net"}, cmd.Args[1:]...)
	r, err := launch(t, m, cmd)
	if err != nil {
		t.Fatal(err)
	}
	nest := func(args ...string) string {
		out, errOut, _ := nestCLI(ctx, append([]string{"--socket", sock}, args...)...)
		return out + errOut
	}
	until := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if r.exited() || ctx.Err() != nil {
				t.Fatalf("waiting for %s: %s\nnest ls:\n%s\nlogs:\n%s\n%s", what, r.describe(), nest("ls"), nest("logs", "netweb"), nest("logs", "netclient"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	logHas := func(name, want string) func() bool {
		return func() bool { return strings.Contains(nest("logs", name), want) }
	}
	pid, err := r.nestPid(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// inNest runs busybox in nest up's network namespace.
	inNest := func(args ...string) string {
		out, _ := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(pid), "-n", bb}, args...)...).CombinedOutput()
		return string(out)
	}

	until("netclient to fetch from netweb by name", logHas("netclient", "hello from netweb"))
	until("netweb's hosts to name netclient", logHas("netweb", "HOSTS-UPDATED"))
	hosts := nest("logs", "netclient")
	if !strings.Contains(hosts, "10.77.0.9\tnetclient") || !strings.Contains(hosts, "\tnetweb\n") {
		t.Errorf("netclient's /etc/hosts:\n%s", hosts)
	}
	if ls := nest("ls"); !strings.Contains(ls, "10.77.0.9/24") || !strings.Contains(ls, "10.77.0.2/24") {
		t.Errorf("nest ls shows no addresses:\n%s", ls)
	}
	if st := nest("status", "netclient"); !strings.Contains(st, "address:  10.77.0.9/24") {
		t.Errorf("nest status netclient:\n%s", st)
	}
	// The published port, on nest up's loopback and on its bridge.
	for _, url := range []string{"http://127.0.0.1:8080/", "http://10.77.0.1:8080/"} {
		if out := inNest("wget", "-q", "-O-", url); !strings.Contains(out, "hello from netweb") {
			t.Errorf("wget %s in nest up's namespace: %s", url, out)
		}
	}
	until("netnone's links", logHas("netnone", " lo"))
	var links []string
	for _, l := range strings.Split(nest("logs", "netnone"), "\n") {
		if strings.HasPrefix(l, " ") { // the lines of ip | cut
			links = append(links, strings.TrimSpace(l))
		}
	}
	if strings.Join(links, " ") != "lo" {
		t.Errorf("a none container has links %q, want only lo", links)
	}
	until("nethost's links", logHas("nethost", "nest0"))

	// Stop: the pair and the rules go, the lease stays.
	if out := nest("stop", "netclient"); !strings.Contains(out, "stopped") {
		t.Fatalf("nest stop netclient: %s", out)
	}
	if links := inNest("ip", "-o", "link"); strings.Contains(links, "nv-netclient") {
		t.Errorf("after stop, links:\n%s", links)
	}
	if out := nest("start", "netclient"); !strings.Contains(out, "running") {
		t.Fatalf("nest start netclient: %s", out)
	}
	if st := nest("status", "netclient"); !strings.Contains(st, "address:  10.77.0.9/24") {
		t.Errorf("after a restart, nest status netclient:\n%s", st)
	}
	if st := nest("status", "netweb"); !strings.Contains(st, "address:  10.77.0.2/24") {
		t.Errorf("nest status netweb:\n%s", st)
	}
}
