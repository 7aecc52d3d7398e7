//go:build vmguest

package pid1

import (
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"nest/supervise"
)

// Scenario "root disk" (vmtest/pid1_test.go): nest switched from the
// initramfs to root=/dev/vda and booted the disk's config.

func TestRootDiskIsRoot(t *testing.T) {
	var st unix.Statfs_t
	if err := unix.Statfs("/", &st); err != nil || st.Type != unix.EXT4_SUPER_MAGIC {
		t.Fatalf("/ is file system 0x%x (%v), want ext4", st.Type, err)
	}
	// Nothing of the initramfs is left in this mount namespace's view.
	if _, err := os.Stat("/init"); !os.IsNotExist(err) {
		t.Errorf("/init of the initramfs is visible (%v)", err)
	}
}

// TestRootDiskUserContainer: alice sees the machine's root through an
// overlay; what she installs lands in her upper layer only.
func TestRootDiskUserContainer(t *testing.T) {
	deadline := time.Now().Add(60 * time.Second)
	for status(t, "alice").State != supervise.StateRunning {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile("/var/log/nest/alice.log")
			t.Fatalf("alice is not running after 60s; her log:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	up := "/var/lib/nest/alice/upper/usr/from-alice"
	until(t, 30*time.Second, up, func() bool { _, err := os.Stat(up); return err == nil })
	var st syscall.Stat_t
	if err := syscall.Stat(up, &st); err != nil || st.Uid < 100000 {
		t.Errorf("%s: uid %d, %v; want alice's mapped root", up, st.Uid, err)
	}
	if _, err := os.Stat("/usr/from-alice"); !os.IsNotExist(err) {
		t.Errorf("alice's install reached the machine's /usr (%v)", err)
	}
}
