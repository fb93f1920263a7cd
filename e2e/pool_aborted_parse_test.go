package e2e

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// TestParseOfExistingNameInFailedBlock: a Parse of a name the client has
// prepared fails with 42P05, after what its own text fails with first: in
// a failed transaction block that is 25P02, except for a text that ends
// the block (ROLLBACK, COMMIT), which PostgreSQL parses there. pgtenant's
// transaction mode prepared the client's statement again upstream first,
// where the connection lacked it or had it only from the client's own Parse,
// and that Parse failed with 25P02 (found by TestDifferential, seed
// 5079006102882294376). Also: a Describe of a statement that returns no
// rows, which PostgreSQL answers in a failed block.
func TestParseOfExistingNameInFailedBlock(t *testing.T) {
	const inBlock, failed = "ReadyForQuery T", "ReadyForQuery E"
	fail := func(code string, before ...string) []string {
		return append(append(before, "ErrorResponse "+code), failed)
	}
	begin := []string{"CommandComplete BEGIN", inBlock}
	abort := fail("22012", "CommandComplete BEGIN")
	rolledBack := ppOK("ParseComplete", "BindComplete", "CommandComplete ROLLBACK")
	rollback := []pgproto3.FrontendMessage{ppParse("", "ROLLBACK"), ppBind(""), ppExec(), ppSync()}
	const insert = "INSERT INTO copy_sink (line) VALUES ($1)"
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ppScenario(t, p, []demo.Tenant{tenantA, tenantB}, []ppStep{
			// Prepared in the failed transaction, on its connection.
			ppAs(ppA, begin, ppQuery("BEGIN")),
			ppAs(ppA, []string{"ParseComplete", "ParseComplete", inBlock}, ppParse("s1", ppWho), ppParse("s3", insert, 25), ppSync()),
			ppAs(ppA, fail("22012"), ppQuery("SELECT 1/0")),
			ppAs(ppA, fail("42P05"), ppParse("s1", "ROLLBACK"), ppSync()),
			ppAs(ppA, fail("25P02"), ppParse("s1", "SELECT 2"), ppSync()),
			ppAs(ppA, fail("42P05"), ppParse("s1", "COMMIT"), ppBind("s1"), ppExec(), ppSync()),
			ppAs(ppA, []string{"ParameterDescription [25]", "NoData", failed}, ppDescribeStmt("s3"), ppSync()),
			ppAs(ppA, fail("25P02"), ppDescribeStmt("s1"), ppSync()),
			ppAs(ppA, rolledBack, rollback...),
			// The other tenant wipes what the pooled connection has
			// prepared: the client's statements are not there any more.
			ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, abort, ppQuery("BEGIN; SELECT 1/0")),
			ppAs(ppA, fail("42P05"), ppParse("s1", "ROLLBACK"), ppSync()),
			ppAs(ppA, fail("25P02"), ppParse("s1", "SELECT 2"), ppSync()),
			ppAs(ppA, fail("42P05"), ppParse("s3", "COMMIT"), ppSync()),
			// A new name, then the same name again, in one group.
			ppAs(ppA, fail("42P05", "ParseComplete"), ppParse("s2", "ROLLBACK"), ppParse("s2", "ROLLBACK"), ppSync()),
			ppAs(ppA, ppOK("BindComplete", "CommandComplete ROLLBACK"), ppBind("s2"), ppExec(), ppSync()),
			// Outside a block.
			ppAs(ppA, ppFail("42P05"), ppParse("s1", "ROLLBACK"), ppSync()),
			ppAs(ppA, ppFail("42P05"), ppParse("s2", "SELECT 1"), ppSync()),
			ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
			ppAs(ppA, ppOK("ParameterDescription [25]", "NoData"), ppDescribeStmt("s3"), ppSync()),
			// What takes the name upstream where the connection lacks the
			// statement is not the statement: it is prepared before it
			// runs, by name (SQL) or not.
			ppAs(ppA, ppOK("CommandComplete PREPARE"), ppQuery("PREPARE p1 AS SELECT 1")),
			ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, ppFail("42P05"), ppParse("p1", "ROLLBACK"), ppSync()),
			ppAs(ppA, ppFail("42P05"), ppParse("s1", "ROLLBACK"), ppSync()),
			ppAs(ppA, ppOK("RowDescription ?column?", "DataRow 1", "CommandComplete SELECT 1"), ppQuery("EXECUTE p1")),
			ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
		})
	})
}
