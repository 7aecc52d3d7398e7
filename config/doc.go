// Package config turns nest's TOML configuration (/etc/nest/nest.toml) into a
// validated spec: a *Config that the rest of nest can use without checking it
// again.
//
// What it owns:
//   - the schema: which keys exist, their types, their defaults;
//   - strictness: every key nest does not know is an error, as is every value
//     of the wrong type or outside its allowed set;
//   - positions: every error names its place as FILE:LINE:COLUMN (columns
//     count bytes, as the Go compiler does) and says what is wrong and what
//     is allowed, e.g.
//     /etc/nest/nest.toml:7:11: service "web": restart = "sometimes": want "always", "on-failure" or "no"
//   - the built-in demo config (Default) used when no file exists.
//
// What it never does: no I/O beyond reading the file that Load is given and
// the files of the directory that LoadDir is given (an init's
// containers.d, DirFor), and writing or removing one file there
// (WriteFile, RemoveFile: atomic and durable, for `nest create` and `nest
// rm`), and no other side effects. It does not look at the running
// system (whether a program in exec exists, whether a module can be
// loaded, whether a mount source is there): the packages that act on the
// spec report those. The one exception is Container.CheckPaths, which the
// init that starts a container calls: a child's paths (rootfs, bind
// sources) are in that init's view, so only it can check them.
//
// How: the document is decoded by github.com/pelletier/go-toml/v2 (syntax,
// duplicate keys, table redefinitions, all with positions), then walked
// again with its position-preserving parser (go-toml/v2/unstable) to build an
// index from key path to line and column. The decoded tree is then read into
// the Config types by hand, so that type errors and unknown keys are reported
// in nest's own words, and Validate checks the values, looking up each
// problem's place in the index.
package config
