package main

import (
	"reflect"
	"testing"
)

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		in   string
		want cmdline
	}{
		{"console=ttyS0 quiet", cmdline{config: "/etc/nest/nest.toml"}},
		{"nest.config=/etc/other.toml nest.debug", cmdline{config: "/etc/other.toml", debug: true}},
		{"nest.shell\n", cmdline{config: "/etc/nest/nest.toml", shell: true}},
		{"root=/dev/vda rootfstype=ext4 rootflags=noatime ro", cmdline{config: "/etc/nest/nest.toml", root: "/dev/vda", rootType: "ext4", rootFlags: "noatime", rootRO: true}},
		{"root=/dev/vdb ro rw", cmdline{config: "/etc/nest/nest.toml", root: "/dev/vdb"}},
		{`nest.config="/a b.toml"`, cmdline{config: "/a b.toml"}},
		{"nest.bogus=1 nest.config=relative", cmdline{config: "/etc/nest/nest.toml", warnings: []string{
			`unknown word "nest.bogus=1" ignored (nest knows nest.config=, nest.debug, nest.shell)`,
			`"nest.config=relative": want nest.config=/absolute/path; using /etc/nest/nest.toml`,
		}}},
	}
	for _, tt := range tests {
		if got := parseCmdline(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("parseCmdline(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`a  b="c d" "e"f` + "\n")
	want := []string{"a", "b=c d", "ef"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("splitCmdline = %q, want %q", got, want)
	}
}

func TestPid1Signals(t *testing.T) {
	for _, s := range pid1Signals() {
		switch s.String() {
		case "killed", "stopped (signal)", "urgent I/O condition":
			t.Errorf("pid1Signals includes %v", s)
		}
	}
	if n := len(pid1Signals()); n != 64-5 {
		t.Errorf("len(pid1Signals()) = %d, want 59 (64 less KILL, STOP, URG, 32, 33)", n)
	}
}
