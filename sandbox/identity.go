package sandbox

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// IdentityRange is the range an init below the root's children gives each
// of its own children: the ids of its user namespace, mapped one to one.
// On Linux 6.1 only the initial user namespace's root can make the
// idmapped mounts that writable host-owned layers need, so every level
// below keeps its parent's ids (docs/decisions.md, "User containers and
// nesting"). It is read from /proc/self/uid_map, which must map one block
// that starts at 0.
func IdentityRange(owner string) (Range, error) {
	b, err := os.ReadFile("/proc/self/uid_map")
	if err != nil {
		return Range{}, fmt.Errorf("identity ids: %w", err)
	}
	return parseIdentity(owner, string(b))
}

func parseIdentity(owner, uidMap string) (Range, error) {
	lines := strings.Split(strings.TrimSpace(uidMap), "\n")
	if len(lines) != 1 {
		return Range{}, fmt.Errorf("identity ids: uid_map has %d lines, want one block", len(lines))
	}
	f := strings.Fields(lines[0])
	if len(f) != 3 || f[0] != "0" {
		return Range{}, fmt.Errorf("identity ids: uid_map line %q does not start at 0", lines[0])
	}
	n, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil || n == 0 {
		return Range{}, fmt.Errorf("identity ids: uid_map line %q: bad count", lines[0])
	}
	return Range{Owner: owner, Start: 0, Size: uint32(min(n, RangeSize))}, nil
}
