package auth

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fetchLog is a kidRefresher fetch that records when each fetch started and
// whether two ever overlapped.
type fetchLog struct {
	mu       sync.Mutex
	started  []time.Time
	finished []time.Time // start times of the fetches that are over
	inFlight atomic.Int32
	overlap  atomic.Bool
}

func (l *fetchLog) fetch(context.Context) {
	if l.inFlight.Add(1) > 1 {
		l.overlap.Store(true)
	}
	l.mu.Lock()
	start := time.Now()
	l.started = append(l.started, start)
	l.mu.Unlock()
	time.Sleep(time.Millisecond) // a fetch takes a while; callers keep arriving
	l.mu.Lock()
	l.finished = append(l.finished, start)
	l.mu.Unlock()
	l.inFlight.Add(-1)
}

// finishedSince reports whether a fetch that started at or after t is over.
func (l *fetchLog) finishedSince(t time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.finished, func(s time.Time) bool { return !s.Before(t) })
}

// Callers arriving in waves over several intervals: each one returns only
// after a fetch that started after its call, fetches run one at a time and
// start at least minInterval apart, and the callers share them.
func TestKidRefresherSharesSpacedFetches(t *testing.T) {
	const minInterval = 20 * time.Millisecond
	log := &fetchLog{}
	r := &kidRefresher{minInterval: minInterval, fetch: log.fetch}

	var wg sync.WaitGroup
	calls := 0
	for wave := range 10 {
		for range 20 {
			calls++
			wg.Go(func() {
				called := time.Now()
				if err := r.await(context.Background()); err != nil {
					t.Error(err)
					return
				}
				if !log.finishedSince(called) {
					t.Error("await returned before a fetch that started after the call was over")
				}
			})
		}
		if wave%3 == 0 {
			time.Sleep(minInterval / 2) // some waves land while a fetch waits or runs
		}
	}
	wg.Wait()

	if log.overlap.Load() {
		t.Error("two fetches ran at once")
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for i := 1; i < len(log.started); i++ {
		// Logged inside the fetch, a little after the refresher's own start
		// time, which is what it spaces: allow that much.
		if gap := log.started[i].Sub(log.started[i-1]); gap < minInterval-time.Millisecond {
			t.Errorf("fetches %d and %d started %v apart, want at least %v", i-1, i, gap, minInterval)
		}
	}
	if len(log.started) >= calls/2 {
		t.Errorf("%d fetches for %d callers: not shared", len(log.started), calls)
	}
}

// A caller waiting for its turn gives up when the context ends, and the
// next caller leads a round of its own.
func TestKidRefresherContext(t *testing.T) {
	log := &fetchLog{}
	r := &kidRefresher{minInterval: time.Hour, fetch: log.fetch}
	if err := r.await(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- r.await(ctx) }()
	go func() { done <- r.await(ctx) }()
	cancel()
	for range 2 {
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("await after cancel = %v, want context.Canceled", err)
		}
	}
	if len(log.started) != 1 {
		t.Errorf("fetches = %d, want 1", len(log.started))
	}
	r.mu.Lock()
	next := r.next
	r.mu.Unlock()
	if next != nil {
		t.Error("an abandoned round is still gathering callers")
	}
}
