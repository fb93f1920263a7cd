package e2e

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/metrics"
	"github.com/pgtenant/pgtenant/proxy"
)

// A bug in one session (a panic, on either side) ends that session with
// XX000, closes its upstream connection, is logged and counted; the proxy
// and the other tenants' sessions go on.
func TestPanicEndsOnlyThatSession(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, mode poolMode) {
		p := mode.start(t)
		m := metrics.New(metrics.Options{})
		p.srv.SetObserver(m)
		var replyArmed atomic.Bool
		p.srv.SetTestingKnobs(&proxy.TestingKnobs{
			OnStatement: func(text []byte) {
				if strings.Contains(string(text), "pgtenant_test_panic") {
					panic("test: request side")
				}
			},
			OnReply: func(typ byte) {
				if typ == 'D' && replyArmed.CompareAndSwap(true, false) {
					panic("test: reply side")
				}
			},
		})
		b := p.pgconnect(t, tenantB)
		for _, side := range []string{"client", "upstream"} {
			a := p.pgconnect(t, tenantA)
			if got := queryOne(t, a, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
				t.Fatalf("tenant %s", got)
			}
			sql := "SELECT 'pgtenant_test_panic'"
			if side == "upstream" {
				replyArmed.Store(true)
				sql = "SELECT 1"
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := a.Exec(ctx, sql).ReadAll()
			cancel()
			if pgCode(err) != "XX000" {
				t.Fatalf("%s side: got %v, want XX000", side, err)
			}
			if !a.IsClosed() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := a.Exec(ctx, "SELECT 1").ReadAll()
				cancel()
				if err == nil {
					t.Fatalf("%s side: the session went on after a panic", side)
				}
			}
			if got := panicCount(t, m, side); got != 1 {
				t.Fatalf("pgtenant_session_panics_total{where=%q} = %v, want 1", side, got)
			}
			if !strings.Contains(p.logs.String(), "a session panicked") {
				t.Fatalf("panic not logged")
			}
			// The proxy and the other tenant go on, on every pooled connection.
			for i := 0; i < 4; i++ {
				if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
					t.Fatalf("tenant B sees %s", got)
				}
				c := p.pgconnect(t, tenantA)
				if got := queryOne(t, c, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
					t.Fatalf("new session sees %s", got)
				}
				c.Close(context.Background())
			}
		}
	})
}

func panicCount(t *testing.T, m *metrics.Metrics, where string) float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "pgtenant_session_panics_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			for _, l := range mt.GetLabel() {
				if l.GetName() == "where" && l.GetValue() == where {
					return mt.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
