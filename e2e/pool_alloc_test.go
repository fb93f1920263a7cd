package e2e

import (
	"bufio"
	"context"
	"io"
	"runtime"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// A transaction relayed end to end, session and transaction mode (lease,
// assertion, guard screen, replies), allocates nothing in the proxy: the
// client here is a raw socket that allocates nothing either, so the
// process's malloc count is the proxy's.
func TestNoAllocationPerTransaction(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		c := p.pgconnect(t, tenantA)
		if err := c.SyncConn(context.Background()); err != nil {
			t.Fatal(err)
		}
		hc, err := c.Hijack()
		if err != nil {
			t.Fatal(err)
		}
		q, _ := (&pgproto3.Query{String: "SELECT 1"}).Encode(nil)
		rd := bufio.NewReader(hc.Conn)
		var hdr [5]byte
		run := func(n int) {
			for i := 0; i < n; i++ {
				if _, err := hc.Conn.Write(q); err != nil {
					t.Fatal(err)
				}
				for {
					if _, err := io.ReadFull(rd, hdr[:]); err != nil {
						t.Fatal(err)
					}
					size := int(hdr[1])<<24 | int(hdr[2])<<16 | int(hdr[3])<<8 | int(hdr[4])
					rd.Discard(size - 4)
					if hdr[0] == 'Z' {
						break
					}
				}
			}
		}
		run(200)
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		run(2000)
		runtime.ReadMemStats(&b)
		perTx := float64(b.Mallocs-a.Mallocs) / 2000
		t.Logf("%s mode: %.3f allocations per transaction", m.name, perTx)
		limit := 0.05
		if raceEnabled {
			limit = 2 // sync.Pool drops buffers at random under the race detector
		}
		if perTx > limit {
			t.Errorf("%s mode: %.3f allocations per transaction, want none", m.name, perTx)
		}
		hc.Conn.Close()
	})
}
