package e2e

// Prepared-statement corner cases in transaction pool mode, on the raw
// protocol. Every scenario runs twice: through pgtenant, with its sessions
// taking turns on a pool of one upstream connection, and on direct
// connections to PostgreSQL of the same tenants. The replies must be the
// same message for message (errors compared by SQLSTATE: names in their
// texts differ), and the steps that state the replies they want must get
// exactly those from both. Transaction mode only: these are about pgtenant
// carrying each client's statements across the pooled connections.

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// tenantA2 is a second user of tenant A. Clients of one tenant (with the
// same settings) share pgtenant's prepared statements on a connection.
var tenantA2 = demo.Tenant{ID: demo.TenantA.ID, Name: demo.TenantA.Name, User: "acme_app2", Password: "acme2_pw"}

// ppPool is a transaction pool of one connection, with tenantA2 as a user
// too; more may change the config further.
func ppPool(more ...func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		transactionPool(1)(c)
		c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
		for _, m := range more {
			m(c)
		}
	}
}

// Statement texts. ppWho shows the tenant context and the rows RLS lets
// through, so a reply names the tenant it ran for.
const (
	ppWho      = "SELECT current_setting('app.tenant_id') AS tenant, string_agg(name, ',' ORDER BY id) AS names FROM projects"
	ppWhoParam = ppWho + " WHERE name <> $1"
	ppCount    = "SELECT current_setting('app.tenant_id') AS tenant, count(*) AS n FROM projects"
	ppMissing  = "SELECT * FROM no_such_table"
	ppSyntax   = "SELEC current_setting('app.tenant_id')"
)

// ppWhoRow is the DataRow of ppWho (and of ppWhoParam with a parameter no
// project is named) for tn.
func ppWhoRow(tn demo.Tenant) string {
	return "DataRow " + tn.ID + "|" + strings.Join(demo.Projects[tn.ID], ",")
}

func ppCountRow(tn demo.Tenant) string {
	return fmt.Sprintf("DataRow %s|%d", tn.ID, len(demo.Projects[tn.ID]))
}

const ppRFQ = "ReadyForQuery I"

// ppRan is the reply to Bind, Execute of a one-row statement returning row.
func ppRan(row string) []string {
	return []string{"BindComplete", row, "CommandComplete SELECT 1"}
}

// ppOK is a Sync group's replies: the given ones, then ReadyForQuery I.
func ppOK(replies ...any) []string {
	var out []string
	for _, r := range replies {
		switch r := r.(type) {
		case string:
			out = append(out, r)
		case []string:
			out = append(out, r...)
		default:
			panic(fmt.Sprintf("ppOK: %T", r))
		}
	}
	return append(out, ppRFQ)
}

// ppFail is a Sync group that failed with code.
func ppFail(code string, before ...string) []string {
	return append(append(before, "ErrorResponse "+code), ppRFQ)
}

// Message constructors.

func ppParse(name, sql string, oids ...uint32) *pgproto3.Parse {
	return &pgproto3.Parse{Name: name, Query: sql, ParameterOIDs: oids}
}

func ppBind(stmt string, params ...string) *pgproto3.Bind {
	return ppBindPortal("", stmt, params...)
}

func ppBindPortal(portal, stmt string, params ...string) *pgproto3.Bind {
	b := &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt}
	for _, p := range params {
		b.Parameters = append(b.Parameters, []byte(p))
	}
	return b
}

func ppExec() *pgproto3.Execute                    { return &pgproto3.Execute{} }
func ppExecPortal(portal string) *pgproto3.Execute { return &pgproto3.Execute{Portal: portal} }
func ppSync() *pgproto3.Sync                       { return &pgproto3.Sync{} }
func ppFlush() *pgproto3.Flush                     { return &pgproto3.Flush{} }
func ppDescribeStmt(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'S', Name: name}
}
func ppDescribePortal(name string) *pgproto3.Describe {
	return &pgproto3.Describe{ObjectType: 'P', Name: name}
}
func ppCloseStmt(name string) *pgproto3.Close   { return &pgproto3.Close{ObjectType: 'S', Name: name} }
func ppClosePortal(name string) *pgproto3.Close { return &pgproto3.Close{ObjectType: 'P', Name: name} }
func ppQuery(sql string) *pgproto3.Query        { return &pgproto3.Query{String: sql} }

// ppRun is Parse (unless stmt is to be reused: sql == ""), Bind, Execute, Sync.
func ppRun(stmt, sql string, params ...string) []pgproto3.FrontendMessage {
	var m []pgproto3.FrontendMessage
	if sql != "" {
		m = append(m, ppParse(stmt, sql))
	}
	return append(m, ppBind(stmt, params...), ppExec(), ppSync())
}

// ppConn is an authenticated raw protocol connection, to pgtenant or
// directly to PostgreSQL.
type ppConn struct {
	conn net.Conn
	fe   *pgproto3.Frontend
}

// ppHijack takes over pc's network connection.
func ppHijack(t *testing.T, pc *pgconn.PgConn) *ppConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pc.SyncConn(ctx); err != nil {
		t.Fatalf("SyncConn: %v", err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatalf("Hijack: %v", err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &ppConn{conn: hc.Conn, fe: hc.Frontend}
}

// ppReply describes a backend message in one line. Errors are described by
// SQLSTATE only: their texts name statements, which pgtenant renames.
func ppReply(msg pgproto3.BackendMessage) string {
	if e, ok := msg.(*pgproto3.ErrorResponse); ok {
		return "ErrorResponse " + e.Code
	}
	return strings.TrimPrefix(describe(msg), "*pgproto3.")
}

// exchange sends msgs in one write and reads the replies: up to one
// ReadyForQuery for each Query and Sync sent or, when there are none, read
// messages. An error (a timeout: pgtenant sent fewer replies than expected)
// ends the list.
func (c *ppConn) exchange(msgs []pgproto3.FrontendMessage, read int) ([]string, error) {
	for _, m := range msgs {
		c.fe.Send(m)
	}
	if err := c.fe.Flush(); err != nil {
		return nil, err
	}
	rfq := 0
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Query, *pgproto3.Sync:
			rfq++
		}
	}
	_ = c.conn.SetReadDeadline(time.Now().Add(8 * time.Second))
	var out []string
	for rfq > 0 || read > 0 {
		msg, err := c.fe.Receive()
		if err != nil {
			return out, err
		}
		switch msg.(type) {
		case *pgproto3.ReadyForQuery:
			rfq--
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue // not what these tests are about
		}
		out = append(out, ppReply(msg))
		if read > 0 {
			read--
		}
	}
	return out, nil
}

// ppStep is one exchange of one session.
type ppStep struct {
	who  int // index into the scenario's tenants
	msgs []pgproto3.FrontendMessage
	read int      // messages to read when msgs hold no Sync or Query
	want []string // the exact replies, when the step states them
}

// ppAs builds a step of session who.
func ppAs(who int, want []string, msgs ...pgproto3.FrontendMessage) ppStep {
	return ppStep{who: who, msgs: msgs, want: want}
}

// ppRunSteps runs the steps on conns and returns each step's replies; an
// exchange that fails ends the run, with the error as its last line.
func ppRunSteps(conns []*ppConn, steps []ppStep) [][]string {
	out := make([][]string, 0, len(steps))
	for _, s := range steps {
		got, err := conns[s.who].exchange(s.msgs, s.read)
		if err != nil {
			out = append(out, append(got, "receive error: "+err.Error()))
			break
		}
		out = append(out, got)
	}
	return out
}

// ppScenario runs steps as tenants through the proxy (a pool of one) and
// directly, and fails the test where the replies differ or miss a step's
// stated replies. It returns the replies through the proxy.
func ppScenario(t *testing.T, p *testProxy, tenants []demo.Tenant, steps []ppStep) [][]string {
	t.Helper()
	var direct, proxied []*ppConn
	for _, tn := range tenants {
		direct = append(direct, ppHijack(t, directConnect(t, tn.ID)))
		proxied = append(proxied, ppHijack(t, p.pgconnect(t, tn)))
	}
	d := ppRunSteps(direct, steps)
	got := ppRunSteps(proxied, steps)
	// The expectations hold against PostgreSQL itself: otherwise the
	// test, not pgtenant, is wrong.
	for i, s := range steps {
		if s.want != nil && i < len(d) && !slices.Equal(d[i], s.want) {
			t.Errorf("step %d: PostgreSQL itself replies %q, the test wants %q", i, d[i], s.want)
		}
	}
	same := len(d) == len(got)
	for i := 0; same && i < len(d); i++ {
		same = slices.Equal(d[i], got[i])
	}
	if !same {
		t.Errorf("replies through pgtenant differ from PostgreSQL's (steps marked !!)\n%s", ppTranscript(tenants, steps, d, got))
	}
	return got
}

// ppTranscript shows each step's messages and both sides' replies.
func ppTranscript(tenants []demo.Tenant, steps []ppStep, direct, proxied [][]string) string {
	var b strings.Builder
	for i, s := range steps {
		var d, p []string
		if i < len(direct) {
			d = direct[i]
		}
		if i < len(proxied) {
			p = proxied[i]
		}
		mark := "  "
		if !slices.Equal(d, p) {
			mark = "!!"
		}
		who := tenants[s.who].User
		fmt.Fprintf(&b, "%s step %d, %s sends: %s\n", mark, i, who, ppSummary(s.msgs))
		fmt.Fprintf(&b, "     PostgreSQL: %s\n", strings.Join(d, "; "))
		fmt.Fprintf(&b, "     pgtenant:   %s\n", strings.Join(p, "; "))
	}
	return b.String()
}

// ppSummary describes frontend messages briefly.
func ppSummary(msgs []pgproto3.FrontendMessage) string {
	var parts []string
	short := func(s string) string {
		if len(s) > 40 {
			return s[:37] + "..."
		}
		return s
	}
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.Parse:
			parts = append(parts, fmt.Sprintf("Parse %q %q %v", m.Name, short(m.Query), m.ParameterOIDs))
		case *pgproto3.Bind:
			parts = append(parts, fmt.Sprintf("Bind %q←%q", m.DestinationPortal, m.PreparedStatement))
		case *pgproto3.Execute:
			parts = append(parts, fmt.Sprintf("Execute %q", m.Portal))
		case *pgproto3.Describe:
			parts = append(parts, fmt.Sprintf("Describe %c %q", m.ObjectType, m.Name))
		case *pgproto3.Close:
			parts = append(parts, fmt.Sprintf("Close %c %q", m.ObjectType, m.Name))
		case *pgproto3.Query:
			parts = append(parts, fmt.Sprintf("Query %q", short(m.String)))
		default:
			parts = append(parts, strings.TrimPrefix(fmt.Sprintf("%T", m), "*pgproto3."))
		}
	}
	return strings.Join(parts, ", ")
}

// Sessions of the scenarios: A and B are different tenants, A2 is a second
// user of A's tenant.
const (
	ppA = iota
	ppB
	ppA2
)

var ppTenants = []demo.Tenant{tenantA, tenantB, tenantA2}

// A Describe of a named statement, with no Parse in its group, after the
// other tenant used the connection, and after the other tenant wiped every
// prepared statement off it (DEALLOCATE ALL) so that pgtenant must prepare
// the statement again before it can describe it.
func TestPoolPreparedDescribeWithoutParse(t *testing.T) {
	p := startProxy(t, ppPool())
	described := ppOK("ParameterDescription [25]", "RowDescription tenant,names")
	ran := ppOK(ppRan(ppWhoRow(tenantA)))
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", ppWhoParam, 25), ppSync()),
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("s1", ppCount)...),
		ppAs(ppA, described, ppDescribeStmt("s1"), ppSync()),
		ppAs(ppA, ran, ppBind("s1", "none"), ppExec(), ppSync()),
		ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
		ppAs(ppA, described, ppDescribeStmt("s1"), ppSync()),
		ppAs(ppA, ran, ppBind("s1", "none"), ppExec(), ppSync()),
		ppAs(ppB, ppFail("26000"), ppDescribeStmt("s1"), ppSync()),
		ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
		// Describe and Bind in one group, on a connection without the statement.
		ppAs(ppA, ppOK("ParameterDescription [25]", "RowDescription tenant,names", ppRan(ppWhoRow(tenantA))),
			ppDescribeStmt("s1"), ppBind("s1", "none"), ppExec(), ppSync()),
	})
}

// A Parse that fails leaves no statement behind: a Bind or Describe of its
// name fails with 26000, and a Parse of the name with valid text works. A
// Parse that fails for a name that exists leaves the old statement alone.
func TestPoolPreparedFailedParse(t *testing.T) {
	for _, tc := range []struct {
		name, sql, code string
	}{
		{"syntax error", ppSyntax, "42601"},
		{"missing table", ppMissing, "42P01"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, ppPool())
			ppScenario(t, p, ppTenants, []ppStep{
				ppAs(ppA, ppFail(tc.code), ppParse("s1", tc.sql), ppSync()),
				ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("", ppWho)...),
				ppAs(ppA, ppFail("26000"), ppRun("s1", "")...),
				ppAs(ppA, ppFail("26000"), ppDescribeStmt("s1"), ppSync()),
				ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s1", ppWho)...),
				ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("s1", ppCount)...),
				// A failing Parse of an existing name: the error is the text's,
				// and the statement stays as it was.
				ppAs(ppA, ppFail(tc.code), ppParse("s1", tc.sql), ppSync()),
				ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
			})
		})
		t.Run(tc.name+", unnamed", func(t *testing.T) {
			// PostgreSQL drops the unnamed statement when a Parse of it
			// begins, so after a failed one there is none.
			p := startProxy(t, ppPool())
			ppScenario(t, p, ppTenants, []ppStep{
				ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("", ppWho)...),
				ppAs(ppA, ppFail(tc.code), ppParse("", tc.sql), ppSync()),
				ppAs(ppA, ppFail("26000"), ppBind(""), ppExec(), ppSync()),
				ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("b1", ppCount)...),
				ppAs(ppA, ppFail("26000"), ppBind(""), ppExec(), ppSync()),
				ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("", ppWho)...),
			})
		})
	}
}

// Close of a statement, then a Bind of it fails with 26000; Close of a name
// that does not exist succeeds, as in PostgreSQL. Another client's
// statement of the same name is not affected.
func TestPoolPreparedClose(t *testing.T) {
	p := startProxy(t, ppPool())
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", ppWho), ppSync()),
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("s1", ppCount)...),
		ppAs(ppA, ppOK("CloseComplete"), ppCloseStmt("s1"), ppSync()),
		ppAs(ppA, ppFail("26000"), ppRun("s1", "")...),
		ppAs(ppB, ppOK(ppRan(ppCountRow(tenantB))), ppRun("s1", "")...),
		ppAs(ppA, ppFail("26000"), ppDescribeStmt("s1"), ppSync()),
		ppAs(ppA, ppOK("CloseComplete"), ppCloseStmt("never_prepared"), ppSync()),
		ppAs(ppA, ppOK("CloseComplete"), ppCloseStmt("s1"), ppSync()),
		// Names that look like pgtenant's own are just unknown names.
		ppAs(ppA, ppOK("CloseComplete", "CloseComplete"), ppCloseStmt("pgtenant_0123456789abcdef"), ppClosePortal("no_portal"), ppSync()),
		ppAs(ppA, ppFail("26000"), ppDescribeStmt("pgtenant_assert"), ppSync()),
		// Prepared again (pgtenant has it cached on the connection).
		ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s1", ppWho)...),
		// Close and Bind in one group: the Close ran before the Bind failed.
		ppAs(ppA, ppFail("26000", "CloseComplete"), ppCloseStmt("s1"), ppBind("s1"), ppExec(), ppSync()),
		ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s1", ppWho)...),
		ppAs(ppB, ppOK(ppRan(ppCountRow(tenantB))), ppRun("s1", "")...),
	})
}

// DEALLOCATE ALL drops the client's statements when it runs, and only then:
// not when it fails in an aborted transaction block or behind a failed
// statement of its query string. Another client's statements on the shared
// connection survive it (pgtenant prepares them again).
func TestPoolPreparedDeallocateAll(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []ppStep // A's DEALLOCATE ALL
		gone  bool     // whether A's statements are gone afterwards
	}{
		{"simple query", []ppStep{
			ppAs(ppA, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
		}, true},
		{"extended protocol", []ppStep{
			ppAs(ppA, ppOK("ParseComplete", "BindComplete", "CommandComplete DEALLOCATE ALL"), ppRun("", "DEALLOCATE ALL")...),
		}, true},
		{"committed block", []ppStep{
			ppAs(ppA, []string{"CommandComplete BEGIN", "CommandComplete DEALLOCATE ALL", "CommandComplete COMMIT", ppRFQ}, ppQuery("BEGIN; DEALLOCATE ALL; COMMIT")),
		}, true},
		{"rolled-back block (not transactional)", []ppStep{
			ppAs(ppA, []string{"CommandComplete BEGIN", "ReadyForQuery T"}, ppQuery("BEGIN")),
			ppAs(ppA, []string{"CommandComplete DEALLOCATE ALL", "ReadyForQuery T"}, ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, ppOK("CommandComplete ROLLBACK"), ppQuery("ROLLBACK")),
		}, true},
		{"failed in an aborted block", []ppStep{
			ppAs(ppA, []string{"CommandComplete BEGIN", "ReadyForQuery T"}, ppQuery("BEGIN")),
			ppAs(ppA, []string{"ErrorResponse 22012", "ReadyForQuery E"}, ppQuery("SELECT 1/0")),
			ppAs(ppA, []string{"ErrorResponse 25P02", "ReadyForQuery E"}, ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, ppOK("CommandComplete ROLLBACK"), ppQuery("ROLLBACK")),
		}, false},
		{"skipped behind a failed statement", []ppStep{
			ppAs(ppA, ppFail("22012"), ppQuery("SELECT 1/0; DEALLOCATE ALL")),
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, ppPool())
			steps := []ppStep{
				ppAs(ppA, ppOK("ParseComplete", "ParseComplete"), ppParse("s1", ppWho), ppParse("s2", ppCount), ppSync()),
				ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("b1", ppWho)...),
			}
			steps = append(steps, tc.steps...)
			bound, reparsed := ppFail("26000"), ppOK("ParseComplete", ppRan(ppWhoRow(tenantA)))
			if !tc.gone {
				bound, reparsed = ppOK(ppRan(ppWhoRow(tenantA))), ppFail("42P05")
			}
			countBound := ppFail("26000")
			if !tc.gone {
				countBound = ppOK(ppRan(ppCountRow(tenantA)))
			}
			steps = append(steps,
				ppAs(ppA, bound, ppRun("s1", "")...),
				// A new name for a text prepared before.
				ppAs(ppA, ppOK("ParseComplete", ppRan(ppCountRow(tenantA))), ppRun("s3", ppCount)...),
				ppAs(ppA, reparsed, ppRun("s1", ppWho)...),
				ppAs(ppA, countBound, ppRun("s2", "")...),
				ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
				ppAs(ppB, ppOK(ppRan(ppWhoRow(tenantB))), ppRun("b1", "")...),
			)
			ppScenario(t, p, ppTenants, steps)
		})
	}
}

// A statement closed and prepared again under its name with other text (or
// other parameter types) runs the new text, also where the connection still
// holds the old one: pgtenant keeps closed statements prepared upstream.
func TestPoolPreparedReprepareDifferentText(t *testing.T) {
	p := startProxy(t, ppPool())
	const (
		oldSQL = "SELECT 'old' AS v, current_setting('app.tenant_id') AS tenant"
		newSQL = "SELECT 'new' AS v, current_setting('app.tenant_id') AS tenant"
		bSQL   = "SELECT 'b' AS v, current_setting('app.tenant_id') AS tenant"
		typSQL = "SELECT pg_typeof($1)::text AS v, current_setting('app.tenant_id') AS tenant"
	)
	row := func(v string, tn demo.Tenant) []string { return ppRan("DataRow " + v + "|" + tn.ID) }
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete", row("old", tenantA)), ppRun("s1", oldSQL)...),
		ppAs(ppA, ppOK("CloseComplete", "ParseComplete", row("new", tenantA)), append([]pgproto3.FrontendMessage{ppCloseStmt("s1")}, ppRun("s1", newSQL)...)...),
		ppAs(ppB, ppOK("ParseComplete", row("b", tenantB)), ppRun("s1", bSQL)...),
		ppAs(ppA, ppOK(row("new", tenantA)), ppRun("s1", "")...),
		// The same tenant's other client prepares the old text as s1.
		ppAs(ppA2, ppOK("ParseComplete", row("old", tenantA)), ppRun("s1", oldSQL)...),
		ppAs(ppA, ppOK(row("new", tenantA)), ppRun("s1", "")...),
		// Back to the old text, which the connection holds.
		ppAs(ppA, ppOK("CloseComplete"), ppCloseStmt("s1"), ppSync()),
		ppAs(ppA, ppOK("ParseComplete", row("old", tenantA)), ppRun("s1", oldSQL)...),
		ppAs(ppA2, ppOK("CloseComplete", "ParseComplete", row("new", tenantA)), append([]pgproto3.FrontendMessage{ppCloseStmt("s1")}, ppRun("s1", newSQL)...)...),
		ppAs(ppA, ppOK(row("old", tenantA)), ppRun("s1", "")...),
		// Parse, Close, Parse of one name in one group.
		ppAs(ppA, ppOK("CloseComplete", "ParseComplete", "CloseComplete", "ParseComplete", row("b", tenantA)),
			ppCloseStmt("s1"), ppParse("s1", newSQL), ppCloseStmt("s1"), ppParse("s1", bSQL), ppBind("s1"), ppExec(), ppSync()),
		ppAs(ppA2, ppOK(row("new", tenantA)), ppRun("s1", "")...),
		// Same text, other parameter types.
		ppAs(ppA, ppOK("CloseComplete", "ParseComplete", row("text", tenantA)),
			ppCloseStmt("s1"), ppParse("s1", typSQL, 25), ppBind("s1", "7"), ppExec(), ppSync()),
		ppAs(ppA, ppOK("CloseComplete", "ParseComplete", row("integer", tenantA)),
			ppCloseStmt("s1"), ppParse("s1", typSQL, 23), ppBind("s1", "7"), ppExec(), ppSync()),
		ppAs(ppB, ppOK(row("b", tenantB)), ppRun("s1", "")...),
		ppAs(ppA, ppOK(row("integer", tenantA)), ppRun("s1", "", "7")...),
	})
}

// A Parse of a name that exists fails with 42P05, whatever its text, also
// when the connection has lost the statement meanwhile; the statement keeps
// its first text.
func TestPoolPreparedDuplicateName(t *testing.T) {
	p := startProxy(t, ppPool())
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", ppWho), ppSync()),
		ppAs(ppA, ppFail("42P05"), ppParse("s1", ppCount), ppSync()),
		ppAs(ppA, ppFail("42P05"), ppParse("s1", ppWho), ppSync()),
		ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
		ppAs(ppA, ppFail("42P05"), ppParse("s1", ppCount), ppSync()),
		ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
		ppAs(ppA, ppFail("42P05"), ppRun("s1", ppCount)...),
		// Twice in one group: the first Parse stays (statements are not transactional).
		ppAs(ppA, ppFail("42P05", "ParseComplete"), ppParse("s2", ppCount), ppParse("s2", ppCount), ppSync()),
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("s2", ppCount)...),
		ppAs(ppA, ppOK(ppRan(ppCountRow(tenantA))), ppRun("s2", "")...),
		ppAs(ppA, ppOK(ppRan(ppWhoRow(tenantA))), ppRun("s1", "")...),
	})
}

// Unnamed statements in a pipeline: Parse/Bind/Execute three times with one
// Sync, then a Bind of the unnamed statement alone in a later group, after
// another client used the connection, runs the client's last unnamed
// statement.
func TestPoolPreparedUnnamedPipeline(t *testing.T) {
	nth := func(n int) string {
		return fmt.Sprintf("SELECT %d AS n, current_setting('app.tenant_id') AS tenant", n)
	}
	row := func(n int, tn demo.Tenant) []string { return ppRan(fmt.Sprintf("DataRow %d|%s", n, tn.ID)) }
	var pipeline []pgproto3.FrontendMessage
	var pipelineReplies []string
	for n := 1; n <= 3; n++ {
		pipeline = append(pipeline, ppParse("", nth(n)), ppBind(""), ppExec())
		pipelineReplies = append(append(pipelineReplies, "ParseComplete"), row(n, tenantA)...)
	}
	pipeline = append(pipeline, ppSync())
	// What the other client does on the connection, the first time and
	// the second.
	named := func(who int, tn demo.Tenant, name string) [2][]ppStep {
		return [2][]ppStep{
			{ppAs(who, ppOK("ParseComplete", ppRan(ppWhoRow(tn))), ppRun(name, ppWho)...)},
			{ppAs(who, ppOK(ppRan(ppWhoRow(tn))), ppRun(name, "")...)},
		}
	}
	twice := func(s ppStep) [2][]ppStep { return [2][]ppStep{{s}, {s}} }
	for _, tc := range []struct {
		name  string
		other [2][]ppStep
	}{
		{"no other client", [2][]ppStep{}},
		{"other tenant, simple query", twice(
			ppAs(ppB, ppOK("RowDescription tenant,names", ppWhoRow(tenantB), "CommandComplete SELECT 1"), ppQuery(ppWho)))},
		{"other tenant, named statement", named(ppB, tenantB, "b1")},
		{"other tenant, unnamed statement", twice(
			ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("", ppWho)...))},
		{"same tenant, named statement", named(ppA2, tenantA, "a1")},
		// Its connection needs no settling round trip, so only the Query
		// itself drops A's unnamed statement there (TestPoolStress, CI).
		{"same tenant, simple query", twice(
			ppAs(ppA2, ppOK("RowDescription tenant,names", ppWhoRow(tenantA), "CommandComplete SELECT 1"), ppQuery(ppWho)))},
		{"same tenant, unnamed statement", twice(
			ppAs(ppA2, ppOK("ParseComplete", row(9, tenantA)), ppRun("", nth(9))...))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, ppPool())
			steps := []ppStep{ppAs(ppA, ppOK(pipelineReplies), pipeline...)}
			steps = append(steps, tc.other[0]...)
			steps = append(steps, ppAs(ppA, ppOK(row(3, tenantA)), ppBind(""), ppExec(), ppSync()))
			steps = append(steps, tc.other[1]...)
			steps = append(steps,
				ppAs(ppA, ppOK("ParameterDescription []", "RowDescription n,tenant"), ppDescribeStmt(""), ppSync()),
				ppAs(ppA, ppOK(row(3, tenantA)), ppBind(""), ppExec(), ppSync()))
			ppScenario(t, p, ppTenants, steps)
		})
	}
	// A Close of the unnamed statement that the server skips (an error
	// earlier in its group) leaves the statement in place.
	for _, tc := range []struct {
		name  string
		other ppStep
	}{
		{"other tenant, named statement", ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("b1", ppWho)...)},
		{"same tenant, unnamed statement", ppAs(ppA2, ppOK("ParseComplete", row(9, tenantA)), ppRun("", nth(9))...)},
	} {
		t.Run("skipped Close, then "+tc.name, func(t *testing.T) {
			p := startProxy(t, ppPool())
			ppScenario(t, p, ppTenants, []ppStep{
				ppAs(ppA, ppOK(pipelineReplies), pipeline...),
				ppAs(ppA, ppFail("42P01"), ppParse("bad", ppMissing), ppCloseStmt(""), ppSync()),
				tc.other,
				ppAs(ppA, ppOK(row(3, tenantA)), ppBind(""), ppExec(), ppSync()),
			})
		})
	}
}

// A pipeline of Sync groups where the first fails at the Parse of a named
// statement: the later groups see what PostgreSQL's would.
func TestPoolPreparedPipelineAfterFailedParse(t *testing.T) {
	who := ppRan(ppWhoRow(tenantA))
	other := ppAs(ppB, ppOK("ParseComplete", ppRan(ppCountRow(tenantB))), ppRun("s1", ppCount)...)
	for _, tc := range []struct {
		name  string
		steps []ppStep
	}{
		{"Bind of the name in the next group", []ppStep{
			ppAs(ppA, append(ppFail("42P01"), ppFail("26000")...),
				ppParse("s1", ppMissing), ppBind("s1"), ppExec(), ppSync(),
				ppBind("s1"), ppExec(), ppSync()),
			other,
			ppAs(ppA, ppOK("ParseComplete", who), ppRun("s1", ppWho)...),
		}},
		{"syntax error, Bind of the name in the next group", []ppStep{
			ppAs(ppA, append(ppFail("42601"), ppFail("26000")...),
				ppParse("s1", ppSyntax), ppSync(),
				ppBind("s1"), ppExec(), ppSync()),
			other,
			ppAs(ppA, ppOK("ParseComplete", who), ppRun("s1", ppWho)...),
		}},
		{"Parse of the name again in the next group", []ppStep{
			ppAs(ppA, append(ppFail("42P01"), ppOK("ParseComplete", who)...),
				ppParse("s1", ppMissing), ppSync(),
				ppParse("s1", ppWho), ppBind("s1"), ppExec(), ppSync()),
			ppAs(ppA, ppOK(who), ppRun("s1", "")...),
			other,
			ppAs(ppA, ppOK(who), ppRun("s1", "")...),
		}},
		{"same text under another name in the next group", []ppStep{
			ppAs(ppA, append(ppFail("42P01"), ppOK("ParseComplete", who)...),
				ppParse("s0", ppMissing), ppParse("s1", ppWho), ppSync(),
				ppParse("s2", ppWho), ppBind("s2"), ppExec(), ppSync()),
			ppAs(ppA, ppFail("26000"), ppRun("s1", "")...),
			ppAs(ppA, ppOK(who), ppRun("s2", "")...),
			other,
			ppAs(ppA, ppOK(who), ppRun("s2", "")...),
		}},
		{"Close skipped by the failure", []ppStep{
			ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", ppWho), ppSync()),
			ppAs(ppA, append(ppFail("42P01"), ppOK(who)...),
				ppParse("bad", ppMissing), ppCloseStmt("s1"), ppSync(),
				ppBind("s1"), ppExec(), ppSync()),
			other,
			ppAs(ppA, ppOK(who), ppRun("s1", "")...),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, ppPool())
			ppScenario(t, p, ppTenants, tc.steps)
		})
	}
}

// Two clients of the same tenant prepare the same text, which the
// connection has already (pgtenant parses it again there: see
// TestParseAfterDDLSeesTheNewTable): the ParseComplete must come where
// PostgreSQL's would: first, before a Flush's reply, not for a Parse the
// server skips, and not in an aborted transaction block, where PostgreSQL
// refuses Parse.
func TestPoolPreparedCachedParseComplete(t *testing.T) {
	p := startProxy(t, ppPool())
	who := ppRan(ppWhoRow(tenantA))
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("ParseComplete", who), ppRun("x", ppWho)...),
		ppAs(ppA2, ppOK("ParseComplete", who), ppRun("y", ppWho)...),
		ppAs(ppA2, ppOK("ParseComplete", "ParameterDescription []", "RowDescription tenant,names"), ppParse("y2", ppWho), ppDescribeStmt("y2"), ppSync()),
		ppAs(ppA2, ppOK("ParseComplete", "ParseComplete", who, who),
			ppParse("z1", ppWho), ppParse("z2", ppWho), ppBind("z1"), ppExec(), ppBind("z2"), ppExec(), ppSync()),
		// Flush: the ParseComplete comes before the Sync.
		{who: ppA2, msgs: []pgproto3.FrontendMessage{ppParse("f", ppWho), ppFlush()}, read: 1, want: []string{"ParseComplete"}},
		ppAs(ppA2, ppOK(who), ppBind("f"), ppExec(), ppSync()),
		// Skipped: an error earlier in the group.
		ppAs(ppA2, ppFail("42P01"), ppParse("bad", ppMissing), ppParse("g", ppWho), ppSync()),
		ppAs(ppA2, ppFail("26000"), ppRun("g", "")...),
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("x", ppWho)...),
		// In an aborted transaction block PostgreSQL refuses the Parse.
		ppAs(ppA2, []string{"CommandComplete BEGIN", "ReadyForQuery T"}, ppQuery("BEGIN")),
		ppAs(ppA2, []string{"ErrorResponse 22012", "ReadyForQuery E"}, ppQuery("SELECT 1/0")),
		ppAs(ppA2, []string{"ErrorResponse 25P02", "ReadyForQuery E"}, ppParse("v", ppWho), ppSync()),
		ppAs(ppA2, ppOK("CommandComplete ROLLBACK"), ppQuery("ROLLBACK")),
		ppAs(ppA2, ppFail("26000"), ppRun("v", "")...),
		ppAs(ppA, ppOK(who), ppRun("x", "")...),
		ppAs(ppA2, ppOK(who), ppRun("y", "")...),
	})
}

// With max_prepared_statements reached, pgtenant closes the connection's
// least recently used statement when a new one is prepared; the client
// must not notice: its replies stay in order, and statements and portals
// it still has keep working.
func TestPoolPreparedEviction(t *testing.T) {
	p := startProxy(t, ppPool(func(c *config.Config) { c.Pool.MaxPreparedStatements = 2 }))
	text := func(n int) string {
		return fmt.Sprintf("SELECT %d AS n, current_setting('app.tenant_id') AS tenant", n)
	}
	row := func(n int) []string { return ppRan(fmt.Sprintf("DataRow %d|%s", n, tenantA.ID)) }
	steps := []ppStep{}
	for n := 1; n <= 4; n++ {
		steps = append(steps, ppAs(ppA, ppOK("ParseComplete"), ppParse(fmt.Sprint("s", n), text(n)), ppSync()))
	}
	for n := 1; n <= 4; n++ {
		steps = append(steps, ppAs(ppA, ppOK(row(n)), ppRun(fmt.Sprint("s", n), "")...))
	}
	steps = append(steps,
		ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("b1", ppWho)...),
		// A portal of a statement that a later Parse in the group pushes out.
		ppAs(ppA, ppOK("ParseComplete", "BindComplete", "ParseComplete", "ParseComplete", fmt.Sprintf("DataRow 5|%s", tenantA.ID), "CommandComplete SELECT 1"),
			ppParse("s5", text(5)), ppBindPortal("p5", "s5"), ppParse("s6", text(6)), ppParse("s7", text(7)), ppExecPortal("p5"), ppSync()),
	)
	for n := 1; n <= 7; n++ {
		steps = append(steps, ppAs(ppA, ppOK(row(n)), ppRun(fmt.Sprint("s", n), "")...))
	}
	ppScenario(t, p, ppTenants, steps)
}

// DEALLOCATE name of a statement the client prepared at protocol level, as
// psycopg 3 evicts from its cache: by simple Query and through the
// extended protocol, on a connection that has the statement and on one the
// other tenant wiped (DEALLOCATE ALL), of a statement that does not exist,
// and in a failed transaction block. Both modes answer as PostgreSQL does.
func TestPoolPreparedDeallocateByName(t *testing.T) {
	dealloc := func(name string) *pgproto3.Query { return ppQuery("DEALLOCATE " + name) }
	wipe := ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL"))
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ppScenario(t, p, ppTenants[:2], []ppStep{
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s1", ppWho)...),
			ppAs(ppA, ppOK("CommandComplete DEALLOCATE"), dealloc("s1")),
			ppAs(ppA, ppFail("26000"), ppBind("s1"), ppExec(), ppSync()),
			// The connection lost it to the other tenant's DEALLOCATE ALL.
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s2", ppWho)...),
			wipe,
			ppAs(ppA, ppOK("CommandComplete DEALLOCATE"), dealloc("PREPARE s2")),
			// psycopg 3's own form: the unnamed statement, extended protocol.
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("_pg3_0", ppWho)...),
			wipe,
			ppAs(ppA, ppOK("ParseComplete", "BindComplete", "CommandComplete DEALLOCATE"),
				ppParse("", "DEALLOCATE _pg3_0"), ppBind(""), ppExec(), ppSync()),
			ppAs(ppA, ppFail("26000"), ppBind("_pg3_0"), ppExec(), ppSync()),
			// The same name prepared again is a new statement.
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppCountRow(tenantA))), ppRun("_pg3_0", ppCount)...),
			ppAs(ppA, ppOK("CommandComplete DEALLOCATE"), dealloc("_pg3_0")),
			// Nothing of that name, and pgtenant's own names: the server's error.
			ppAs(ppA, ppFail("26000"), dealloc("nothing")),
			ppAs(ppA, ppFail("26000"), dealloc("pgtenant_s0123456789abcdef")),
			ppAs(ppB, ppOK("ParseComplete", ppRan(ppWhoRow(tenantB))), ppRun("b1", ppWho)...),
			// In a failed block.
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppWhoRow(tenantA))), ppRun("s3", ppWho)...),
			ppAs(ppA, nil, ppQuery("BEGIN; SELECT 1/0")),
			ppAs(ppA, nil, dealloc("s3")),
			ppAs(ppA, nil, ppQuery("ROLLBACK")),
			ppAs(ppB, ppOK(ppRan(ppWhoRow(tenantB))), ppBind("b1"), ppExec(), ppSync()),
		})
	})
}
