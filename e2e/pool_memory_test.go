package e2e

import (
	"context"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
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
//
// PGTENANT_IDLE_HEAPPROFILE=file also writes a heap profile while the
// clients are idle (go tool pprof -sample_index=inuse_space file).
func BenchmarkIdleClientMemory(b *testing.B) {
	const clients = 2000
	if os.Getenv("PGTENANT_IDLE_HEAPPROFILE") != "" {
		runtime.MemProfileRate = 256 // fine enough to see each idle client's allocations
	}
	p := startProxy(b, transactionPool(2))
	for b.Loop() {
		before, beforeStack, beforeAlloc := liveBytes()
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
		after, afterStack, afterAlloc := liveBytes()
		if path := os.Getenv("PGTENANT_IDLE_HEAPPROFILE"); path != "" {
			writeHeapProfile(b, path)
		}
		b.ReportMetric(float64(after-before)/clients, "B/idle-client")
		b.ReportMetric(float64(afterStack-beforeStack)/clients, "stack-B/idle-client")
		b.ReportMetric(float64(afterAlloc-beforeAlloc)/clients, "live-B/idle-client")
		for _, c := range conns {
			c.Close()
		}
	}
}

// writeHeapProfile writes the heap profile to path.
func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

// liveBytes returns the heap and stacks in use after a GC, of that the
// stacks, and the heap's live objects (what is in use less the free space
// in partly used spans).
func liveBytes() (total, stacks, live uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse, ms.StackInuse, ms.HeapAlloc
}
