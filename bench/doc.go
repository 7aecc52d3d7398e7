// Package bench holds side-by-side benchmarks of nest against other tools;
// it has no code outside its tests. `make bench` installs what they need
// (bubblewrap, crun, runc, busybox-static) and runs them as root:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
//
// BenchmarkRunTrue times `nest run -- /bin/true` against the floor
// (`unshare -Umpinuf --mount-proc true`), bubblewrap, crun and runc, runs
// interleaved round-robin (each round shuffled), and prints a markdown
// table of medians, 90th percentiles and ratios to the floor for the
// README. NEST_BENCH_N sets the runs per command (200 by default).
package bench
