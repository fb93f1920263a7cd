// Package throttle slows down password guessing: after failed logins for a
// client address and user name, further attempts are refused for a window
// that doubles with each consecutive failure (like CockroachDB's sqlproxy
// throttler).
package throttle

import (
	"container/list"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Service is what the proxy calls around each authentication.
type Service interface {
	// LoginCheck returns a non-nil *pgconn.PgError (Severity FATAL, Code
	// "28000") when (addr, user) is inside its back-off window.
	LoginCheck(addr, user string) error
	// ReportAttempt records the outcome; a success resets the key.
	ReportAttempt(addr, user string, success bool)
}

const (
	// DefaultMaxKeys is the default bound on tracked (address, user) pairs.
	DefaultMaxKeys = 100_000

	defaultInitial = 250 * time.Millisecond
	defaultMax     = 30 * time.Second

	// sweepInterval limits full scans for expired windows when the table is
	// full, so a flood of new keys costs O(1) per key, not O(keys).
	sweepInterval = time.Second
)

// Throttler is the in-memory Service. Keys are the client IP (without the
// port) and the user name. After the n-th consecutive failure a key is
// blocked for min(initial * 2^(n-1), max) from that failure; a check inside
// the window is refused and does not extend it; a success forgets the key.
//
// At most MaxKeys keys are tracked. When a new key does not fit, keys whose
// window has passed go first (their failure count is lost), then the keys
// whose last failure is oldest.
type Throttler struct {
	// Now is the clock; tests replace it. Set fields before first use.
	Now func() time.Time
	// MaxKeys bounds the number of tracked keys (DefaultMaxKeys).
	MaxKeys int

	initial, max time.Duration

	mu        sync.Mutex
	keys      map[key]*state
	order     list.List // *state, least recently failed first
	lastSweep time.Time
}

var _ Service = (*Throttler)(nil)

type key struct{ ip, user string }

type state struct {
	key      key
	failures int
	until    time.Time // end of the back-off window
	elem     *list.Element
}

// New returns a Throttler whose first back-off is initial, doubling up to max.
// A non-positive initial or max takes the default (250ms, 30s); max is at
// least initial.
func New(initial, max time.Duration) *Throttler {
	if initial <= 0 {
		initial = defaultInitial
	}
	if max <= 0 {
		max = defaultMax
	}
	if max < initial {
		max = initial
	}
	return &Throttler{
		Now:     time.Now,
		MaxKeys: DefaultMaxKeys,
		initial: initial,
		max:     max,
		keys:    make(map[key]*state),
	}
}

// LoginCheck implements Service.
func (t *Throttler) LoginCheck(addr, user string) error {
	k := makeKey(addr, user)
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.keys[k]
	if !ok {
		return nil
	}
	wait := s.until.Sub(t.Now())
	if wait <= 0 {
		return nil
	}
	return &pgconn.PgError{
		Severity: "FATAL",
		Code:     "28000", // invalid_authorization_specification
		Message:  fmt.Sprintf("too many failed login attempts for user %q; try again in %s", user, roundUp(wait)),
	}
}

// ReportAttempt implements Service.
func (t *Throttler) ReportAttempt(addr, user string, success bool) {
	k := makeKey(addr, user)
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.keys[k]
	if success {
		if ok {
			t.remove(s)
		}
		return
	}
	now := t.Now()
	if !ok {
		t.makeRoom(now)
		s = &state{key: k}
		s.elem = t.order.PushBack(s)
		t.keys[k] = s
	} else {
		t.order.MoveToBack(s.elem)
	}
	s.failures++
	s.until = now.Add(t.backoff(s.failures))
}

// backoff is min(initial * 2^(n-1), max) without overflowing.
func (t *Throttler) backoff(n int) time.Duration {
	d := t.initial
	for i := 1; i < n && d < t.max; i++ {
		d *= 2
	}
	return min(d, t.max)
}

// makeRoom frees a slot for a new key; t.mu is held.
func (t *Throttler) makeRoom(now time.Time) {
	limit := max(t.MaxKeys, 1)
	if len(t.keys) < limit {
		return
	}
	if now.Sub(t.lastSweep) >= sweepInterval || now.Before(t.lastSweep) {
		t.lastSweep = now
		for _, s := range t.keys {
			if !now.Before(s.until) {
				t.remove(s)
			}
		}
	}
	for len(t.keys) >= limit {
		t.remove(t.order.Front().Value.(*state))
	}
}

func (t *Throttler) remove(s *state) {
	t.order.Remove(s.elem)
	delete(t.keys, s.key)
}

// Len returns the number of tracked keys.
func (t *Throttler) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.keys)
}

// makeKey keys by IP without the port; an IPv4-mapped IPv6 address counts
// as the IPv4 address. An addr that is not host:port is used as it is.
func makeKey(addr, user string) key {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().WithZone("").String()
	}
	return key{ip: host, user: user}
}

// roundUp rounds a wait up, so "try again in" is never too early: to the
// second from 1s, to 10ms below.
func roundUp(d time.Duration) time.Duration {
	unit := time.Second
	if d < time.Second {
		unit = 10 * time.Millisecond
	}
	if r := d % unit; r != 0 {
		d += unit - r
	}
	return d
}
