package e2e

import (
	"context"
	"io"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

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

// blockingReader yields some copy data, then blocks until released.
type blockingReader struct {
	chunks  int
	release chan struct{}
}

func (r *blockingReader) Read(p []byte) (int, error) {
	if r.chunks > 0 {
		r.chunks--
		return copy(p, "killed-mid-copy\n"), nil
	}
	<-r.release
	return 0, io.EOF
}

// The upstream backend is killed in the middle of a COPY and of a long
// result: the client gets an error promptly and nothing hangs.
func TestUpstreamKilledMidStream(t *testing.T) {
	p := startProxy(t, nil)
	terminate := func(app string) {
		eventually(t, 5*time.Second, "the backend to be busy", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"+app+"' AND state = 'active'")[0][0] == "1"
		})
		superQuery(t, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '"+app+"'")
	}

	t.Run("COPY FROM STDIN", func(t *testing.T) {
		conn := p.pgconnect(t, tenantA, "application_name=e2e_kill_copy")
		r := &blockingReader{chunks: 100, release: make(chan struct{})}
		defer close(r.release)
		done := make(chan error, 1)
		go func() {
			_, err := conn.CopyFrom(context.Background(), r, "COPY copy_sink (line) FROM STDIN")
			done <- err
		}()
		terminate("e2e_kill_copy")
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("COPY succeeded after its backend was killed")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("COPY hangs after its backend was killed")
		}
	})

	t.Run("long result", func(t *testing.T) {
		conn := p.pgconnect(t, tenantA, "application_name=e2e_kill_result")
		done := make(chan error, 1)
		go func() {
			rr := conn.ExecParams(context.Background(), "SELECT i, repeat('x', 200) FROM generate_series(1, 50000000) i", nil, nil, nil, nil)
			for rr.NextRow() {
			}
			_, err := rr.Close()
			done <- err
		}()
		terminate("e2e_kill_result")
		select {
		case err := <-done:
			if pgCode(err) != "57P01" {
				t.Fatalf("long result after its backend was killed: %v, want 57P01", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("long result hangs after its backend was killed")
		}
	})
}

// A client that does not read a large result holds only its own session:
// the proxy's memory stays bounded (TCP back-pressure reaches PostgreSQL) and
// other clients go on at full speed.
func TestSlowReaderIsolated(t *testing.T) {
	p := startProxy(t, nil)
	slow := p.pgconnect(t, tenantA)
	hc, err := slow.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	// About 200 MB of rows, which the client never reads.
	hc.Frontend.Send(&pgproto3.Query{String: "SELECT i, repeat('x', 1000) FROM generate_series(1, 200000) i"})
	if err := hc.Frontend.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)

	fast := p.pgconnect(t, tenantB)
	start := time.Now()
	for i := 0; i < 100; i++ {
		queryOne(t, fast, "SELECT 1")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("100 queries of another client took %s next to a slow reader", d)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 16<<20 {
		t.Fatalf("heap grew by %d MB while a client left 200 MB unread", grown>>20)
	}
}
