// Package pid1 holds the tests that run inside the VM, with nest booted as
// PID 1 of a real kernel. They are built with `go test -c -tags vmguest`
// by the host tests in package vmtest (pid1_test.go there), which pick the
// scenario: the config nest boots with, the disks, the kernel command line,
// and which of these tests run. Without the vmguest tag the package is
// empty, so `go test ./...` on the host builds nothing here.
package pid1
