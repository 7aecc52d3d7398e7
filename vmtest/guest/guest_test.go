package guest

import "testing"

func TestExitStatuses(t *testing.T) {
	// QEMU's isa-debug-exit turns a written value v into status (v<<1)|1;
	// the host (nest/vmtest) relies on these exact numbers.
	if ExitPass != 65 || ExitFail != 67 {
		t.Errorf("ExitPass, ExitFail = %d, %d, want 65, 67", ExitPass, ExitFail)
	}
}

func TestInGuest(t *testing.T) {
	t.Setenv(EnvVar, "1")
	if !InGuest() {
		t.Errorf("InGuest() with %s=1 = false, want true", EnvVar)
	}
	t.Setenv(EnvVar, "")
	// The host's own kernel command line does not carry CmdlineFlag.
	if InGuest() {
		t.Errorf("InGuest() on the host = true, want false")
	}
}
