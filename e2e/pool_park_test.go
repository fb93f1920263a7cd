package e2e

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/metrics"
)

// An idle transaction-mode client holds no goroutine: under the event loop
// none ever, under goroutines it leaves its goroutine for the parker after
// a second idle and gets one again when it sends something. Idle clients
// that hang up, are drained or are closed end like any other.
func TestPoolParksIdleClients(t *testing.T) {
	for _, loop := range []bool{true, false} {
		t.Run(map[bool]string{true: "event loop", false: "goroutines"}[loop], func(t *testing.T) {
			testPoolParksIdleClients(t, loop)
		})
	}
}

func testPoolParksIdleClients(t *testing.T, loop bool) {
	p := startProxy(t, func(c *config.Config) {
		transactionPool(2)(c)
		c.EventLoop = &loop
	})
	base := runtime.NumGoroutine()
	m := metrics.New(metrics.Options{})
	p.srv.SetObserver(m)
	const n = 40
	conns := make([]*pgconn.PgConn, n)
	ids := make([]string, n)
	for i := range conns {
		tn := tenantA
		if i%2 == 1 {
			tn = tenantB
		}
		conns[i], ids[i] = p.pgconnect(t, tn), tn.ID
	}
	check := func(round string, from int) {
		t.Helper()
		for i := from; i < n; i++ {
			if got := queryOne(t, conns[i], "SELECT current_setting('app.tenant_id')"); got != ids[i] {
				t.Fatalf("%s: client %d ran as %q, want %q", round, i, got, ids[i])
			}
		}
	}
	check("before parking", 0)
	waitParked := func(round string, clients int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base+clients/4 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d goroutines with %d idle clients, %d before they came: not parked", round, runtime.NumGoroutine(), clients, base)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitParked("first wait", n)
	// Parked clients are still active connections.
	if got := connMetrics(t, m); got != [3]float64{0, n, 0} {
		t.Fatalf("connections (startup, active, closed) while parked: %v, want [0 %d 0]", got, n)
	}
	check("back from the parker", 0)
	check("again", 0)

	waitParked("second wait", n)
	ctx := context.Background()
	for i := 0; i < n/2; i++ {
		conns[i].Close(ctx)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(p.srv.Sessions()) != n-n/2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions after %d of %d parked clients hung up", len(p.srv.Sessions()), n/2, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	check("the others, after the hang-ups", n/2)
	if got := connMetrics(t, m); got != [3]float64{0, n - n/2, n / 2} {
		t.Fatalf("connections (startup, active, closed) after %d parked clients hung up: %v", n/2, got)
	}

	waitParked("third wait", n-n/2)
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := p.srv.Shutdown(sctx); err != nil {
		t.Fatalf("drain with parked clients: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("drain with parked clients took %s", d)
	}
	for i := n / 2; i < n; i++ {
		_, err := conns[i].Exec(ctx, "SELECT 1").ReadAll()
		if code := pgCode(err); code != "57P01" && !conns[i].IsClosed() {
			t.Fatalf("parked client %d after the drain: %v, want 57P01", i, err)
		}
	}
}

// connMetrics reads the client connection gauge (startup, active) and the
// closed counter from m.
func connMetrics(t *testing.T, m *metrics.Metrics) [3]float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out [3]float64
	for _, f := range families {
		for _, mt := range f.GetMetric() {
			switch f.GetName() {
			case "pgtenant_client_connections":
				for _, l := range mt.GetLabel() {
					if l.GetName() == "state" && l.GetValue() == "startup" {
						out[0] = mt.GetGauge().GetValue()
					} else if l.GetName() == "state" && l.GetValue() == "active" {
						out[1] = mt.GetGauge().GetValue()
					}
				}
			case "pgtenant_client_connections_closed_total":
				out[2] = mt.GetCounter().GetValue()
			}
		}
	}
	return out
}

// What a client made before it idled is there after: in transaction mode
// it was parked meanwhile, and gave back the state only a working client
// needs (relayWork), but its statements, settings and channels are its
// own. A notification sent while it is parked reaches it. The same as
// PostgreSQL, and as session mode, where nothing is parked.
func TestParkedClientKeepsState(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		l := listen(t, p, tenantA)
		c := l.conn
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := c.Prepare(ctx, "plus_one", "SELECT $1::int + 1", nil); err != nil {
			t.Fatal(err)
		}
		mustExec(t, c, "SET application_name = 'parked'")
		mustExec(t, c, "PREPARE answer AS SELECT 40 + 2")
		mustExec(t, c, "LISTEN parked_ch")
		mustExec(t, c, "BEGIN; SELECT 1; COMMIT")
		time.Sleep(2500 * time.Millisecond) // parked after a second idle (transaction mode)

		other := p.pgconnect(t, tenantA)
		defer other.Close(ctx)
		mustExec(t, other, "NOTIFY parked_ch, 'while parked'")
		if got := l.drain(t, 1); len(got) != 1 || got[0] != "parked_ch=while parked" {
			t.Fatalf("notifications while parked: %q", got)
		}

		time.Sleep(2500 * time.Millisecond)
		res := c.ExecPrepared(ctx, "plus_one", [][]byte{[]byte("41")}, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "42" {
			t.Fatalf("prepared statement after parking: %v %q", res.Err, res.Rows)
		}
		time.Sleep(2500 * time.Millisecond)
		if got := queryOne(t, c, "EXECUTE answer"); got != "42" {
			t.Fatalf("EXECUTE after parking: %q", got)
		}
		time.Sleep(2500 * time.Millisecond)
		if got := queryOne(t, c, "SHOW application_name"); got != "parked" {
			t.Fatalf("setting after parking: %q", got)
		}
		// A transaction block and an error in it, after parking, as usual.
		time.Sleep(2500 * time.Millisecond)
		if _, err := c.Exec(ctx, "BEGIN; SELECT 1/0").ReadAll(); pgCode(err) != "22012" {
			t.Fatalf("division by zero in a block: %v", err)
		}
		if _, err := c.Exec(ctx, "SELECT 1").ReadAll(); pgCode(err) != "25P02" {
			t.Fatalf("in the failed block: %v", err)
		}
		mustExec(t, c, "ROLLBACK")
		if got := queryOne(t, c, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("tenant after parking: %q", got)
		}
	})
}

// A parked client whose notifications can no longer reach it (the
// connection listening for them is lost) ends: told why, and gone from the
// server's sessions, as a client that is not parked. In session mode the
// lost connection is the client's own backend, with the same outcome.
func TestParkedListenerEndsWithItsNotifications(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		other := p.pgconnect(t, tenantA)
		l := listen(t, p, tenantA)
		mustExec(t, l.conn, "LISTEN parked_lost")
		time.Sleep(2500 * time.Millisecond) // parked after a second idle (transaction mode)
		if got := len(p.srv.Sessions()); got != 2 {
			t.Fatalf("%d sessions before the loss, want 2", got)
		}
		// Transaction mode: the pool's listening connection; session mode:
		// the client's backend. Nothing else has a LISTEN as its last query.
		superQuery(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()")
		deadline := time.Now().Add(10 * time.Second)
		for len(p.srv.Sessions()) != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("%d sessions 10s after the listening connection was lost, want 1 (the parked listener's session was left behind)", len(p.srv.Sessions()))
			}
			time.Sleep(20 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := l.conn.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
			t.Fatal("the listener is still connected after its notifications were lost")
		}
		if got := queryOne(t, other, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("the other client: %q", got)
		}
	})
}

// Clients parked the moment their last reply comes (a statement that ran
// longer than the parker's second: the request side has waited that long
// already), resumed by their next statement, while notifications, pauses
// and the admin views reach the server from other goroutines: each client
// keeps its own state and hears only its tenant's notifications. Each park
// gives the client's relayWork back to a pool that others take from: under
// the race detector this sees any goroutine that still touches it.
func TestParkAtReplyUnderTraffic(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		const n = 6
		type client struct {
			conn  *pgconn.PgConn
			tn    demo.Tenant
			heard atomic.Int64
			wrong atomic.Value
		}
		clients := make([]*client, n)
		for i := range clients {
			c := &client{tn: tenantA}
			if i%2 == 1 {
				c.tn = tenantB
			}
			cfg, err := pgconn.ParseConfig(p.connString(c.tn))
			if err != nil {
				t.Fatal(err)
			}
			cfg.OnNotification = func(_ *pgconn.PgConn, no *pgconn.Notification) {
				if no.Payload != c.tn.ID {
					c.wrong.Store(no.Channel + "=" + no.Payload)
				}
				c.heard.Add(1)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c.conn, err = pgconn.ConnectConfig(ctx, cfg)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.conn.Close(context.Background()) })
			mustExec(t, c.conn, "LISTEN stress")
			mustExec(t, c.conn, fmt.Sprintf("SET application_name = 'stress%d'", i))
			clients[i] = c
		}
		stop := make(chan struct{})
		var bg sync.WaitGroup
		// every runs f every d on a goroutine of bg until stop closes.
		every := func(d time.Duration, f func()) {
			bg.Add(1)
			go func() {
				defer bg.Done()
				for {
					select {
					case <-stop:
						return
					case <-time.After(d):
					}
					f()
				}
			}()
		}
		for _, tn := range []demo.Tenant{tenantA, tenantB} {
			notifier := p.pgconnect(t, tn)
			every(37*time.Millisecond, func() {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, _ = notifier.Exec(ctx, "NOTIFY stress, '"+tn.ID+"'").ReadAll()
				cancel()
			})
		}
		every(113*time.Millisecond, func() {
			p.srv.Pause(context.Background(), tenantA.ID, 0)
			_ = p.srv.Sessions()
			_ = p.srv.UpstreamSessions()
			time.Sleep(20 * time.Millisecond)
			_, _ = p.srv.Resume(tenantA.ID)
		})
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for i, c := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for round := 0; round < 3; round++ {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
					res, err := c.conn.Exec(ctx, "SELECT pg_sleep(1.3), current_setting('app.tenant_id'), current_setting('application_name')").ReadAll()
					cancel()
					if err != nil {
						errs <- fmt.Errorf("client %d round %d: %v", i, round, err)
						return
					}
					row := res[0].Rows[0]
					if string(row[1]) != c.tn.ID || string(row[2]) != fmt.Sprintf("stress%d", i) {
						errs <- fmt.Errorf("client %d round %d ran as %q with application_name %q", i, round, row[1], row[2])
						return
					}
					time.Sleep(time.Duration(300+200*i) * time.Millisecond)
				}
			}()
		}
		wg.Wait()
		close(stop)
		bg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		for i, c := range clients {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			_ = c.conn.WaitForNotification(ctx)
			cancel()
			if w := c.wrong.Load(); w != nil {
				t.Errorf("client %d (tenant %s) heard %v", i, c.tn.ID, w)
			}
			if c.heard.Load() == 0 {
				t.Errorf("client %d heard no notification", i)
			}
		}
	})
}
