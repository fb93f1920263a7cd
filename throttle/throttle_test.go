package throttle

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func newTest(initial, max time.Duration) (*Throttler, *clock) {
	c := &clock{t: epoch}
	t := New(initial, max)
	t.Now = c.now
	return t, c
}

type op int

const (
	check op = iota
	fail
	succeed
)

type step struct {
	at   time.Duration // since epoch
	op   op
	addr string // default "10.0.0.1:5000"
	user string // default "alice"
	// For checks: "" means allowed; otherwise the expected "try again in".
	wantWait string
}

func TestThrottlerSequences(t *testing.T) {
	const s, ms = time.Second, time.Millisecond
	for _, tc := range []struct {
		name         string
		initial, max time.Duration
		steps        []step
	}{
		{
			name: "no failures", initial: s, max: 8 * s,
			steps: []step{{at: 0, op: check}, {at: 0, op: succeed}, {at: 0, op: check}},
		},
		{
			name: "doubling up to the cap", initial: s, max: 5 * s,
			steps: []step{
				{at: 0, op: fail},
				{at: 0, op: check, wantWait: "1s"},
				{at: 999 * ms, op: check, wantWait: "10ms"}, // 1ms left, rounded up
				{at: s, op: check},                          // window over
				{at: s, op: fail},                           // 2nd: 2s
				{at: 2 * s, op: check, wantWait: "1s"},
				{at: 3 * s, op: check},
				{at: 3 * s, op: fail}, // 3rd: 4s
				{at: 3 * s, op: check, wantWait: "4s"},
				{at: 7 * s, op: check},
				{at: 7 * s, op: fail}, // 4th: 8s, capped at 5s
				{at: 7 * s, op: check, wantWait: "5s"},
				{at: 12 * s, op: check},
				{at: 12 * s, op: fail}, // 5th: capped
				{at: 12*s + 500*ms, op: check, wantWait: "5s"},
				{at: 17 * s, op: check},
			},
		},
		{
			name: "checks inside the window do not extend it", initial: 2 * s, max: 60 * s,
			steps: []step{
				{at: 0, op: fail},
				{at: 500 * ms, op: check, wantWait: "2s"},
				{at: 1000 * ms, op: check, wantWait: "1s"},
				{at: 1500 * ms, op: check, wantWait: "500ms"},
				{at: 1990 * ms, op: check, wantWait: "10ms"},
				{at: 2 * s, op: check},
			},
		},
		{
			name: "a success resets", initial: s, max: 60 * s,
			steps: []step{
				{at: 0, op: fail},
				{at: s, op: fail},
				{at: 3 * s, op: fail}, // 4s window
				{at: 7 * s, op: succeed},
				{at: 7 * s, op: check},
				{at: 7 * s, op: fail}, // back to 1s
				{at: 7 * s, op: check, wantWait: "1s"},
				{at: 8 * s, op: check},
			},
		},
		{
			name: "failures inside the window count and restart it", initial: s, max: 60 * s,
			steps: []step{
				// Two attempts that passed the check concurrently both fail.
				{at: 0, op: fail},
				{at: 10 * ms, op: fail}, // 2nd: 2s from here
				{at: 1500 * ms, op: check, wantWait: "510ms"},
				{at: 2010 * ms, op: check},
			},
		},
		{
			name: "keys are per IP and user; the port does not matter", initial: 4 * s, max: 60 * s,
			steps: []step{
				{at: 0, op: fail, addr: "10.0.0.1:5000", user: "alice"},
				{at: 0, op: check, addr: "10.0.0.1:6000", user: "alice", wantWait: "4s"},
				{at: 0, op: check, addr: "10.0.0.2:5000", user: "alice"},
				{at: 0, op: check, addr: "10.0.0.1:5000", user: "bob"},
				{at: 0, op: check, addr: "[::ffff:10.0.0.1]:7000", user: "alice", wantWait: "4s"},
				{at: 0, op: fail, addr: "[2001:db8::1]:5000", user: "bob"},
				{at: 0, op: check, addr: "[2001:db8::1]:1", user: "bob", wantWait: "4s"},
				{at: 0, op: check, addr: "[2001:db8::2]:1", user: "bob"},
				// Not host:port (e.g. a unix socket path): used as is.
				{at: 0, op: fail, addr: "/tmp/.s.PGSQL.6432", user: "carol"},
				{at: 0, op: check, addr: "/tmp/.s.PGSQL.6432", user: "carol", wantWait: "4s"},
				// A success for one key leaves the others alone.
				{at: 0, op: succeed, addr: "10.0.0.1:1", user: "alice"},
				{at: 0, op: check, addr: "10.0.0.1:1", user: "alice"},
				{at: 0, op: check, addr: "[2001:db8::1]:1", user: "bob", wantWait: "4s"},
			},
		},
		{
			name: "huge failure counts do not overflow", initial: time.Nanosecond, max: 3 * s,
			steps: func() []step {
				var st []step
				for range 200 {
					st = append(st, step{at: 0, op: fail})
				}
				return append(st, step{at: 0, op: check, wantWait: "3s"}, step{at: 3 * s, op: check})
			}(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th, c := newTest(tc.initial, tc.max)
			for i, st := range tc.steps {
				addr, user := st.addr, st.user
				if addr == "" {
					addr = "10.0.0.1:5000"
				}
				if user == "" {
					user = "alice"
				}
				c.set(epoch.Add(st.at))
				switch st.op {
				case fail:
					th.ReportAttempt(addr, user, false)
				case succeed:
					th.ReportAttempt(addr, user, true)
				case check:
					err := th.LoginCheck(addr, user)
					if st.wantWait == "" {
						if err != nil {
							t.Fatalf("step %d (at %v, %s %s): refused: %v", i, st.at, addr, user, err)
						}
						continue
					}
					want := fmt.Sprintf("too many failed login attempts for user %q; try again in %s", user, st.wantWait)
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) {
						t.Fatalf("step %d (at %v, %s %s): got %v, want PgError %q", i, st.at, addr, user, err, want)
					}
					if pgErr.Severity != "FATAL" || pgErr.Code != "28000" || pgErr.Message != want {
						t.Fatalf("step %d (at %v): got %s %s %q, want FATAL 28000 %q", i, st.at, pgErr.Severity, pgErr.Code, pgErr.Message, want)
					}
				}
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	for _, tc := range []struct {
		initial, max         time.Duration
		wantInitial, wantMax time.Duration
	}{
		{0, 0, 250 * time.Millisecond, 30 * time.Second},
		{time.Second, 0, time.Second, 30 * time.Second},
		{-1, time.Minute, 250 * time.Millisecond, time.Minute},
		{time.Minute, time.Second, time.Minute, time.Minute},
	} {
		th := New(tc.initial, tc.max)
		if th.initial != tc.wantInitial || th.max != tc.wantMax {
			t.Errorf("New(%v, %v) = %v, %v; want %v, %v", tc.initial, tc.max, th.initial, th.max, tc.wantInitial, tc.wantMax)
		}
	}
}

func TestCap(t *testing.T) {
	th, c := newTest(time.Second, time.Minute)
	th.MaxKeys = 3
	addr := func(i int) string { return fmt.Sprintf("10.0.0.%d:1", i) }

	// Full of blocked keys: the least recently failed goes.
	th.ReportAttempt(addr(1), "u", false)
	th.ReportAttempt(addr(2), "u", false)
	th.ReportAttempt(addr(3), "u", false)
	th.ReportAttempt(addr(1), "u", false) // 1 is now the most recent
	th.ReportAttempt(addr(4), "u", false)
	if th.Len() != 3 {
		t.Fatalf("Len = %d, want 3", th.Len())
	}
	if th.LoginCheck(addr(2), "u") != nil {
		t.Fatal("key 2 (least recently failed) still tracked")
	}
	for _, i := range []int{1, 3, 4} {
		if th.LoginCheck(addr(i), "u") == nil {
			t.Fatalf("key %d evicted", i)
		}
	}

	// Key 1 is at 2 failures (2s window), keys 3 and 4 at 1 (1s). After
	// 1.5s the windows of 3 and 4 have passed: they go before key 1, although
	// key 1 failed before key 4.
	c.set(epoch.Add(1500 * time.Millisecond))
	th.ReportAttempt(addr(5), "u", false)
	th.ReportAttempt(addr(6), "u", false)
	if th.Len() != 3 {
		t.Fatalf("Len = %d, want 3", th.Len())
	}
	for _, i := range []int{1, 5, 6} {
		if th.LoginCheck(addr(i), "u") == nil {
			t.Fatalf("key %d not blocked", i)
		}
	}
	th.mu.Lock()
	_, has3 := th.keys[makeKey(addr(3), "u")]
	_, has4 := th.keys[makeKey(addr(4), "u")]
	th.mu.Unlock()
	if has3 || has4 {
		t.Fatal("expired keys 3, 4 kept while a blocked key was at risk")
	}

	// A success frees its slot; checks never add keys.
	th.ReportAttempt(addr(5), "u", true)
	for i := range 100 {
		_ = th.LoginCheck(addr(100+i), "u")
	}
	if th.Len() != 2 {
		t.Fatalf("Len = %d, want 2", th.Len())
	}
}

func TestCapFlood(t *testing.T) {
	th, c := newTest(time.Second, time.Minute)
	th.MaxKeys = 1000
	for i := range 50_000 {
		c.set(epoch.Add(time.Duration(i) * time.Millisecond))
		th.ReportAttempt(fmt.Sprintf("10.%d.%d.%d:1", i>>16, (i>>8)&255, i&255), "u", false)
		if th.Len() > th.MaxKeys {
			t.Fatalf("Len = %d > MaxKeys %d", th.Len(), th.MaxKeys)
		}
	}
	th.mu.Lock()
	defer th.mu.Unlock()
	if th.order.Len() != len(th.keys) {
		t.Fatalf("order list has %d entries, map %d", th.order.Len(), len(th.keys))
	}
}

func TestConcurrent(t *testing.T) {
	th := New(time.Millisecond, 10*time.Millisecond)
	th.MaxKeys = 50
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 2000 {
				addr := fmt.Sprintf("192.0.2.%d:%d", (g*7+i)%100, i)
				user := fmt.Sprintf("u%d", i%3)
				if err := th.LoginCheck(addr, user); err != nil {
					var pgErr *pgconn.PgError
					if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
						t.Errorf("LoginCheck: %v", err)
						return
					}
					continue
				}
				th.ReportAttempt(addr, user, i%5 == 0)
			}
		})
	}
	wg.Wait()
	if n := th.Len(); n > 50 {
		t.Fatalf("Len = %d > 50", n)
	}
}

func TestSequentialFailuresAreRefusedByRealClock(t *testing.T) {
	// With the real clock: a failure blocks the next attempt at once.
	var s Service = New(time.Hour, time.Hour)
	s.ReportAttempt("127.0.0.1:40000", "mallory", false)
	if err := s.LoginCheck("127.0.0.1:40001", "mallory"); err == nil {
		t.Fatal("second attempt allowed")
	}
}
