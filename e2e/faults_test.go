package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// The upstream restarts under load: every client gets an error and none
// hangs; new sessions work again within a second of the upstream returning.
func TestUpstreamRestartUnderLoad(t *testing.T) {
	p := startProxy(t, nil)
	c := pgcluster.Shared()
	const clients = 4
	conns := make([]*pgconn.PgConn, clients)
	for i := range conns {
		conns[i] = p.pgconnect(t, tenantA)
	}
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for _, conn := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				_, err := conn.Exec(ctx, "SELECT count(*) FROM projects").ReadAll()
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // under load
	stopped := time.Now()
	if err := c.StopServerOnly(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = c.StartServer(context.Background())
		}
	}()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("clients still hang 10s after the upstream stopped")
	}
	close(errs)
	for err := range errs {
		if code := pgCode(err); code != "" && code[:2] != "08" && code[:2] != "57" {
			t.Errorf("client error %v: want a connection-class (08) or shutdown (57) error", err)
		}
	}
	t.Logf("all %d clients failed within %s of the stop", clients, time.Since(stopped))
	// While the upstream is down, a new session is refused quickly with 08xxx.
	if e := connectErr(t, p.connString(tenantA)); e.Code[:2] != "08" {
		t.Fatalf("login while the upstream is down: %s %s", e.Code, e.Message)
	}
	if err := c.StartServer(context.Background()); err != nil {
		t.Fatal(err)
	}
	restarted = true
	back := time.Now()
	eventually(t, time.Second, "a new session after the upstream returned", func() bool {
		conn, err := pgconn.Connect(context.Background(), p.connString(tenantA))
		if err != nil {
			return false
		}
		defer conn.Close(context.Background())
		return queryOne(t, conn, "SELECT current_setting('app.tenant_id')") == tenantA.ID
	})
	t.Logf("new sessions work %s after the upstream returned", time.Since(back))
}
