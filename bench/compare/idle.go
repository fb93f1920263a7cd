package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/bench/internal/benchutil"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/idlecheck"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// idleResult is the memory one proxy process needs for N idle clients.
type idleResult struct {
	Target    string // "pgtenant" or "pgbouncer"
	Mode      string
	N         int
	RSSBefore int64 // bytes, after one warm-up login
	RSSAfter  int64 // bytes, with N clients logged in and idle
	UpBefore  int   // upstream connections of the RLS role
	UpAfter   int
	Elapsed   time.Duration // time to open the N connections
}

// PerClient is the RSS growth per idle client in bytes.
func (r idleResult) PerClient() float64 { return float64(r.RSSAfter-r.RSSBefore) / float64(r.N) }

// idleCheck measures the pgtenant binary bin (its config and log go to
// dir), then PgBouncer, each in o.idleMode with o.idle authenticated idle
// clients. Each proxy is the only client of the RLS role while it is
// measured (the benchmark's proxies are stopped by then), so the upstream
// connection count is its own.
func idleCheck(ctx context.Context, c *pgcluster.Cluster, o options, bin, dir string, bc benchutil.BouncerConf, sessionPool int) ([]idleResult, error) {
	if o.idle > perProcess {
		// One PgBouncer process meets the same open-files limit: only
		// pgtenant's replicas are measured.
		r, err := idleManyCheck(ctx, c, o, bin, dir)
		if err != nil {
			return nil, fmt.Errorf("pgtenant: %w", err)
		}
		return []idleResult{r}, nil
	}
	p, err := startBinary(ctx, c, bin, dir, o.idleMode, o.poolSize)
	if err != nil {
		return nil, err
	}
	pr, err := measureIdle(ctx, c, "pgtenant", o, p.pid(), benchutil.ConnString(p.port, demo.TenantA.User, demo.TenantA.Password))
	p.stop()
	if err != nil {
		return nil, fmt.Errorf("pgtenant: %w", err)
	}

	bc.Mode, bc.PoolSize = o.idleMode, o.poolSize
	if o.idleMode == "session" {
		bc.PoolSize = sessionPool
	}
	b, err := benchutil.StartPgBouncer(ctx, c, bc)
	if err != nil {
		return nil, err
	}
	br, err := measureIdle(ctx, c, "pgbouncer", o, b.Pid(), benchutil.ConnString(b.Port, demo.RLSRole, demo.RLSPassword))
	b.Stop()
	if err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	return []idleResult{pr, br}, nil
}

// measureIdle reads pid's RSS, opens o.idle clients with connStr, waits a
// moment and reads it again.
func measureIdle(ctx context.Context, c *pgcluster.Cluster, name string, o options, pid int, connStr string) (idleResult, error) {
	r := idleResult{Target: name, Mode: o.idleMode, N: o.idle}
	what := fmt.Sprintf("%d %s-mode clients to %s", o.idle, o.idleMode, name)
	return measureIdleWith(ctx, c, r, what, func() (int64, error) { return idlecheck.RSS(pid) }, 30*time.Second, func() (func(), error) {
		conns, err := openClients(ctx, connStr, o.idle, 50, o.idle >= 1000)
		return func() { closeClients(conns) }, err
	})
}

// measureIdleWith fills r: the memory measure gives, and the upstream
// connections, before and after open logs r.N clients in (what says which
// to whom), once the memory has settled (at most settleMax). stop, which
// open returns, logs them out.
func measureIdleWith(ctx context.Context, c *pgcluster.Cluster, r idleResult, what string, measure func() (int64, error), settleMax time.Duration, open func() (stop func(), err error)) (idleResult, error) {
	time.Sleep(idlecheck.Settle)
	var err error
	if r.RSSBefore, err = measure(); err != nil {
		return r, err
	}
	if r.UpBefore, err = upstreamConns(ctx, c); err != nil {
		return r, err
	}
	fmt.Fprintf(os.Stderr, "idle check: opening %s...\n", what)
	start := time.Now()
	stop, err := open()
	defer stop()
	if err != nil {
		return r, err
	}
	r.Elapsed = time.Since(start).Round(100 * time.Millisecond)
	if r.RSSAfter, err = idlecheck.Settled(measure, settleMax); err != nil {
		return r, err
	}
	if r.UpAfter, err = upstreamConns(ctx, c); err != nil {
		return r, err
	}
	fmt.Fprintf(os.Stderr, "idle check: %s: RSS %s -> %s, %.1f KiB per idle client; upstream connections %d -> %d (%s to connect)\n",
		r.Target, mib(r.RSSBefore), mib(r.RSSAfter), r.PerClient()/1024, r.UpBefore, r.UpAfter, r.Elapsed)
	return r, nil
}

// openClients logs n clients in with up to parallel logins at a time (SCRAM
// costs the client a PBKDF2 per login, so parallelism matters) and returns
// them idle. On error the ones opened so far are returned too, for closing.
func openClients(ctx context.Context, connStr string, n, parallel int, progress bool) ([]*pgconn.PgConn, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		mu       sync.Mutex
		conns    = make([]*pgconn.PgConn, 0, n)
		firstErr error
		wg       sync.WaitGroup
	)
	next := make(chan struct{})
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				conn, err := pgconn.Connect(ctx, connStr)
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = fmt.Errorf("login %d of %d: %w", len(conns)+1, n, err)
						cancel()
					}
				} else {
					conns = append(conns, conn)
					if progress && len(conns)%max(n/10, 1) == 0 {
						fmt.Fprintf(os.Stderr, "  %d/%d\n", len(conns), n)
					}
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for range n {
		select {
		case next <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr == nil && ctx.Err() != nil {
		firstErr = ctx.Err()
	}
	return conns, firstErr
}

// closeClients logs the clients out, in parallel: one at a time would take
// seconds for 10,000.
func closeClients(conns []*pgconn.PgConn) {
	var wg sync.WaitGroup
	ch := make(chan *pgconn.PgConn)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range ch {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_ = c.Close(ctx)
				cancel()
			}
		}()
	}
	for _, c := range conns {
		ch <- c
	}
	close(ch)
	wg.Wait()
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
