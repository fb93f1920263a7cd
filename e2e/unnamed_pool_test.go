package e2e

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// TestUnnamedStatementDroppedElsewhere: a simple Query or a Close drops
// the client's unnamed statement. In transaction mode it may run on one
// pooled connection while the statement was parsed on another, which
// still holds it; a later Describe or Bind of the unnamed statement that
// lands there must fail as in PostgreSQL (26000), not find the old one.
// The Query was found by the differential fuzzer (seed
// 2923295643220334418, a CI run).
// Two sessions of tenant A on a pool of 2: the second holds the first
// connection while the first session's Query takes the other, and gives it
// back last, so that the pool hands it out next (most recently idle).
func TestUnnamedStatementDroppedElsewhere(t *testing.T) {
	const first, second = 0, 1
	tenants := []demo.Tenant{tenantA, tenantA2}
	addA2 := func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
	}
	// What drops it, on the connection the first session holds while the
	// second holds the other.
	drops := []struct {
		desc string
		msgs []pgproto3.FrontendMessage
	}{
		{"a Query", list(ppQuery("SELECT 1"))},
		{"a Close", list(ppCloseStmt(""), ppSync())},
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2, addA2))
		for _, d := range drops {
			t.Run(d.desc, func(t *testing.T) {
				fails := ppFail("26000")
				ppScenario(t, p, tenants, []ppStep{
					ppAs(first, ppFail("22P02", "ParseComplete"), ppParse("", "SELECT $1::int"), ppBind("", "abc"), ppExec(), ppSync()),
					ppAs(second, nil, ppParse("b", "BEGIN"), ppBind("b"), ppExec(), ppSync()),
					ppAs(first, nil, d.msgs...),
					ppAs(second, nil, ppParse("c", "COMMIT"), ppBind("c"), ppExec(), ppSync()),
					ppAs(first, fails, ppDescribeStmt(""), ppSync()),
					ppAs(first, fails, ppBind("", "1"), ppExec(), ppSync()),
					ppAs(first, nil, ppQuery(ppWho)),
				})
			})
		}
	})
}

// TestUnnamedStatementQueryThenSkippedParse: a Query drops the unnamed
// statement the connection holds, whoever's. A Parse of the unnamed
// statement sent behind it marks the connection as holding the client's
// new one; if the server skips that Parse (an error earlier in its group),
// the mark must not go back to what the Query dropped: here another
// session's statement, which a Bind of that session then took to be there
// (26000 where PostgreSQL runs it).
func TestUnnamedStatementQueryThenSkippedParse(t *testing.T) {
	const first, second = 0, 1
	tenants := []demo.Tenant{tenantA, tenantA2}
	addA2 := func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2, addA2))
		// The first session takes the connection the second just gave back,
		// holding its unnamed statement; its Query goes ahead of the group.
		ppScenario(t, p, tenants, []ppStep{
			ppAs(second, ppOK("ParseComplete", ppRan("DataRow 22")), ppRun("", "SELECT 22")...),
			ppAs(first, append(ppOK("RowDescription pg_sleep", "DataRow ", "CommandComplete SELECT 1"), ppFail("26000")...),
				ppQuery("SELECT pg_sleep(0.1)"), ppBind("no_such_statement"), ppParse("", "SELECT 2"), ppSync()),
			ppAs(second, ppOK(ppRan("DataRow 22")), ppBind(""), ppExec(), ppSync()),
			ppAs(first, ppFail("26000"), ppBind(""), ppExec(), ppSync()),
		})
	})
}

// TestUnnamedStatementKeptBySkippedClose: a Close of the unnamed statement
// that the server skips (an earlier message of its group failed) leaves
// the statement in place; in a failed transaction block a Describe of it
// then answers as in PostgreSQL. pgtenant took the connection's unnamed
// statement for unknown after the skipped Close and parsed the client's
// again ahead of the Describe, which a failed block refuses (25P02).
// Found by the differential fuzzer (seed 5987984220555723002 with
// PGTENANT_FUZZ_GEN=plausible).
func TestUnnamedStatementKeptBySkippedClose(t *testing.T) {
	rt8Same(t, "skipped_close", []rt8Case{{
		desc: "in a failed block",
		steps: []relayStep{
			// BEGIN runs; the portal, run to completion, cannot run again
			// (55000): the block fails and the Close is skipped.
			relayAt(ppParse("", "BEGIN"), ppBindPortal("p1", ""), ppExecPortal("p1"), ppExecPortal("p1"), ppCloseStmt(""), ppSync()),
			relayAt(ppDescribeStmt(""), ppSync()),
			relayAt(ppQuery("ROLLBACK")),
		},
	}, {
		desc: "then bound outside a block",
		steps: []relayStep{
			relayAt(ppParse("", "SELECT 1"), ppBindPortal("p1", "SELECT"), ppCloseStmt(""), ppSync()),
			relayAt(ppBind(""), ppExec(), ppSync()),
		},
	}})
}
