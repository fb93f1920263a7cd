package e2e

// What running pgx's own test suite through pgtenant found
// (bench/pgxsuite), compared message by message with PostgreSQL, in both
// pool modes.

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// A Sync commits the implicit transaction of its group, and the commit can
// fail: a deferred constraint is checked there. PostgreSQL then answers the
// Sync with an ErrorResponse before its ReadyForQuery (pgx's
// TestConnQueryDeferredError and TestConn*BatchDeferredError). pgtenant
// took that error for a reply out of step and ended the session (FATAL
// 08P01 "unexpected reply 'E'").
func TestCommitErrorAtSync(t *testing.T) {
	// The demo's role may not create temporary tables; every update below
	// fails, so the rows stay as they are.
	superQuery(t, `CREATE TABLE deferred_t (id text PRIMARY KEY, n int NOT NULL UNIQUE DEFERRABLE INITIALLY DEFERRED);
INSERT INTO deferred_t VALUES ('a', 1), ('b', 2), ('c', 3);
GRANT SELECT, UPDATE ON deferred_t TO app_rls`)
	t.Cleanup(func() { superQuery(t, "DROP TABLE deferred_t") })
	update := "UPDATE deferred_t SET n = n + 1 WHERE id = 'b' RETURNING *"
	rt8Same(t, "commit_at_sync", []rt8Case{
		{"unnamed statement", []relayStep{
			relayAt(rt8Cat(rt8Run(update), []pgproto3.FrontendMessage{ppSync()})...),
			relayAt(ppQuery("SELECT count(*) FROM deferred_t WHERE n = 3")),
		}},
		{"described, named, then a second group pipelined", []relayStep{
			relayAt(ppParse("upd", update), ppDescribeStmt("upd"), ppSync(),
				ppBind("upd"), ppDescribePortal(""), ppExec(), ppSync(),
				ppBind("upd"), ppExec(), ppSync(),
				ppParse("", "SELECT n FROM deferred_t ORDER BY id"), ppBind(""), ppExec(), ppSync()),
		}},
		{"in an explicit block, at COMMIT", []relayStep{
			relayAt(rt8Cat(rt8Run("BEGIN"), rt8Run(update), rt8Run("COMMIT"), []pgproto3.FrontendMessage{ppSync()})...),
		}},
	})
}

// A statement prepared on a pooled connection stays there for later
// clients of the same tenant and settings. PostgreSQL parses every Parse
// afresh: after DDL that changes what a text means, a new Parse of it sees
// the new table. pgtenant answered such a Parse from the connection's
// copy, made before the DDL: its Describe gave the old types, and its Bind
// failed with 0A000 "cached plan must not change result type", also after
// the client closed it and prepared it again, as pgx does on 0A000 (pgx's
// TestStmtCacheInvalidation*); and a statement parsed after the DDL, bound
// on another connection, ran that connection's older copy. The DDL runs as
// a migration would, outside pgtenant, between the same steps of each run.
func TestParseAfterDDLSeesTheNewTable(t *testing.T) {
	const sel = "SELECT * FROM ddl_probe"
	type step struct {
		who  int
		msgs []pgproto3.FrontendMessage
		ddl  string // run as superuser before the step
	}
	retype := "ALTER TABLE ddl_probe ALTER COLUMN a TYPE text"
	tests := []struct {
		desc    string
		pool    int
		tenants []demo.Tenant
		steps   []step
	}{
		{desc: "one connection", pool: 1, tenants: []demo.Tenant{tenantA, tenantA2}, steps: []step{
			{who: 0, msgs: list(ppParse("s1", sel), ppDescribeStmt("s1"), ppSync())},
			{who: 0, msgs: list(ppBind("s1"), ppExec(), ppSync())},
			// 0A000 in both: the client's own statement predates the DDL.
			{who: 0, msgs: list(ppBind("s1"), ppExec(), ppSync()), ddl: retype},
			{who: 1, msgs: list(ppParse("s2", sel), ppDescribeStmt("s2"), ppSync())},
			{who: 1, msgs: list(ppBind("s2"), ppExec(), ppSync())},
			{who: 0, msgs: list(ppCloseStmt("s1"), ppParse("s1", sel), ppDescribeStmt("s1"), ppBind("s1"), ppExec(), ppSync())},
			{who: 0, msgs: list(ppParse("s3", sel), ppDescribeStmt("s3"), ppSync()), ddl: "ALTER TABLE ddl_probe ADD COLUMN b int DEFAULT 7"},
			{who: 0, msgs: list(ppBind("s3"), ppExec(), ppSync())},
		}},
		// Session 2 holds the connection session 1 prepared on while
		// session 0 parses after the DDL on the other, and gives it back
		// last, so that session 0's Bind lands on it.
		{desc: "bound on a connection with an older copy", pool: 2, tenants: []demo.Tenant{tenantA, tenantA, tenantA2}, steps: []step{
			{who: 1, msgs: list(ppParse("s", sel), ppBind("s"), ppExec(), ppSync())},
			{who: 2, msgs: list(ppParse("b", "BEGIN"), ppBind("b"), ppExec(), ppSync())},
			{who: 0, msgs: list(ppParse("s", sel), ppSync()), ddl: retype},
			{who: 2, msgs: list(ppParse("c", "COMMIT"), ppBind("c"), ppExec(), ppSync())},
			{who: 0, msgs: list(ppBind("s"), ppExec(), ppSync())},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			run := func(t *testing.T, conns []*ppConn) [][]string {
				superQuery(t, "DROP TABLE IF EXISTS ddl_probe; CREATE TABLE ddl_probe (a int); INSERT INTO ddl_probe VALUES (1); GRANT SELECT ON ddl_probe TO PUBLIC")
				var out [][]string
				for _, s := range tt.steps {
					if s.ddl != "" {
						superQuery(t, s.ddl)
					}
					got, err := conns[s.who].exchange(s.msgs, 0)
					if err != nil {
						got = append(got, "receive error: "+err.Error())
					}
					out = append(out, got)
				}
				return out
			}
			t.Cleanup(func() { superQuery(t, "DROP TABLE IF EXISTS ddl_probe") })
			eachPoolMode(t, func(t *testing.T, m poolMode) {
				p := startProxy(t, m.config(tt.pool, func(c *config.Config) {
					c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
				}))
				var direct, proxied []*ppConn
				for _, tn := range tt.tenants {
					direct = append(direct, ppHijack(t, directConnect(t, tn.ID)))
					proxied = append(proxied, ppHijack(t, p.pgconnect(t, tn)))
				}
				want, got := run(t, direct), run(t, proxied)
				for i := range tt.steps {
					if strings.Join(got[i], "; ") != strings.Join(want[i], "; ") {
						t.Errorf("step %d (%s): pgtenant %q, PostgreSQL %q", i, ppSummary(tt.steps[i].msgs), got[i], want[i])
					}
				}
			})
		})
	}
}
