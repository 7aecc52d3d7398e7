package vmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleRoot returns the directory holding nest's go.mod, found by walking
// up from the working directory (go test runs in the package directory).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("module root: %w", err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("module root: no go.mod in %s or its parents", dir)
		}
	}
}

// BuildNest builds nest (package nest/init) as a static binary at
// outDir/nest and returns its path.
func BuildNest(ctx context.Context, outDir string) (string, error) {
	out := filepath.Join(outDir, "nest")
	if err := BuildBinary(ctx, "nest/init", out); err != nil {
		return "", err
	}
	return out, nil
}

// BuildBinary builds the main package pkg as a static, stripped binary at
// out. pkg is an import path ("nest/init") or a path relative to the module
// root ("./vmtest/testdata/smokeinit"; testdata is not matched by import
// paths but builds by directory).
func BuildBinary(ctx context.Context, pkg, out string, tags ...string) error {
	args := []string{"build", "-trimpath", "-ldflags=-s -w"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "-o", out, pkg)
	return goCmd(ctx, args...)
}

// BuildTestBinary compiles the tests of pkg into a static binary at out
// (go test -c) to be run inside the guest.
func BuildTestBinary(ctx context.Context, pkg string, tags []string, out string) error {
	args := []string{"test", "-c", "-trimpath", "-ldflags=-s -w"}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "-o", out, pkg)
	return goCmd(ctx, args...)
}

// goCmd runs the go tool in the module root. CGO_ENABLED=0 because the
// initramfs has no libc; GOOS/GOARCH are pinned because the guest is
// always linux/amd64 whatever the caller's environment says.
func goCmd(ctx context.Context, args ...string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	// go test puts its own GOROOT/bin first in PATH, so this is the go
	// that is running the tests.
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(ctxErr, context.DeadlineExceeded) {
			err = fmt.Errorf("%w (%w)", err, ctxErr)
		}
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}
