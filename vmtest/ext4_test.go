package vmtest

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNewExt4Image(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.MkdirAll(filepath.Join(src, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "etc", "hello"), []byte("hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{"", src} {
		img := filepath.Join(dir, "disk.img")
		if err := NewExt4ImageFrom(img, 16, from); err != nil {
			t.Fatalf("NewExt4ImageFrom(%s, 16, %q) = %v", img, from, err)
		}
		fi, err := os.Stat(img)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != 16<<20 {
			t.Errorf("NewExt4ImageFrom(%q) size = %d, want %d", from, fi.Size(), 16<<20)
		}
		clean, err := Ext4Clean(img)
		if err != nil || !clean {
			t.Errorf("Ext4Clean(fresh image from %q) = %v, %v, want true, nil", from, clean, err)
		}
	}
	if err := NewExt4Image(filepath.Join(dir, "zero.img"), 0); err == nil {
		t.Errorf("NewExt4Image(size 0) = nil, want error")
	}
	if _, err := Ext4Clean(filepath.Join(dir, "missing.img")); err == nil {
		t.Errorf("Ext4Clean(missing) = nil error, want error")
	}
}

func TestParseExt4Clean(t *testing.T) {
	tests := []struct {
		dump    string
		want    bool
		wantErr bool
	}{
		{"Filesystem state:         clean\nFilesystem features:      has_journal ext_attr\n", true, false},
		{"Filesystem state:         not clean\n", false, false},
		{"Filesystem state:         clean with errors\n", false, false},
		{"Filesystem features:      has_journal needs_recovery extent\nFilesystem state:         clean\n", false, false},
		{"Filesystem volume name:   <none>\n", false, true},
	}
	for _, tt := range tests {
		got, err := parseExt4Clean([]byte(tt.dump))
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("parseExt4Clean(%q) = %v, %v, want %v, error %v", tt.dump, got, err, tt.want, tt.wantErr)
		}
	}
}
