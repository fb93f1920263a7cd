package e2e

import (
	"context"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// BenchmarkIdleClientMemory reports what an idle transaction-mode client
// costs the proxy: Go heap and stacks in use after a GC, per client, with
// 2000 clients logged in and idle. The clients keep only their sockets
// (pgconn's buffers are dropped), so nearly all of it is the proxy's.
//
//	go test -run XXX -bench IdleClientMemory -benchtime 1x ./e2e
func BenchmarkIdleClientMemory(b *testing.B) {
	const clients = 2000
	p := startProxy(b, transactionPool(2))
	for b.Loop() {
		before, beforeStack := liveBytes()
		conns := make([]net.Conn, 0, clients)
		for i := 0; i < clients; i++ {
			c, err := pgconn.Connect(context.Background(), p.connString(tenantA))
			if err != nil {
				b.Fatal(err)
			}
			if err := c.SyncConn(context.Background()); err != nil {
				b.Fatal(err)
			}
			hc, err := c.Hijack()
			if err != nil {
				b.Fatal(err)
			}
			conns = append(conns, hc.Conn)
		}
		// Idle clients are parked after a second without a goroutine.
		time.Sleep(3 * time.Second)
		after, afterStack := liveBytes()
		b.ReportMetric(float64(after-before)/clients, "B/idle-client")
		b.ReportMetric(float64(afterStack-beforeStack)/clients, "stack-B/idle-client")
		for _, c := range conns {
			c.Close()
		}
	}
}

// liveBytes returns the heap and stacks in use after a GC, and of that the
// stacks.
func liveBytes() (total, stacks uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse, ms.StackInuse
}
