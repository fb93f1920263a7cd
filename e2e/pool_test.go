package e2e

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// transactionPool puts every user in transaction mode with a pool of size.
func transactionPool(size int) func(*config.Config) {
	return func(c *config.Config) {
		c.Pool.Mode = config.PoolModeTransaction
		c.Pool.Size = size
	}
}

// Two tenants through one pooled connection take turns on it; each sees its
// own context and rows every time, with pgx's statement cache.
func TestPoolSmoke(t *testing.T) {
	p := startProxy(t, transactionPool(1))
	ctx := context.Background()
	a := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
	b := pgxConnect(t, p, tenantB, pgx.QueryExecModeCacheStatement)
	for i := 0; i < 5; i++ {
		for _, c := range []struct {
			conn *pgx.Conn
			tn   demo.Tenant
		}{{a, tenantA}, {b, tenantB}} {
			var tenant string
			var n int
			if err := c.conn.QueryRow(ctx, "SELECT current_setting('app.tenant_id'), count(*) FROM projects WHERE tenant_id = current_setting('app.tenant_id')::uuid OR true").Scan(&tenant, &n); err != nil {
				t.Fatalf("round %d %s: %v", i, c.tn.Name, err)
			}
			if tenant != c.tn.ID || n != len(demo.Projects[c.tn.ID]) {
				t.Fatalf("round %d %s: tenant %s, %d rows", i, c.tn.Name, tenant, n)
			}
		}
	}
	open := superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE usename = '"+demo.RLSRole+"' AND backend_type = 'client backend'")
	if open[0][0] != "1" {
		t.Fatalf("upstream connections: %s, want 1", open[0][0])
	}
}
