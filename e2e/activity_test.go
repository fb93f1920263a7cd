package e2e

import (
	"context"
	"testing"
	"time"
)

// Every tenant's sessions run as the same database role, and PostgreSQL
// shows a role's sessions each other's statements, literal values
// included. Tenant A reads none of tenant B's, by any route, in either
// mode (in transaction mode an idle pooled backend would keep B's last
// statement visible too).
func TestOtherSessionsStatementsUnreachable(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		done := make(chan error, 1)
		go func() {
			_, err := b.Exec(context.Background(), "SELECT pg_sleep(1.5), 'b-secret-literal'").ReadAll()
			done <- err
		}()
		eventually(t, 5*time.Second, "B's statement running", func() bool {
			return superQuery(t, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%b-secret-literal%' AND state = 'active' AND pid <> pg_backend_pid()")[0][0] != "0"
		})
		for _, sql := range []string{
			"SELECT query FROM pg_stat_activity",
			"SELECT query FROM pg_catalog.pg_stat_activity WHERE pid <> pg_backend_pid()",
			"SELECT a.query FROM pg_locks l JOIN pg_stat_activity a USING (pid)",
			"SELECT query FROM pg_stat_get_activity(NULL)",
			"SELECT pg_stat_get_backend_activity(s) FROM pg_stat_get_backend_idset() s",
			`SELECT * FROM U&"pg_\0073tat_activity"`,
			"SELECT table_to_xml('pg_stat_activity', true, false, '')",
			"SELECT table_to_xml('pg_catalog.pg_stat_activity'::regclass, true, false, '')",
			"WITH x AS (SELECT * FROM pg_stat_activity) SELECT count(*) FROM x",
			"CREATE VIEW peek AS SELECT query FROM pg_stat_activity",
		} {
			if _, err := a.Exec(context.Background(), sql).ReadAll(); pgCode(err) != "42501" {
				t.Errorf("%s: %v, want 42501", sql, err)
			}
			if err := a.ExecParams(context.Background(), sql, nil, nil, nil, nil).Read().Err; pgCode(err) != "42501" {
				t.Errorf("%s (extended): %v, want 42501", sql, err)
			}
		}
		if err := <-done; err != nil {
			t.Fatalf("B's statement: %v", err)
		}
		if got := queryOne(t, a, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("A after the refusals: %q", got)
		}
	})
}
