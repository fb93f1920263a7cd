//go:build linux

package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec)) // this test binary, re-executed as a relay
	}
	pgcluster.RunMain(m, pgcluster.Options{}, nil)
}

// Each relay, run as the benchmark runs it (a child process), carries a
// real session: the SCRAM login, a query per protocol, and a result of a
// few megabytes read only after a pause, so that the relay's writes to the
// client hit a full socket (EAGAIN) and it has to buffer and wait.
func TestRelaysCarrySessions(t *testing.T) {
	c := pgcluster.Shared()
	upstream := net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	for _, kind := range relayKinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			p, err := startRelay(relay{kind: kind, procs: 1}, upstream)
			if err != nil {
				t.Fatal(err)
			}
			defer p.stop()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			cfg, err := pgx.ParseConfig(c.SuperURL("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			cfg.Port = uint16(p.port)
			conn, err := pgx.ConnectConfig(ctx, cfg)
			if err != nil {
				t.Fatalf("login through %s: %v\nrelay stderr: %s", kind, err, p.stderr)
			}
			defer conn.Close(context.Background())

			var sum int64
			if err := conn.QueryRow(ctx, "SELECT sum(x) FROM generate_series(1, $1::int) x", 100).Scan(&sum); err != nil || sum != 5050 {
				t.Errorf("extended protocol: sum %d, %v; want 5050", sum, err)
			}
			res, err := conn.PgConn().Exec(ctx, "SELECT 'a' || 'b'").ReadAll()
			if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "ab" {
				t.Errorf("simple protocol: %v, %v; want one row \"ab\"", res, err)
			}

			const rows, width = 16000, 1000 // 16 MB, more than the socket buffers
			rr := conn.PgConn().ExecParams(ctx, "SELECT repeat('x', "+strconv.Itoa(width)+") FROM generate_series(1, "+strconv.Itoa(rows)+")", nil, nil, nil, nil)
			time.Sleep(300 * time.Millisecond) // PostgreSQL fills the relay's socket to us meanwhile
			n, bytes := 0, 0
			for rr.NextRow() {
				n++
				bytes += len(rr.Values()[0])
			}
			if _, err := rr.Close(); err != nil || n != rows || bytes != rows*width {
				t.Errorf("large result: %d rows, %d bytes, %v; want %d rows, %d bytes", n, bytes, err, rows, rows*width)
			}
			if err := conn.Ping(ctx); err != nil {
				t.Errorf("ping after the large result: %v", err)
			}
		})
	}
}
