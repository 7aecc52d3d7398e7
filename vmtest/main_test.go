package vmtest

import (
	"os"
	"testing"
)

// TestMain removes what the PID 1 scenarios built (pid1_test.go).
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}
