package auth

import (
	"context"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
)

// fetchKID is a kid no key set is expected to hold: reading it from
// keyfunc's storage, whose unknown-kid limiter never holds back, makes it
// fetch the set. (jwkset offers no other way to ask for a fetch.)
const fetchKID = "\x00pgtenant: fetch the key set"

// jwksSet is one JWKS URL: the keys as last fetched (keyfunc fetches them
// again every refresh_interval) and the fetch on an unknown kid.
type jwksSet struct {
	store   jwkset.Storage // keyfunc's: a KeyRead that misses fetches; KeyReadAll never does
	refresh *kidRefresher
}

func newJWKSSet(store jwkset.Storage, minInterval time.Duration) *jwksSet {
	j := &jwksSet{store: store}
	j.refresh = &kidRefresher{minInterval: minInterval, fetch: func(ctx context.Context) {
		// Not found, always; a failed fetch is logged by the storage's
		// error handler, and the keys stay as they were.
		_, _ = store.KeyRead(ctx, fetchKID)
	}}
	return j
}

// withKID returns the keys the set holds under kid, without fetching.
func (j *jwksSet) withKID(ctx context.Context, kid string) []jwkset.JWK {
	all, err := j.store.KeyReadAll(ctx)
	if err != nil {
		return nil
	}
	var found []jwkset.JWK
	for _, k := range all {
		if k.Marshal().KID == kid {
			found = append(found, k)
		}
	}
	return found
}

// kidRefresher fetches a key set again when tokens name a kid it lacks.
//
// Every caller waits for a fetch that starts after it called, so a key
// published before the call is found. Callers that arrive before that fetch
// starts share it, and fetches start at least minInterval apart, one at a
// time: a flood of made-up kids costs one fetch per minInterval, and delays
// a token signed with a newly published key by at most about minInterval
// (plus the fetches' own time), never more.
type kidRefresher struct {
	minInterval time.Duration
	fetch       func(ctx context.Context)

	mu   sync.Mutex
	next *fetchRound // gathering callers, not started; nil when there is none
	last *fetchRound // the round that started last
}

// fetchRound is one fetch and the callers waiting for it.
type fetchRound struct {
	started time.Time     // set, under mu, when the fetch starts
	err     error         // why the round was abandoned; set before done is closed
	done    chan struct{} // closed when the fetch is over (or abandoned)
}

// await returns once a fetch that started after the call is over, or with
// ctx's error. The first caller of a round leads it: it waits for the
// previous fetch to end and for minInterval since it started, then fetches.
func (r *kidRefresher) await(ctx context.Context) error {
	r.mu.Lock()
	if round := r.next; round != nil {
		r.mu.Unlock()
		if err := waitDone(ctx, round.done); err != nil {
			return err
		}
		return round.err
	}
	round := &fetchRound{done: make(chan struct{})}
	r.next = round
	prev := r.last
	r.mu.Unlock()
	defer close(round.done)

	if prev != nil {
		err := waitDone(ctx, prev.done)
		if err == nil {
			err = sleepCtx(ctx, time.Until(prev.started.Add(r.minInterval)))
		}
		if err != nil {
			r.mu.Lock()
			r.next = nil // the next caller leads a round of its own
			r.mu.Unlock()
			round.err = err
			return err
		}
	}
	r.mu.Lock()
	r.next = nil // later callers must wait for a later fetch
	round.started = time.Now()
	r.last = round
	r.mu.Unlock()
	r.fetch(ctx)
	return nil
}

func waitDone(ctx context.Context, done <-chan struct{}) error {
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
