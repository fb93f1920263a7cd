//go:build unix

package cli

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// setOpenFilesLimit raises RLIMIT_NOFILE to wanted(the kernel's ceiling),
// the hard limit included when permitted, else the soft limit to the hard
// one. It returns the limit in force and the one wanted.
func setOpenFilesLimit(wanted func(nrOpen uint64) uint64) (got, want uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, err
	}
	want = wanted(nrOpen(lim.Max))
	if lim.Cur >= want {
		return lim.Cur, want, nil
	}
	if lim.Max < want {
		// Raising the hard limit needs privilege; without it, as far as it goes.
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}) == nil {
			return want, want, nil
		}
	}
	next := syscall.Rlimit{Cur: min(want, lim.Max), Max: lim.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		return lim.Cur, want, err
	}
	return next.Cur, want, nil
}

// nrOpen is the kernel's ceiling for one process's open files
// (fs.nr_open), or hard when it cannot be read.
func nrOpen(hard uint64) uint64 {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return hard
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return hard
	}
	return n
}
