// Package testutil holds small helpers shared by the tests of several
// packages. It imports nothing from this module, so any package's tests can
// use it without an import cycle.
package testutil

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Context returns a context that times out after a minute and is cancelled
// when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// NoLeaks fails the test if it leaves goroutines behind that were not running
// when NoLeaks was called. Called first, its cleanup runs last.
func NoLeaks(t testing.TB) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

// SyncBuffer is a bytes.Buffer safe for a logger used from several goroutines.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
