package proxy

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
)

// Sessions with the same settings share one context (its encoded
// assertions), which lives as long as a session uses it.
func TestPoolContextsAreShared(t *testing.T) {
	p := newTxPool("default", config.Pool{Size: 1}, nil, func() Observer { return nopObserver{} })
	defer p.close()
	app := setting{name: "application_name", value: "psql"}
	tenant := func(id string) setting { return setting{name: "app.tenant_id", value: id} }

	a1 := p.takeContext([]setting{app, tenant("a")}, 1)
	a2 := p.takeContext([]setting{app, tenant("a")}, 1)
	b := p.takeContext([]setting{tenant("a")}, 0)
	steps := []struct {
		name string
		ok   bool
	}{
		{"same settings, same context", a1 == a2},
		{"other startup parameters, another context", b != a1},
		{"the key is the SET statements", a1.key == `SET application_name TO 'psql'; SET "app"."tenant_id" TO 'a'`},
		{"the context statements assert the tenant only", string(a1.settled.replies) == "2C3" && len(a1.assertion.replies) == 10 && a1.ctxCount == 1},
		{"two sessions counted", a1.refs == 2 && len(p.contexts) == 2},
	}
	for _, s := range steps {
		if !s.ok {
			t.Errorf("%s: %+v", s.name, a1)
		}
	}
	p.dropContext(a1.key)
	if p.contexts[a1.key] != a1 {
		t.Fatal("dropped while a session still uses it")
	}
	p.dropContext(a2.key)
	p.dropContext(b.key)
	if len(p.contexts) != 0 {
		t.Fatalf("%d contexts left after every session ended", len(p.contexts))
	}
}

// grantCount counts the grants a waitLater wait hears of.
type grantCount struct{ n atomic.Int32 }

func (g *grantCount) granted() { g.n.Add(1) }

// An event loop's client waits in the pool's queue without a goroutine
// (waitLater): only when it would have to wait; a grant wakes it; a grant
// it no longer needs goes to the next in line; a wait it gives up leaves
// the queue; a pool that closes wakes it.
func TestPoolWaitLater(t *testing.T) {
	p := newTxPool("default", config.Pool{Size: 1, TenantMaxConnections: 1, WaitTimeout: config.Duration{Duration: time.Minute},
		MaxLifetime: config.Duration{Duration: time.Hour}, HealthCheckAfter: config.Duration{Duration: time.Hour}}, nil, func() Observer { return nopObserver{} })
	c1, c2 := net.Pipe()
	defer c2.Close()
	sc := &serverConn{conn: c1, created: time.Now(), used: time.Now(), settled: "k"} // ready for key k
	p.mu.Lock()
	p.open, p.idle = 1, []*serverConn{sc}
	p.mu.Unlock()
	var a, b grantCount
	if w := p.waitLater("t", "k", &a); w != nil {
		t.Fatal("queued with a connection free and ready")
	}
	// Free, but to be reset for another context first: granted at once,
	// for readyAhead.
	if w := p.waitLater("t", "other", &a); w == nil || len(w.got) != 1 || a.n.Load() != 0 {
		t.Fatalf("a free connection needing a reset: %+v", w)
	} else {
		p.endWait(w)
	}
	if got, open, err := p.reserve(nil, noWaiter{}, "t", "k", nil); got != sc || open || err != nil {
		t.Fatalf("reserve: %v %v %v", got, open, err)
	}
	wa, wb := p.waitLater("t", "k", &a), p.waitLater("u", "k", &b)
	if wa == nil || wb == nil || a.n.Load()+b.n.Load() != 0 {
		t.Fatalf("with the connection taken: waits %v %v, grants %d %d", wa, wb, a.n.Load(), b.n.Load())
	}
	p.release(sc, "t", true)
	if a.n.Load() != 1 || b.n.Load() != 0 {
		t.Fatalf("after the release: grants %d %d, want the first in line's", a.n.Load(), b.n.Load())
	}
	p.endWait(wa) // what came needed no connection
	if b.n.Load() != 1 {
		t.Fatal("a grant given back did not go to the next in line")
	}
	if got, _, err := p.reserve(nil, noWaiter{}, "u", "k", wb); got != sc || err != nil {
		t.Fatalf("the granted wait's reserve: %v %v", got, err)
	}
	wc := p.waitLater("t", "k", &a)
	p.endWait(wc)
	p.mu.Lock()
	waiting := p.nwaiting
	p.mu.Unlock()
	if waiting != 0 {
		t.Fatalf("%d waiting after a wait was given up", waiting)
	}
	p.waitLater("t", "k", &a)
	p.release(sc, "u", true) // back to t's waiter
	if a.n.Load() != 2 {
		t.Fatalf("grants to t: %d, want 2", a.n.Load())
	}
	p.waitLater("u", "k", &b)
	p.close()
	if b.n.Load() != 2 {
		t.Fatal("closing the pool did not wake a queued wait")
	}
}
