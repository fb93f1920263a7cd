package proxy

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
)

// Per-tenant limits (config tenants / tenant_defaults). Three kinds:
//   - PostgreSQL's own timeouts (statement_timeout, lock_timeout,
//     idle_in_transaction_session_timeout), asserted with the context
//     (limitSettings) and protected by the guard and the startup policy;
//   - a rate of transaction starts per tenant (tokenBucket, waitForToken);
//   - a transaction duration, enforced here (txWatch).

const codeTransactionTimeout = "25P04" // PostgreSQL 17's transaction_timeout

// limitSettings are the limit settings a context asserts: the tenant's
// configured limits, replaced by the identity's own (JWT claims the
// operator allowed), in config.LimitSettings order.
func limitSettings(p config.TenantPolicy, own []auth.Setting) []setting {
	var out []setting
	for _, nv := range p.Settings() {
		out = append(out, setting{name: nv[0], value: nv[1]})
	}
	for _, st := range own {
		i := slices.IndexFunc(out, func(s setting) bool { return s.name == st.Name })
		switch {
		case i >= 0 && st.Value == "0":
			out = slices.Delete(out, i, i+1) // no limit: the role's default
		case i >= 0:
			out[i].value = st.Value
		case st.Value != "0":
			out = append(out, setting{name: st.Name, value: st.Value})
		}
	}
	slices.SortStableFunc(out, func(a, b setting) int {
		return slices.Index(config.LimitSettings, a.name) - slices.Index(config.LimitSettings, b.name)
	})
	return out
}

// rateLimiters holds a token bucket per tenant, shared by all its sessions
// and kept across reloads.
type rateLimiters struct {
	mu      sync.Mutex
	buckets map[string]*tokenBucket
}

func newRateLimiters(old *runtime) *rateLimiters {
	if old != nil && old.limiters != nil {
		return old.limiters
	}
	return &rateLimiters{buckets: map[string]*tokenBucket{}}
}

// bucket returns tenant's bucket.
func (l *rateLimiters) bucket(tenant string) *tokenBucket {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[tenant]
	if b == nil {
		b = &tokenBucket{}
		l.buckets[tenant] = b
	}
	return b
}

// tokenBucket is a token bucket kept as the time its next token is due
// (GCRA). Callers reserve tokens in the order they ask, so waiting is
// first come, first served, and a reservation never takes a token from
// one that asked earlier.
type tokenBucket struct {
	mu  sync.Mutex
	due time.Time // when the bucket will have been drained by the reservations made
}

// reserve reserves a token at rate per second with room for burst at once,
// and returns how long the caller waits for it. A wait longer than maxWait
// reserves nothing and reports false.
func (b *tokenBucket) reserve(now time.Time, rate float64, burst int, maxWait time.Duration) (time.Duration, bool) {
	interval := time.Duration(float64(time.Second) / rate)
	b.mu.Lock()
	defer b.mu.Unlock()
	due := b.due
	if due.Before(now) {
		due = now
	}
	wait := max(0, due.Sub(now)-time.Duration(burst-1)*interval)
	if wait > maxWait {
		return wait, false
	}
	b.due = due.Add(interval)
	return wait, true
}

// rateLimit is a session's share of its tenant's rate limit.
type rateLimit struct {
	bucket  *tokenBucket
	rate    float64
	burst   int
	maxWait time.Duration
}

// waitForToken waits for the tenant's next transaction token, or ends the
// session with 53400 when the wait would exceed the tenant's bound. What
// the request side has buffered goes upstream first.
func (r *relay) waitForToken() error {
	rl := r.rate
	wait, ok := rl.bucket.reserve(time.Now(), rl.rate, rl.burst, rl.maxWait)
	r.obs.RateLimitWait(r.tenant, wait, !ok)
	if !ok {
		return &pgconn.PgError{Severity: severityFatal, Code: codeConfigurationLimit,
			Message: fmt.Sprintf("transaction rate limit of tenant %q exceeded: the next transaction would wait %s, more than rate_limit_wait (%s)",
				r.tenant, wait.Round(time.Millisecond), rl.maxWait),
			Detail: fmt.Sprintf("The tenant's transactions_per_second is %g.", rl.rate),
			Hint:   "Start fewer transactions, or ask the operator to raise the tenant's transactions_per_second."}
	}
	if wait > 0 {
		if err := r.flushUp(); err != nil {
			return err
		}
		r.waits.blocking(blockOnToken)
		time.Sleep(wait)
		r.waits.resumed(blockOnToken)
	}
	return nil
}

// txWatch ends a session whose transaction stays open longer than the
// tenant's max_transaction_duration. A transaction is taken to start when
// the relay asserts the context ahead of a unit (the upstream may be
// outside a block) and to end at a ReadyForQuery reporting idle with no
// other unit in flight; a ReadyForQuery reporting idle with more units in
// flight starts the next one's clock.
type txWatch struct {
	limit time.Duration
	timer *time.Timer // made once per session: no allocation per transaction
	armed atomic.Bool
}

// txStarted starts the clock unless it runs (request side, or the reply
// side seeing a block it missed the start of).
func (r *relay) txStarted() {
	if w := r.txw; w != nil && w.armed.CompareAndSwap(false, true) {
		w.timer.Reset(w.limit)
	}
}

// txIdle follows a ReadyForQuery (reply side): status, and the units still
// in flight behind it.
func (r *relay) txIdle(status byte, left int64) {
	w := r.txw
	if w == nil {
		return
	}
	switch {
	case status != 'I':
		r.txStarted()
	case left > 0:
		w.armed.Store(true)
		w.timer.Reset(w.limit)
	default:
		w.armed.Store(false)
		w.timer.Stop()
	}
}

// watchTransactions makes the relay end transactions open longer than d.
// cancel reaches the upstream backend of a session-mode relay.
func (r *relay) watchTransactions(d time.Duration, cancel cancelTarget) {
	if d <= 0 {
		return
	}
	w := &txWatch{limit: d}
	w.timer = time.AfterFunc(time.Hour, func() { r.transactionTooLong(cancel) })
	w.timer.Stop()
	r.txw = w
}

// stopWatch stops the transaction clock for good (the session ends).
func (r *relay) stopWatch() {
	if r.txw != nil {
		r.txw.armed.Store(false)
		r.txw.timer.Stop()
	}
}

// transactionTooLong ends the session: its upstream connection is closed
// (so it can never go back to the pool mid-transaction, and PostgreSQL
// rolls the transaction back), then what it runs is cancelled so that the
// backend ends at once. The reply side, seeing the connection closed,
// tells the client why (upstreamReadError).
func (r *relay) transactionTooLong(sessionCancel cancelTarget) {
	if !r.txw.armed.Load() || r.closing.Load() {
		return // ended meanwhile
	}
	r.endReason.Store(&pgconn.PgError{Severity: severityFatal, Code: codeTransactionTimeout,
		Message: "terminating connection due to transaction timeout",
		Detail:  fmt.Sprintf("The transaction was open longer than max_transaction_duration (%s) of tenant %q; it was rolled back.", r.txw.limit, r.tenant)})
	r.up.endTransaction(sessionCancel)
}
