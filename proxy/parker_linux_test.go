package proxy

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/testutil"
	"golang.org/x/sys/unix"
)

// parkedRelay is a relay with one end of a socket pair as its client
// socket; resumed is signalled when the parker gives it back.
func parkedRelay(t *testing.T) (r *relay, peer int, resumed chan struct{}) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	resumed = make(chan struct{}, 1)
	r = &relay{}
	r.parkFD = int32(fds[0])
	testResumed.Store(r, resumed)
	t.Cleanup(func() { testResumed.Delete(r) })
	return r, fds[1], resumed
}

// testResumed is each parkedRelay's resumed channel.
var testResumed sync.Map

// signalResumed is the tests' parkers' resume: it signals the relay's channel.
func signalResumed(r *relay) {
	if ch, ok := testResumed.Load(r); ok {
		ch.(chan struct{}) <- struct{}{}
	}
}

func TestParker(t *testing.T) {
	wait := func(t *testing.T, resumed chan struct{}, want bool) {
		t.Helper()
		select {
		case <-resumed:
			if !want {
				t.Fatal("resumed, want still parked")
			}
		case <-time.After(200 * time.Millisecond):
			if want {
				t.Fatal("not resumed")
			}
		}
	}
	tests := []struct {
		name string
		run  func(t *testing.T, p *parker)
	}{
		{"the client sends: resumed", func(t *testing.T, p *parker) {
			r, peer, resumed := parkedRelay(t)
			if !p.park(r) {
				t.Fatal("not parked")
			}
			wait(t, resumed, false)
			if _, err := unix.Write(peer, []byte("Q")); err != nil {
				t.Fatal(err)
			}
			wait(t, resumed, true)
		}},
		{"bytes before parking: resumed at once", func(t *testing.T, p *parker) {
			r, peer, resumed := parkedRelay(t)
			_, _ = unix.Write(peer, []byte("Q"))
			if !p.park(r) {
				t.Fatal("not parked")
			}
			wait(t, resumed, true)
		}},
		{"the client hangs up: resumed", func(t *testing.T, p *parker) {
			r, peer, resumed := parkedRelay(t)
			p.park(r)
			_ = unix.Shutdown(peer, unix.SHUT_WR)
			wait(t, resumed, true)
		}},
		{"unparked (drain): resumed, and never parked again", func(t *testing.T, p *parker) {
			r, _, resumed := parkedRelay(t)
			p.park(r)
			p.unpark(r)
			wait(t, resumed, true)
			if p.park(r) {
				t.Fatal("parked again after unpark")
			}
		}},
		{"unparked before it parks: park refuses", func(t *testing.T, p *parker) {
			r, _, resumed := parkedRelay(t)
			p.unpark(r)
			wait(t, resumed, false)
			if p.park(r) {
				t.Fatal("parked after unpark")
			}
		}},
		{"closed: parked clients resumed, no more parking", func(t *testing.T, p *parker) {
			r, _, resumed := parkedRelay(t)
			p.park(r)
			p.close()
			wait(t, resumed, true)
			r2, _, _ := parkedRelay(t)
			if p.park(r2) {
				t.Fatal("parked after close")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			testutil.NoLeaks(t)
			p := newParker(func(time.Time) {}, signalResumed)
			if p == nil {
				t.Fatal("no parker on Linux")
			}
			defer p.close()
			tt.run(t, p)
		})
	}
}

// Once many clients were parked and parking has stopped, the parker gives
// free memory back to the system, once; not while clients keep going idle,
// and not for a few.
func TestParkerFreesMemoryAfterABurst(t *testing.T) {
	for _, tt := range []struct {
		name  string
		parks int
		want  int32
	}{
		{"a burst", 3, 1},
		{"a few", 2, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			testutil.NoLeaks(t)
			var frees atomic.Int32
			p := newParkerFreeing(func(time.Time) {}, signalResumed, 3, time.Hour, func() { frees.Add(1) })
			defer p.close()
			for i := 0; i < tt.parks; i++ {
				r, _, _ := parkedRelay(t)
				if !p.park(r) {
					t.Fatal("not parked")
				}
			}
			// Sweeps come every parkAfter/2; the first sees the parks, the
			// next sees no more.
			time.Sleep(2 * parkAfter)
			if got := frees.Load(); got != tt.want {
				t.Fatalf("memory freed %d times, want %d", got, tt.want)
			}
		})
	}
}
