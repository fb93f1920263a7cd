package e2e

// What running pgx's own test suite through pgtenant found
// (bench/pgxsuite), compared message by message with PostgreSQL, in both
// pool modes.

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
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
