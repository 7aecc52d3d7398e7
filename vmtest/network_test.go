package vmtest

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// netModules are the modules nest loads for veth networks (init/network.go).
var netModules = []string{"nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"}

const networkConfig = `# The network scenario of vmtest/network_test.go.
modules = ["virtio_pci", "virtio_blk", "ext4"]
console = "none"

# The user containers' state on a disk of its own: mid/dev's overlay has
# mid's upper as a lower, which the overlay refuses inside its other
# lower (the initramfs) on one file system.
[[mount]]
source = "/dev/vda"
target = "/var/lib/nest"
type   = "ext4"

[[service]]
name = "holder"                      # holds a port of the root
exec = ["/bin/busybox", "httpd", "-f", "-p", "9090"]

[container.web]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "mkdir /tmp/www; echo hello from web > /tmp/www/index.html; httpd -p 80 -h /tmp/www; until grep -q client /etc/hosts; do sleep 0.1; done; echo hosts name client; exec sleep 100000"]
network = "veth"
publish = ["8080:80"]

[container.client]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "until wget -q -O- http://web/; do sleep 0.2; done; cat /etc/hosts /etc/resolv.conf; exec sleep 100000"]
network = "veth"
after   = ["web"]

[container.pinned]
kind    = "daemon"
exec    = ["/bin/sleep", "100000"]
network = "veth"
address = "10.88.0.99"
nat     = false

[container.natted]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "until wget -q -O- http://192.0.2.2:7000/; do sleep 0.3; done; exec sleep 100000"]
network = "veth"

# Two levels of NAT: deep, on mid's own bridge, reaches the outside
# through mid's masquerade, then the root's. (mid shares the root's ids:
# the initramfs cannot be idmapped for a user container of its own.)
[container.mid]
kind          = "user"
network       = "veth"
private_users = false

[container.mid.container.deep]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "until wget -q -O- http://192.0.2.2:7000/deep; do sleep 0.3; done; exec sleep 100000"]
network = "veth"

# Three levels: mid/dev's /24 comes from the root's pool through mid's
# link; leaf, on dev's bridge, goes out through dev's, mid's and the
# root's NAT.
[container.mid.container.dev]
kind          = "user"
network       = "veth"
private_users = false

[container.mid.container.dev.container.leaf]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "until wget -q -O- http://192.0.2.2:7000/leaf; do sleep 0.3; done; exec sleep 100000"]
network = "veth"

[container.isolated]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "echo LINKS $(ip -o link | cut -d: -f2); exec sleep 100000"]

[container.shared]
kind    = "daemon"
exec    = ["/bin/sh", "-c", "echo LINKS $(ip -o link | cut -d: -f2); exec sleep 100000"]
network = "host"
after   = ["web"]

[container.taken]
kind        = "daemon"
exec        = ["/bin/sleep", "100000"]
network     = "veth"
publish     = ["9090:80"]
after       = ["holder"]
start_limit = 1

[container.cycler]
kind    = "daemon"
exec    = ["/bin/sleep", "100000"]
network = "veth"
publish = ["7070:80"]

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestNetwork"]
restart = "no"
`

// networkFiles are the root's files of the network scenario.
var networkFiles = map[string]string{
	"/etc/hosts":       "127.0.0.1\tlocalhost\n",
	"/etc/resolv.conf": "nameserver 192.0.2.53\nnameserver 127.0.0.53\n",
	"/etc/hostname":    "nestvm\n",
}

// TestPID1Network boots veth, none and host containers and checks them
// from the root and from inside (vmtest/pid1/network_test.go): names and
// hosts updates, published ports on loopback and the bridge, outbound
// NAT through one, two and three levels, a /24 for each level from the
// root's pool kept over a restart, leases, a taken port, bad network
// config with its line, a subnet that a route overlaps, 100 start/stop
// cycles that leave nothing.
func TestPID1Network(t *testing.T) {
	t.Parallel()
	state := filepath.Join(t.TempDir(), "state.img")
	if err := NewExt4Image(state, 64); err != nil {
		t.Fatal(err)
	}
	vm := &VM{
		Kernel:  TestKernel(t),
		Disks:   []string{state},
		Initrd:  scenario{config: networkConfig, modules: Ext4Modules, files: networkFiles}.image(t),
		Memory:  1024,
		Timeout: 5 * time.Minute,
	}
	r := RunTest(t, vm)
	mustContain(t, r, "nest: web: ready", "nest: client: ready")

	// The same system booted again on the same state disk: only
	// TestNetworkReboot runs, and finds the first boot's addresses. A
	// newcomer starts before web and takes the first free address: were
	// the leases lost, it would take one of theirs.
	again := strings.Replace(networkConfig, `"^TestNetwork"`, `"^TestNetworkReboot$"`, 1)
	again = strings.Replace(again, `publish = ["8080:80"]`, `publish = ["8080:80"]`+"\nafter   = [\"newcomer\"]", 1)
	if strings.Count(again, "newcomer") != 1 || strings.Contains(again, `"^TestNetwork"`) {
		t.Fatal("the network config changed: the second boot's edits do not apply")
	}
	again += "\n[container.newcomer]\nkind    = \"daemon\"\nexec    = [\"/bin/sleep\", \"100000\"]\nnetwork = \"veth\"\n"
	vm.Initrd = scenario{config: again, modules: Ext4Modules, files: networkFiles}.image(t)
	r = RunTest(t, vm)
	if !strings.Contains(r.Console+r.Output, "second boot: the same addresses") {
		t.Errorf("the second boot did not compare the addresses\n%s", r.Explain())
	}
}
