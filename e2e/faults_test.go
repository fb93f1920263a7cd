package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// The upstream restarts under load: every client gets an error and none
// hangs; new sessions work again within a second of the upstream returning.
func TestUpstreamRestartUnderLoad(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
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
		// While the upstream is down, a new session is refused quickly with
		// 08xxx: at login in session mode; in transaction mode, where a login
		// with known startup parameters needs no upstream connection, at its
		// first statement.
		down := time.Now()
		if !m.tx {
			if e := connectErr(t, p.connString(tenantA)); e.Code[:2] != "08" {
				t.Fatalf("login while the upstream is down: %s %s", e.Code, e.Message)
			}
		} else {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := p.pgconnect(t, tenantA).Exec(ctx, "SELECT 1").ReadAll()
			cancel()
			if code := pgCode(err); len(code) < 2 || code[:2] != "08" {
				t.Fatalf("first statement of a session while the upstream is down: %v, want 08xxx", err)
			}
		}
		if d := time.Since(down); d > 5*time.Second {
			t.Fatalf("refused after %s while the upstream is down", d)
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
	})
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
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
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
	})
}

// A client that does not read a large result holds only its own session:
// the proxy's memory stays bounded (TCP back-pressure reaches PostgreSQL) and
// other clients go on at full speed.
func TestSlowReaderIsolated(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
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
	})
}

// stallingRelay is a TCP relay between the proxy and PostgreSQL that can stop
// forwarding, as a broken network path does.
type stallingRelay struct {
	ln      net.Listener
	stalled atomic.Bool
}

func newStallingRelay(t *testing.T, target string) *stallingRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &stallingRelay{ln: ln}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pipe := func(dst, src net.Conn) {
				defer wg.Done()
				defer dst.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := src.Read(buf)
					for r.stalled.Load() {
						time.Sleep(10 * time.Millisecond)
						if errors.Is(err, net.ErrClosed) {
							return
						}
					}
					if n > 0 {
						if _, werr := dst.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}
			wg.Add(2)
			go pipe(u, c)
			go pipe(c, u)
			t.Cleanup(func() { c.Close(); u.Close() })
		}
	}()
	return r
}

// A network path to the upstream that stalls mid-session: upstream_timeout
// fires and the client gets a FATAL naming it, instead of waiting forever.
func TestStalledUpstreamPath(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		c := pgcluster.Shared()
		relay := newStallingRelay(t, fmt.Sprintf("127.0.0.1:%d", c.Port))
		p := m.start(t, func(cfg *config.Config) {
			cfg.Upstream = fmt.Sprintf("postgres://%s:%s@%s/%s?sslmode=disable", demo.RLSRole, demo.RLSPassword, relay.ln.Addr(), demo.Database)
			cfg.Limits.UpstreamTimeout = config.Duration{Duration: 500 * time.Millisecond}
		})
		conn := p.pgconnect(t, tenantA)
		queryOne(t, conn, "SELECT 1")
		time.Sleep(700 * time.Millisecond) // idle longer than the timeout: no reply is owed, nothing fires
		queryOne(t, conn, "SELECT 1")
		relay.stalled.Store(true)
		defer relay.stalled.Store(false)
		start := time.Now()
		_, err := conn.Exec(context.Background(), "SELECT 1").ReadAll()
		if pgCode(err) != "08006" || !strings.Contains(err.Error(), "upstream_timeout") {
			t.Fatalf("query over a stalled path: %v, want FATAL 08006 naming upstream_timeout", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("took %s for a 500ms timeout", d)
		}
	})
}
