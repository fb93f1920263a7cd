package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/idlecheck"
)

// idleClients is how many idle clients TestIdleClientsMemory holds, and
// idleClientBound what each may cost the proxy's resident memory: 3 KiB,
// above the 2 KiB aimed at (issue 17). Measured here 2.6 KiB under the
// event loop, whose sockets are pgtenant's own (2026-12-05; 3.2-3.4 KiB
// with a goroutine driver and Go's sockets, 5.5-5.6 KiB before relayWork);
// the margin is for the heap's fragmentation, which depends on when the
// collector ran during the logins. See README, Performance.
const (
	idleClients     = 10000
	idleClientBound = 3 << 10
)

// TestIdleClientsMemory: 10,000 logged-in, idle transaction-mode clients
// cost the proxy at most idleClientBound of resident memory each, and
// they are still served after. Transaction mode only: in session mode each
// client keeps an upstream connection (a PostgreSQL backend) of its own,
// so what an idle client costs is not meant to be the same.
//
// The proxy is the pgtenant binary, in a process of its own: the growth of
// its resident memory (VmRSS) is what the clients cost it, where an
// in-process proxy's would include the test's own client sockets and
// buffers. The clients live in a process of their own too (bench/compare's
// client mode, built without the race detector, under which 10,000 SCRAM
// logins would take minutes), which raises its own open-files limit;
// they keep only their sockets (pgconn's buffers are dropped).
func TestIdleClientsMemory(t *testing.T) {
	start := time.Now()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	admin := ln.Addr().String()
	ln.Close()
	holder := buildIdleHolder(t)
	// Logging at info: the test looks at memory, not at each login's debug
	// lines. The admin endpoint's Go runtime metrics say what the memory is.
	rp := startBinary(t, "log_level: info\nadmin_listen: "+admin+"\npool: {mode: transaction, size: 2}\n", tenantA)
	pid := rp.cmd.Process.Pid
	cfg, err := pgconn.ParseConfig(fmt.Sprintf("host=127.0.0.1 port=%s user=%s password=%s dbname=app sslmode=disable", rp.port, tenantA.User, tenantA.Password))
	if err != nil {
		t.Fatal(err)
	}
	// One client first, so that the pool, its connection and what a login
	// makes once are there before the measurement; it is idle (parked)
	// with the others, and must be served after.
	warm, err := idlecheck.Hold(cfg, 1, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer warm[0].Close()
	rss := func() (int64, error) { return idlecheck.RSS(pid) }
	before, err := idlecheck.Settled(rss, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	runtimeBefore := goMemStats(t, admin)
	loginStart := time.Now()
	holdIdleClients(t, holder, rp.port, idleClients)
	loggedIn := time.Since(loginStart)
	after, err := idlecheck.Settled(rss, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	per := float64(after-before) / idleClients
	runtimeAfter := goMemStats(t, admin)
	var parts []string
	for _, name := range memStatNames {
		parts = append(parts, fmt.Sprintf("%s %.0f", strings.TrimSuffix(strings.TrimPrefix(name, "go_memstats_"), "_bytes"), (runtimeAfter[name]-runtimeBefore[name])/idleClients))
	}
	t.Logf("per client, from the Go runtime (B): %s", strings.Join(parts, ", "))
	t.Logf("%d idle clients: proxy RSS %.1f MiB -> %.1f MiB, %.0f B (%.2f KiB) per client; logged in in %s; %s in all",
		idleClients, float64(before)/(1<<20), float64(after)/(1<<20), per, per/1024, loggedIn.Round(100*time.Millisecond), time.Since(start).Round(time.Second))
	if per > idleClientBound {
		t.Errorf("%.0f B of resident memory per idle client, over the bound of %d B", per, idleClientBound)
	}
	// Parked, it is still a client: it is served.
	if got := rawQueryOne(t, warm[0], "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
		t.Fatalf("an idle client's query: %q", got)
	}
}

// buildIdleHolder builds bench/compare, whose client mode holds idle
// clients (idlecheck.Hold) in a process of its own, without the race
// detector.
func buildIdleHolder(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "compare")
	build := exec.Command("go", "build", "-o", bin, "./bench/compare")
	build.Dir = ".."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./bench/compare: %v\n%s", err, out)
	}
	return bin
}

// holdIdleClients starts holder in its client mode with count clients of
// tenant A logged in on port, and returns once they all are; they stay
// until the test ends.
func holdIdleClients(t *testing.T, holder, port string, count int) {
	t.Helper()
	cmd := exec.Command(holder)
	cmd.Env = append(os.Environ(), fmt.Sprintf("COMPARE_IDLE_CHILD=%s %d 127.0.0.1", port, count))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("the client process: %q, %v", strings.TrimSpace(line), err)
	}
}

// memStatNames are the Go runtime's memory figures that
// TestIdleClientsMemory reports: live heap, heap in spans in use (the
// difference: free space in partly used spans), runtime memory outside the
// heap (the poller's descriptors, ...), stacks, the collector's metadata.
var memStatNames = []string{"go_memstats_heap_alloc_bytes", "go_memstats_heap_inuse_bytes", "go_memstats_other_sys_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_gc_sys_bytes"}

// goMemStats reads memStatNames from a pgtenant's admin endpoint.
func goMemStats(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if ok && slices.Contains(memStatNames, name) {
			if got[name], err = strconv.ParseFloat(value, 64); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
		}
	}
	if len(got) != len(memStatNames) {
		t.Fatalf("the admin endpoint's metrics have %d of %v", len(got), memStatNames)
	}
	return got
}

// rawQueryOne runs sql, a one-value query, on a client connection whose
// pgconn was dropped, and returns the value.
func rawQueryOne(t *testing.T, c net.Conn, sql string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got string
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return got
		}
	}
}

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
