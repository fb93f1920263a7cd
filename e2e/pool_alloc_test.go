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
	encode := func(msgs ...pgproto3.FrontendMessage) []byte {
		var b []byte
		for _, m := range msgs {
			var err error
			if b, err = m.Encode(b); err != nil {
				t.Fatal(err)
			}
		}
		return b
	}
	// The three protocols of pgbench: a Query; an unnamed statement parsed
	// each time; a named one prepared once (in setup) and bound each time.
	protocols := []struct {
		name         string
		setup, perTx []byte
	}{
		{"simple", nil, encode(&pgproto3.Query{String: "SELECT 1"})},
		{"extended", nil, encode(&pgproto3.Parse{Query: "SELECT $1::int"}, &pgproto3.Bind{Parameters: [][]byte{[]byte("1")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})},
		{"prepared", encode(&pgproto3.Parse{Name: "s", Query: "SELECT $1::int"}, &pgproto3.Sync{}),
			encode(&pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{[]byte("1")}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})},
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		for _, proto := range protocols {
			t.Run(proto.name, func(t *testing.T) {
				c := p.pgconnect(t, tenantA)
				if err := c.SyncConn(context.Background()); err != nil {
					t.Fatal(err)
				}
				hc, err := c.Hijack()
				if err != nil {
					t.Fatal(err)
				}
				defer hc.Conn.Close()
				rd := bufio.NewReader(hc.Conn)
				var hdr [5]byte
				roundTrip := func(msgs []byte) {
					if _, err := hc.Conn.Write(msgs); err != nil {
						t.Fatal(err)
					}
					for {
						if _, err := io.ReadFull(rd, hdr[:]); err != nil {
							t.Fatal(err)
						}
						size := int(hdr[1])<<24 | int(hdr[2])<<16 | int(hdr[3])<<8 | int(hdr[4])
						rd.Discard(size - 4)
						if hdr[0] == 'E' {
							t.Fatal("the server answered with an error")
						}
						if hdr[0] == 'Z' {
							return
						}
					}
				}
				run := func(n int) {
					for i := 0; i < n; i++ {
						roundTrip(proto.perTx)
					}
				}
				if proto.setup != nil {
					roundTrip(proto.setup)
				}
				run(200)
				var a, b runtime.MemStats
				runtime.ReadMemStats(&a)
				run(2000)
				runtime.ReadMemStats(&b)
				perTx := float64(b.Mallocs-a.Mallocs) / 2000
				t.Logf("%s mode, %s protocol: %.3f allocations per transaction", m.name, proto.name, perTx)
				limit := 0.05
				if raceEnabled {
					limit = 2 // sync.Pool drops buffers at random under the race detector
				}
				if perTx > limit {
					t.Errorf("%s mode, %s protocol: %.3f allocations per transaction, want none", m.name, proto.name, perTx)
				}
			})
		}
	})
}
