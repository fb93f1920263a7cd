//go:build unix && !linux

package pgcluster

import "syscall"

// dieWithParent is a no-op: only Linux has a parent-death signal, so
// elsewhere a crashed test run can leave its server behind (the next Start
// still sweeps the directory once the server is gone).
func dieWithParent(*syscall.SysProcAttr) {}

// exited cannot peek at a child without reaping it here; a server that dies
// during startup is then noticed by the readiness timeout instead.
func exited(int) bool { return false }
