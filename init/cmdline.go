package main

import (
	"fmt"
	"os"
	"strings"

	"nest/config"
)

// cmdline is what nest reads from the kernel command line. The kernel does
// not pass words with a dot (nest.*) to init, so nest reads /proc/cmdline.
type cmdline struct {
	config   string   // nest.config=PATH
	debug    bool     // nest.debug
	shell    bool     // nest.shell
	warnings []string // unknown nest.* words

	// The root file system, as every initramfs reads it: root=/dev/X,
	// rootfstype=, rootflags=, ro/rw. Empty root: stay on the initramfs.
	root, rootType, rootFlags string
	rootRO                    bool
}

func readCmdline() cmdline {
	b, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		c := parseCmdline("")
		c.warnings = append(c.warnings, fmt.Sprintf("cannot read it: %v", err))
		return c
	}
	return parseCmdline(string(b))
}

// parseCmdline reads the nest.* words. Unknown ones are warnings, never
// failures: a typo on the command line must not keep a machine from booting.
func parseCmdline(s string) cmdline {
	c := cmdline{config: config.DefaultPath}
	for _, w := range splitCmdline(s) {
		key, val, hasVal := strings.Cut(w, "=")
		switch {
		case key == "root" && hasVal:
			c.root = val
		case key == "rootfstype" && hasVal:
			c.rootType = val
		case key == "rootflags" && hasVal:
			c.rootFlags = val
		case w == "ro":
			c.rootRO = true
		case w == "rw":
			c.rootRO = false
		}
		if !strings.HasPrefix(key, "nest.") {
			continue
		}
		switch key {
		case "nest.config":
			if !hasVal || !strings.HasPrefix(val, "/") {
				c.warnings = append(c.warnings, fmt.Sprintf("%q: want nest.config=/absolute/path; using %s", w, c.config))
				continue
			}
			c.config = val
		case "nest.debug":
			c.debug = true
		case "nest.shell":
			c.shell = true
		default:
			c.warnings = append(c.warnings, fmt.Sprintf("unknown word %q ignored (nest knows nest.config=, nest.debug, nest.shell)", w))
		}
	}
	return c
}

// splitCmdline splits like the kernel: on spaces, with double quotes
// grouping (`a="b c"` is one word `a=b c`).
func splitCmdline(s string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}
