package e2e

import (
	"testing"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// TestDeallocateParsedRunsAtExecute: a Parse of DEALLOCATE name runs
// nothing; the statement goes when a Bind of it runs, on whichever pooled
// connection that is. pgtenant forgot the client's name at the Parse (a
// Bind of it then failed, 26000, where PostgreSQL runs it) and settled
// what the connection had prepared there, so the DEALLOCATE run later on
// another connection dropped the upstream statement another session of the
// tenant (same settings, same statement text) shares with it there, behind
// pgtenant's back: that session's next Bind failed (26000).
func TestDeallocateParsedRunsAtExecute(t *testing.T) {
	const first, second = 0, 1
	tenants := []demo.Tenant{tenantA, tenantA2}
	addA2 := func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
	}
	ran := func(row string) []string { return ppOK(ppRan(row)) }
	dealloc := ppOK("BindComplete", "CommandComplete DEALLOCATE")
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2, addA2))
		ppScenario(t, p, tenants, []ppStep{
			ppAs(first, ppOK("ParseComplete", "ParseComplete"), ppParse("s1", "SELECT 1"), ppParse("d", "DEALLOCATE s1"), ppSync()),
			ppAs(first, ran("DataRow 1"), ppBind("s1"), ppExec(), ppSync()),
			// The second session prepares the same statement on the
			// connection the first just gave back; the first's DEALLOCATE
			// then runs there.
			ppAs(second, ppOK("ParseComplete", ppRan("DataRow 1")), ppRun("s", "SELECT 1")...),
			ppAs(first, dealloc, ppBind("d"), ppExec(), ppSync()),
			ppAs(second, ran("DataRow 1"), ppBind("s"), ppExec(), ppSync()),
			ppAs(first, ppFail("26000"), ppBind("s1"), ppExec(), ppSync()),
			ppAs(first, ppFail("26000", "BindComplete"), ppBind("d"), ppExec(), ppSync()),
			ppAs(second, ran("DataRow 1"), ppBind("s"), ppExec(), ppSync()),
			// The unnamed statement's DEALLOCATE, run on the other
			// connection (the second session holds this one).
			ppAs(first, ppOK("ParseComplete", "ParseComplete"), ppParse("s2", "SELECT 2"), ppParse("", "DEALLOCATE s2"), ppSync()),
			ppAs(second, nil, ppParse("b", "BEGIN"), ppBind("b"), ppExec(), ppSync()),
			ppAs(first, dealloc, ppBind(""), ppExec(), ppSync()),
			ppAs(second, nil, ppParse("c", "COMMIT"), ppBind("c"), ppExec(), ppSync()),
			ppAs(first, ppFail("26000"), ppBind("s2"), ppExec(), ppSync()),
			ppAs(first, ppOK("ParseComplete", ppRan("DataRow 2")), ppRun("s2", "SELECT 2")...),
		})
	})
}
