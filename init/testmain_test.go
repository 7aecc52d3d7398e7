package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// nestBin is the nest binary built once for the whole package by TestMain;
// tests run it with os/exec.
var nestBin string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nest-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	bin, err := buildNest(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain: build nest:", err)
		return 1
	}
	nestBin = bin
	return m.Run()
}

// buildNest builds nest/init, static, into dir and returns the binary's path.
func buildNest(dir string) (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("go env GOMOD = %q, want the path of nest's go.mod", gomod)
	}
	bin := filepath.Join(dir, "nest")
	cmd := exec.Command(goBin, "build", "-o", bin, "nest/init")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%v\n%s", err, out)
	}
	return bin, nil
}
