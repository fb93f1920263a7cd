package pgcluster

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// dieWithParent makes the kernel send the server SIGQUIT (postgres'
// immediate shutdown) when the process that started it is gone, however it
// ended. Go applies it after switching credentials, so it survives running
// as user postgres. The kernel ties it to the starting OS thread; the Go
// runtime only retires threads of goroutines that exit while locked to them,
// which nothing here does.
func dieWithParent(attr *syscall.SysProcAttr) {
	attr.Pdeathsig = syscall.SIGQUIT
}

// exited reports whether the child has terminated, without reaping it
// (WNOWAIT), so that cmd.Wait can still collect it later. Polling avoids a
// long-lived Wait goroutine, which goleak would flag in every test.
func exited(pid int) bool {
	var info unix.Siginfo
	err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
	if errors.Is(err, unix.EINTR) {
		return false
	}
	return err != nil || info.Signo != 0
}
