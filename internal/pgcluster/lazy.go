package pgcluster

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"
)

// Lazy is one more cluster for a test package, besides the shared one:
// started by the first test that asks for it (a start costs seconds, so
// runs that do not need it do not pay), then shared by the package's
// tests, and stopped by RunMain when they end. Declare it as a
// package-level variable (NewLazy).
type Lazy struct {
	opts  Options
	setup func(*Cluster) error

	once sync.Once
	c    *Cluster
	err  error
}

var (
	laziesMu sync.Mutex
	lazies   []*Lazy // stopped by runMain after the tests
)

// NewLazy declares a cluster started with opts and set up by setup (which
// may be nil) on its first Get.
func NewLazy(opts Options, setup func(*Cluster) error) *Lazy {
	l := &Lazy{opts: opts, setup: setup}
	laziesMu.Lock()
	lazies = append(lazies, l)
	laziesMu.Unlock()
	return l
}

// Get returns the cluster, starting it and running its setup on the first
// call. A start or setup that failed fails every call with the same error:
// it is not retried.
func (l *Lazy) Get() (*Cluster, error) {
	l.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		c, err := Start(ctx, l.opts)
		if err != nil {
			l.err = fmt.Errorf("pgcluster: start a lazy cluster: %w", err)
			return
		}
		if l.setup != nil {
			if err := l.setup(c); err != nil {
				_ = c.Stop()
				l.err = fmt.Errorf("pgcluster: set up a lazy cluster: %w", err)
				return
			}
		}
		l.c = c
	})
	return l.c, l.err
}

// stop stops the cluster if it was started.
func (l *Lazy) stop() error {
	if l.c == nil {
		return nil
	}
	return l.c.Stop()
}

// stopLazies stops the package's lazy clusters that were started.
func stopLazies() {
	laziesMu.Lock()
	defer laziesMu.Unlock()
	for _, l := range lazies {
		if err := l.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "pgcluster: stop a lazy cluster:", err)
		}
	}
}
