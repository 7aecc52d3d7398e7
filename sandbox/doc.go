// Package sandbox owns what confines a container's processes apart from
// mounts: user-namespace id ranges, capabilities, no_new_privs, and cgroup
// v2 limits.
//
// What it owns:
//   - the pool of 65,536-id ranges that the root init hands its children and
//     `nest run` takes for one-shot sandboxes (Pool, persisted in
//     /var/lib/nest/idmap under a file lock);
//   - the capability set a container keeps (LimitCaps, DaemonCaps) and
//     no_new_privs (NoNewPrivs), both per-thread state set on a locked OS
//     thread just before syscall.Exec;
//   - cgroup v2 limits (Limits.Apply), with a clear error for every limit
//     whose controller is not there, never a silent skip.
//
// What it never does: it never mounts and never starts processes. The
// supervisor creates namespaces and cgroups and starts children; the child
// init calls into this package on its way to exec.
package sandbox
