package vmtest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"nest/escalate"
)

// escalateConfig is the escalate scenario: one daemon container per
// policy, each running the guest helper "escalate", which tries nest
// escalate from inside (vmtest/pid1/escalate_test.go); the root's tests
// check what it reports and the root's audit log.
const escalateConfig = `# The escalate scenario of vmtest/escalate_test.go.
console = "login"
hostname = "nestvm"
modules = ["virtio_pci", "virtio_blk", "ext4"]

# For the user container mid: its base and its state (as in the nesting
# scenario).
[[mount]]
source  = "/dev/vda"
target  = "/base"
type    = "ext4"
options = ["ro"]

[[mount]]
source = "/dev/vdb"
target = "/var/lib/nest"
type   = "ext4"

# Two levels: leaf escalates into mid, and through mid into the root.
[container.mid]
kind          = "user"
rootfs        = "/base"
escalate      = "allow"
password_hash = %[2]q    # console = "login" lets its user in

[container.mid.container.leaf]
kind     = "daemon"
exec     = ["/tests/pid1.test"]
env      = { NEST_GUEST_HELPER = "escalate" }
escalate = "allow"
restart  = "no"

[container.allow]
kind     = "daemon"
exec     = ["/tests/pid1.test"]
env      = { NEST_GUEST_HELPER = "escalate" }
escalate = "allow"
restart  = "no"

[container.deny]
kind    = "daemon"
exec    = ["/tests/pid1.test"]
env     = { NEST_GUEST_HELPER = "escalate" }
restart = "no"

[container.keyed]
kind     = "daemon"
exec     = ["/tests/pid1.test"]
env      = { NEST_GUEST_HELPER = "escalate" }
escalate = "key"
keys     = [%[1]q]
restart  = "no"

[container.pw]
kind          = "daemon"
exec          = ["/tests/pid1.test"]
env           = { NEST_GUEST_HELPER = "escalate" }
escalate      = "password"
password_hash = %[2]q
restart       = "no"

[container.confirm]
kind     = "daemon"
exec     = ["/tests/pid1.test"]
env      = { NEST_GUEST_HELPER = "escalate" }
escalate = "confirm"
restart  = "no"

[[service]]
name    = "vmtest"
exec    = ["/tests/pid1.test", "-test.v", "-test.run", "^TestEscalate"]
restart = "no"
`

// testKeyPair makes an ed25519 key: its private key file (OpenSSH format)
// and its authorized_keys line.
func testKeyPair(t *testing.T, comment string) (private, public string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(block)), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " " + comment
}

// TestPID1Escalate: nest escalate from child containers into the root,
// one container per policy (allow: id -u, the pid namespace, exit codes,
// an interactive session on a pty with a resize and ^C; deny, and a flood
// of broken packets the broker survives; key by file and by agent, and a
// wrong key; password right, wrong, locked out; confirm by nest approve
// and nest deny in the root), with every attempt in the audit log and on
// the console; and two levels: a daemon container inside a user container
// escalates into it, and through it into the root, never directly; and
// the console's login prompt (console = "login") into the user container.
func TestPID1Escalate(t *testing.T) {
	t.Parallel()
	good, goodPub := testKeyPair(t, "good@test")
	other, _ := testKeyPair(t, "other@test")
	hash, err := escalate.HashPassword("nest-test-password")
	if err != nil {
		t.Fatal(err)
	}
	baseDisk, stateDisk := userDisks(t)
	vm := &VM{
		Kernel: TestKernel(t),
		Initrd: scenario{
			config:  fmt.Sprintf(escalateConfig, goodPub, hash),
			modules: Ext4Modules,
			files:   map[string]string{"/etc/nest-test/good": good, "/etc/nest-test/other": other},
		}.image(t),
		Disks:   []string{baseDisk, stateDisk},
		Memory:  1024,
		Timeout: 5 * time.Minute,
	}
	r := RunTest(t, vm)
	mustContain(t, r,
		"nestvm login: ", // the console's prompt
		"nest: escalate: child=deny ",
		"nest: escalate: child=allow ",
		"result=allowed",
		"nest approve 1, or nest deny 1",
	)
	if strings.Contains(r.Console, "escalation broker:") {
		t.Errorf("the broker ended or failed during the run:\n%s", r.Explain())
	}
}
