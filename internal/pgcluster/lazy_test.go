package pgcluster

import (
	"errors"
	"os"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/pgtenant/pgtenant/internal/testutil"
)

// A lazy cluster starts on its first Get only, once however many tests
// ask for it at the same time, runs its setup once, is registered for
// RunMain to stop, and its stop removes it.
func TestLazy(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx := testutil.Context(t)
	setups := 0
	l := NewLazy(Options{}, func(c *Cluster) error {
		setups++
		return c.Exec(ctx, "postgres", "CREATE TABLE lazy_marker (x int)")
	})
	laziesMu.Lock()
	registered := slices.Contains(lazies, l)
	laziesMu.Unlock()
	if !registered || l.c != nil {
		t.Fatalf("registered %v, started %v: want registered and not started before Get", registered, l.c != nil)
	}
	var wg sync.WaitGroup
	got := make([]*Cluster, 4)
	for i := range got {
		wg.Go(func() {
			c, err := l.Get()
			if err != nil {
				t.Error(err)
			}
			got[i] = c
		})
	}
	wg.Wait()
	c := got[0]
	if c == nil || slices.ContainsFunc(got, func(o *Cluster) bool { return o != c }) || setups != 1 || c == Shared() {
		t.Fatalf("clusters %v, setups %d: want one cluster other than the shared one, set up once", got, setups)
	}
	if n := queryOne(ctx, t, c.SuperURL("postgres"), "SELECT count(*) FROM lazy_marker"); n != "0" {
		t.Fatalf("setup's table: %s", n)
	}
	if err := l.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stopped lazy cluster's directory: %v", err)
	}
}

// A setup that fails stops the cluster and fails every Get with its error.
func TestLazySetupFails(t *testing.T) {
	defer goleak.VerifyNone(t)
	var dir string
	boom := errors.New("boom")
	l := NewLazy(Options{}, func(c *Cluster) error { dir = c.Dir; return boom })
	for range 2 {
		if c, err := l.Get(); c != nil || !errors.Is(err, boom) {
			t.Fatalf("Get: %v, %v; want the setup's error", c, err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("directory of the failed lazy cluster: %v", err)
	}
}
