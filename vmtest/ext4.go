package vmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Ext4Modules are the modules a guest needs to mount an ext4 image on a
// virtio disk. ext4's soft dependency brings crc32c_generic, without which
// metadata_csum (a mkfs.ext4 default) makes the mount fail.
var Ext4Modules = []string{"virtio_pci", "virtio_blk", "ext4"}

// NewExt4Image creates (or overwrites) path as a sizeMB raw disk holding an
// empty ext4 filesystem with mkfs.ext4's default features.
func NewExt4Image(path string, sizeMB int) error {
	return NewExt4ImageFrom(path, sizeMB, "")
}

// NewExt4ImageFrom is NewExt4Image with the filesystem populated from the
// host directory srcDir (mkfs.ext4 -d); an empty srcDir means no contents.
func NewExt4ImageFrom(path string, sizeMB int, srcDir string) error {
	if sizeMB <= 0 {
		return fmt.Errorf("ext4 image %s: size %d MB", path, sizeMB)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("ext4 image: %w", err)
	}
	// Sparse: only the metadata mkfs writes takes space.
	err = f.Truncate(int64(sizeMB) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("ext4 image %s: %w", path, err)
	}
	args := []string{"-F", "-q"}
	if srcDir != "" {
		args = append(args, "-d", srcDir)
	}
	args = append(args, path)
	if out, err := exec.Command("mkfs.ext4", args...).CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("mkfs.ext4 %s: %w: %s (install e2fsprogs: run make deps)", path, err, bytes.TrimSpace(out))
	}
	return nil
}

// Ext4Clean reports whether the ext4 filesystem in path was cleanly
// unmounted: dumpe2fs -h says "Filesystem state: clean" and the journal
// does not need recovery. A guest killed with the filesystem mounted
// leaves it not clean.
func Ext4Clean(path string) (bool, error) {
	out, err := exec.Command("dumpe2fs", "-h", path).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = ": " + string(bytes.TrimSpace(ee.Stderr))
		}
		return false, fmt.Errorf("dumpe2fs -h %s: %w%s", path, err, msg)
	}
	return parseExt4Clean(out)
}

func parseExt4Clean(dump []byte) (bool, error) {
	var state string
	var haveState, recovery bool
	sc := bufio.NewScanner(bytes.NewReader(dump))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch strings.TrimSpace(key) {
		case "Filesystem state":
			state, haveState = val, true
		case "Filesystem features":
			for _, f := range strings.Fields(val) {
				if f == "needs_recovery" {
					recovery = true
				}
			}
		}
	}
	if !haveState {
		return false, fmt.Errorf("dumpe2fs output has no Filesystem state line")
	}
	return state == "clean" && !recovery, nil
}

// NewExt4ImageOf writes img's tree into a new ext4 file system image at
// path of sizeMB: a guest's disk root (root=/dev/vda), or a base for user
// containers.
func NewExt4ImageOf(path string, sizeMB int, img *Image) error {
	tree, err := os.MkdirTemp(filepath.Dir(path), ".tree-")
	if err != nil {
		return fmt.Errorf("ext4 image %s: %w", path, err)
	}
	defer os.RemoveAll(tree)
	if err := img.WriteDir(tree); err != nil {
		return fmt.Errorf("ext4 image %s: %w", path, err)
	}
	return NewExt4ImageFrom(path, sizeMB, tree)
}
