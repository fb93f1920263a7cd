package pgcluster

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

var shared *Cluster

// Shared returns the cluster started by RunMain. It panics when called from
// a package whose TestMain does not use RunMain, since a nil cluster would
// only fail later and less clearly.
func Shared() *Cluster {
	if shared == nil {
		panic("pgcluster.Shared: no shared cluster; call pgcluster.RunMain from TestMain")
	}
	return shared
}

// RunMain is meant for TestMain: it starts one cluster for the package, runs
// setup (e.g. demo.Setup) against it, runs the tests, stops the cluster and
// exits with the tests' code. It stops the package's Lazy clusters too.
//
// Missing PostgreSQL binaries make it fail (exit 1 with an install hint), never
// skip: a silently skipped suite looks green.
//
// Cleanup when the test binary dies abnormally (a panicking test, -timeout,
// SIGINT/SIGTERM/SIGKILL) is done by the kernel, not by a signal handler: the
// server is started with a parent-death signal and shuts down as soon as
// this process is gone, and the next Start sweeps the leftover directory.
// A signal-handling goroutine would do no better and would show up in every
// goleak check of the packages using the shared cluster.
func RunMain(m *testing.M, opts Options, setup func(*Cluster) error) {
	os.Exit(runMain(m, opts, setup))
}

func runMain(m *testing.M, opts Options, setup func(*Cluster) error) int {
	if err := MissingBinariesError(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start PostgreSQL:", err)
		return 1
	}
	shared = c
	defer func() {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgcluster: stop:", err)
		}
		shared = nil
	}()
	if setup != nil {
		if err := setup(c); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: cluster setup:", err)
			if log, lerr := c.LogContents(); lerr == nil {
				fmt.Fprintf(os.Stderr, "server log tail:\n%s\n", tail(log, 40))
			}
			return 1
		}
	}
	// Stopped before the shared cluster, each after the tests that used it.
	defer stopLazies()
	return m.Run()
}
