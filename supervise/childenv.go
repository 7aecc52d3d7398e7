package supervise

// childInitEnv is the environment of a child container's init. Its
// services get an environment of their own (Unit.spawn), so nothing of it
// reaches the container's workload.
//
// GODEBUG=disablethp=1 keeps transparent huge pages off the init's Go
// heap, as the root's PID 1 does for itself (docs/decisions.md): with THP
// "always" (Debian's kernels) the first touch of the heap arena faults in
// a 2 MB page, and an idle child init held 4.4 MB of private memory, 4 MB
// of it that huge page; 10 siblings measured in the VM.
var childInitEnv = []string{"PATH=" + DefaultPath, "GODEBUG=disablethp=1"}
