package sandbox

import "testing"

func TestParseIdentity(t *testing.T) {
	tests := []struct {
		in   string
		size uint32
		ok   bool
	}{
		{"         0     100000      65536\n", 65536, true},
		{"0 0 4294967295\n", RangeSize, true},
		{"0 0 1000", 1000, true},
		{"1 100000 65536\n", 0, false},
		{"0 100000 65536\n65536 200000 10\n", 0, false},
		{"0 100000 0\n", 0, false},
		{"", 0, false},
	}
	for _, tt := range tests {
		r, err := parseIdentity("x", tt.in)
		if (err == nil) != tt.ok || (tt.ok && (r.Start != 0 || r.Size != tt.size)) {
			t.Errorf("parseIdentity(%q) = %+v, %v", tt.in, r, err)
		}
	}
}
