package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

func TestLimits(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		t.Run("max_clients", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) { c.Limits.MaxClients = 2 })
			first := p.pgconnect(t, tenantA)
			p.pgconnect(t, tenantB)
			e := connectErr(t, p.connString(tenantA))
			if e.Code != "53300" || e.Message != "sorry, too many clients already" {
				t.Fatalf("third client: %s %q", e.Code, e.Message)
			}
			first.Close(context.Background())
			eventually(t, 5*time.Second, "a slot to free up", func() bool {
				c, err := pgconn.Connect(context.Background(), p.connString(tenantA))
				if err == nil {
					c.Close(context.Background())
				}
				return err == nil
			})
		})

		t.Run("max_clients_per_tenant", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) { c.Limits.MaxClientsPerTenant = 1 })
			p.pgconnect(t, tenantA)
			e := connectErr(t, p.connString(tenantA))
			if e.Code != "53300" || !strings.Contains(e.Message, "too many connections for tenant") {
				t.Fatalf("second session of a tenant: %s %q", e.Code, e.Message)
			}
			// Another tenant is not affected.
			queryOne(t, p.pgconnect(t, tenantB), "SELECT 1")
		})

		t.Run("max_message_size", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) { c.Limits.MaxMessageSize = 1000 })
			conn := p.pgconnect(t, tenantA)
			queryOne(t, conn, "SELECT 1")
			_, err := conn.Exec(context.Background(), "SELECT '"+strings.Repeat("x", 2000)+"'").ReadAll()
			if pgCode(err) != "54000" {
				t.Fatalf("oversized message: %v", err)
			}
		})

		t.Run("idle_timeout", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) { c.Limits.IdleTimeout = config.Duration{Duration: 300 * time.Millisecond} })
			conn := p.pgconnect(t, tenantA)
			// Busy is not idle: a query longer than the timeout is fine.
			queryOne(t, conn, "SELECT pg_sleep(0.5)")
			time.Sleep(700 * time.Millisecond)
			_, err := conn.Exec(context.Background(), "SELECT 1").ReadAll()
			if pgCode(err) != "57P05" {
				t.Fatalf("after idling: %v, want FATAL 57P05", err)
			}
		})

		t.Run("idle_in_transaction_timeout", func(t *testing.T) {
			p := m.start(t, func(c *config.Config) {
				c.Limits.IdleInTransactionTimeout = config.Duration{Duration: 300 * time.Millisecond}
			})
			conn := p.pgconnect(t, tenantA)
			queryRows(t, conn, "BEGIN")
			queryRows(t, conn, "INSERT INTO copy_sink (line) VALUES ('idle-in-tx')")
			time.Sleep(700 * time.Millisecond)
			_, err := conn.Exec(context.Background(), "COMMIT").ReadAll()
			if pgCode(err) != "25P03" {
				t.Fatalf("after idling in a transaction: %v, want FATAL 25P03", err)
			}
			eventually(t, 5*time.Second, "the transaction to roll back", func() bool {
				return superQuery(t, "SELECT count(*) FROM copy_sink WHERE line = 'idle-in-tx'")[0][0] == "0" &&
					superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' AND usename = 'app_rls'")[0][0] == "0"
			})
			// Idle outside a transaction is not limited by it.
			other := p.pgconnect(t, tenantB)
			time.Sleep(500 * time.Millisecond)
			queryOne(t, other, "SELECT 1")
		})
	})
}

// limits.max_prepared_bytes bounds what pgtenant keeps of one
// transaction-mode client's prepared statements (it prepares them again on
// other connections, so it holds their texts): past it the session ends
// with 54000, and a statement closed gives its bytes back. In session mode
// the statements are the client's backend's, and PostgreSQL's business.
func TestPreparedBytesLimit(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) { c.Limits.MaxPreparedBytes = 64 << 10 })
		conn := p.pgconnect(t, tenantA)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		text := "SELECT count(*) FROM projects /* " + strings.Repeat("x", 10<<10) + " */"
		prepare := func(name string) error {
			_, err := conn.Prepare(ctx, name, text, nil)
			return err
		}
		for i := range 5 {
			if err := prepare(fmt.Sprintf("s%d", i)); err != nil {
				t.Fatalf("statement %d of 10 KiB under a limit of 64 KiB: %v", i, err)
			}
		}
		for i := range 5 {
			if err := conn.Deallocate(ctx, fmt.Sprintf("s%d", i)); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 5 {
			if err := prepare(fmt.Sprintf("t%d", i)); err != nil {
				t.Fatalf("statement %d after closing the first five: %v", i, err)
			}
		}
		var err error
		for i := 5; i < 10; i++ {
			if err = prepare(fmt.Sprintf("t%d", i)); err != nil {
				break
			}
		}
		if !m.tx {
			if err != nil {
				t.Fatalf("session mode: %v", err)
			}
			return
		}
		if pgCode(err) != "54000" || !strings.Contains(err.Error(), "max_prepared_bytes") {
			t.Fatalf("transaction mode, 100 KiB of statements under a limit of 64 KiB: %v", err)
		}
		other := p.pgconnect(t, tenantB)
		if got := queryOne(t, other, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("another client: %q", got)
		}
	})
}
