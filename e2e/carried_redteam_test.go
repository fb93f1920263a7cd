package e2e

// Red team of carried session settings in transaction pool mode (SET, RESET,
// RESET ALL strings, DEALLOCATE name). Every subtest states the safe
// behaviour: it FAILS when the attack works.

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// rt13Q runs sql as a simple query: its rows' first columns joined with
// ",", or "ERROR code".
func rt13Q(conn *pgconn.PgConn, sql string) string { return csRun(conn, csStep{sql: sql}) }

// rt13X runs sql with the extended protocol.
func rt13X(conn *pgconn.PgConn, sql string) string { return csRun(conn, csStep{sql: sql, ext: true}) }

// rt13Expect fails the test when sql, run by conn, does not return want.
func rt13Expect(t *testing.T, who string, conn *pgconn.PgConn, sql, want string) {
	t.Helper()
	if got := rt13Q(conn, sql); got != want {
		t.Errorf("%s: %s -> %q, want %q", who, sql, got, want)
	}
}

const rt13Secret = "SELECT coalesce(current_setting('myapp.secret', true), '')"

// rt13Drain reads whatever arrives on c until it is quiet for d.
func rt13Drain(c *ppConn, d time.Duration) []string {
	var out []string
	for {
		_ = c.conn.SetReadDeadline(time.Now().Add(d))
		msg, err := c.fe.Receive()
		if err != nil {
			_ = c.conn.SetReadDeadline(time.Time{})
			return out
		}
		switch msg.(type) {
		case *pgproto3.ParameterStatus, *pgproto3.NoticeResponse:
			continue
		}
		out = append(out, ppReply(msg))
	}
}

func TestRedTeam13(t *testing.T) {
	// SET seed is not setseed(): the guard refuses the function because the
	// seed stays with the shared connection, but the SET spelling of it is
	// a VariableSetStmt the pooled guard allows. RESET ALL does not reset
	// the random generator (seed is GUC_NO_RESET_ALL and pg_settings does not
	// list it), so the next tenant's random() is the attacker's choice.
	t.Run("SetSeedDecidesOtherTenantsRandom", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		var seen []string
		for range 2 {
			if got := rt13Q(a, "SET seed = 0.25"); strings.HasPrefix(got, "ERROR") {
				t.Logf("SET seed refused: %s", got)
				return
			}
			seen = append(seen, rt13Q(b, "SELECT random()::text || ' ' || random()::text"))
		}
		if seen[0] == seen[1] {
			t.Errorf("tenant A's SET seed decides tenant B's random(): B got %q twice", seen[0])
		}
	})

	// A client that leaves right after a SET, before anything reads it back.
	t.Run("DisconnectRightAfterSet", func(t *testing.T) {
		p := startProxy(t, ppPool())
		b := p.pgconnect(t, tenantB)
		for i := range 5 {
			a := ppHijack(t, p.pgconnect(t, tenantA))
			rtSend(t, a, ppQuery("SET work_mem = '77MB'; SET myapp.secret = 'A-secret'"))
			if i%2 == 1 {
				rtSend(t, a, &pgproto3.Terminate{})
			}
			a.conn.Close()
			rt13Expect(t, "B", b, "SHOW work_mem", "4MB")
			rt13Expect(t, "B", b, rt13Secret, "")
			rtWant(t, b, tenantB, "A left after a SET")
		}
		// Inside a block: BEGIN; SET; gone.
		a := ppHijack(t, p.pgconnect(t, tenantA))
		rtSend(t, a, ppQuery("BEGIN; SET myapp.secret = 'A-secret'; SET work_mem = '77MB'"))
		a.conn.Close()
		rt13Expect(t, "B", b, "SHOW work_mem", "4MB")
		rt13Expect(t, "B", b, rt13Secret, "")
	})

	// maxCustomSettings: the relay reads back 64 custom names per client;
	// names that were recorded but never set (a rolled-back block) use them
	// up, and a custom setting after that is never read back, yet the
	// readback declares the connection exactly the client's settings. A
	// same-tenant client with the same settings then gets the connection
	// with the first client's custom setting still on it.
	t.Run("CustomNameLimitLeaksUnreadSetting", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		a2 := p.pgconnect(t, tenantA2)
		b := p.pgconnect(t, tenantB)
		var sb strings.Builder
		sb.WriteString("BEGIN;")
		for i := range 64 {
			fmt.Fprintf(&sb, " SET filler%d.x = 'v';", i)
		}
		sb.WriteString(" ROLLBACK")
		if got := rt13Q(a, sb.String()); strings.HasPrefix(got, "ERROR") {
			t.Fatalf("filler: %s", got)
		}
		// pgtenant carries 64 custom names per session: a 65th is refused
		// (54000) rather than set and left unread on the connection.
		if got := rt13Q(a, "SET myapp.secret = 'A-secret'"); !strings.Contains(got, "54000") {
			t.Errorf("a 65th custom setting: %s, want a 54000 refusal", got)
		}
		rt13Expect(t, "A2 (same tenant, another user)", a2, rt13Secret, "")
		rt13Expect(t, "B", b, rt13Secret, "")
		rt13Expect(t, "A", a, rt13Secret, "")
	})

	// The readback is Parse, Bind, Execute, Close, Close, Sync of a named
	// statement, pgtenant_readback. When its Execute fails (here: the
	// client's own statement_timeout of 1ms cancels it), the Closes are
	// skipped and the statement stays prepared on the shared connection
	// (prepared statements are not transactional). Every later readback on
	// that connection, whoever's, then fails on its Parse (42P05): tenant B's
	// settings are no longer carried, and B's explicit blocks that SET
	// anything are aborted by pgtenant's own hidden statement.
	t.Run("FailedReadbackPoisonsConnection", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		var sb strings.Builder
		for i := range 60 {
			fmt.Fprintf(&sb, "SET slow%d.x = 'v'; ", i)
		}
		rt13Q(a, sb.String())
		for i := range 40 {
			rt13Q(a, fmt.Sprintf("SET statement_timeout = '1ms'; SET work_mem = '%dMB'", 5+i))
		}
		rt13Q(a, "RESET statement_timeout")
		rt13Q(b, "SET work_mem = '6MB'")
		rt13Expect(t, "B", b, "SHOW work_mem", "6MB")
		rt13Expect(t, "B", b, "BEGIN; SET work_mem = '7MB'", "")
		rt13Expect(t, "B", b, "SELECT 1", "1")
		rt13Expect(t, "B", b, "COMMIT", "")
		rt13Expect(t, "B", b, "SHOW work_mem", "7MB")
		if log, err := pgcluster.Shared().LogContents(); err == nil {
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, "pgtenant_readback") && strings.Contains(line, "ERROR") {
					t.Logf("server log: %s", line)
					break
				}
			}
		}
	})

	// The same with the assertion: with a carried statement_timeout of 1ms
	// and many carried settings, the client's own assertion (Parse
	// pgtenant_assert, Bind, Execute, Close, Close per setting) is cancelled
	// midway and leaves pgtenant_assert prepared on the shared connection.
	// Tenant B's re-assertion behind RESET ALL (asyncpg's reset string)
	// then fails on its Parse, and B's session is ended.
	t.Run("FailedAssertionPoisonsConnection", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		var sb strings.Builder
		for i := range 60 {
			fmt.Fprintf(&sb, "SET slow%d.x = 'v'; ", i)
		}
		rt13Q(a, sb.String())
		rt13Q(a, "SET statement_timeout = '1ms'")
		errs := map[string]int{}
		for i := range 40 {
			errs[rt13Q(a, fmt.Sprintf("SELECT 1000+%d", i))]++
			errs[rt13X(a, fmt.Sprintf("SELECT 1000+%d", i))]++
			errs[rt13Q(a, fmt.Sprintf("SET work_mem = '%dMB'; SELECT 1", i+5))]++
		}
		t.Logf("A's results under 1ms: %v", errs)
		rt13Q(a, "RESET statement_timeout")
		rt13Expect(t, "B", b, "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;", "")
		rtWant(t, b, tenantB, "B's RESET ALL after A's cancelled assertions")
		if log, err := pgcluster.Shared().LogContents(); err == nil {
			for _, line := range strings.Split(log, "\n") {
				if strings.Contains(line, "pgtenant_assert") && strings.Contains(line, "ERROR") {
					t.Logf("server log: %s", line)
					break
				}
			}
		}
	})

	// A statement_timeout so small that pgtenant's own statements (the
	// readback, the reset) are cancelled.
	t.Run("TinyStatementTimeout", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		for range 5 {
			rt13Q(a, "SET statement_timeout = '1ms'; SET myapp.secret = 'A-secret'")
			rt13Q(a, "SELECT count(*) FROM pg_settings, pg_settings s2")
			rt13Expect(t, "B", b, "SHOW statement_timeout", "0")
			rt13Expect(t, "B", b, rt13Secret, "")
			rtWant(t, b, tenantB, "A's statement_timeout 1ms")
		}
	})

	// default_transaction_read_only / SET SESSION CHARACTERISTICS: the
	// connection's next holder (its reset, DISCARD SEQUENCES, its writes).
	t.Run("ReadOnlyDefaults", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		rt13Q(a, "SET default_transaction_read_only = on")
		rt13Q(a, "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE")
		rt13Expect(t, "A", a, "SHOW transaction_read_only", "on")
		rt13Expect(t, "B", b, "SHOW transaction_read_only", "off")
		rt13Expect(t, "B", b, "SHOW transaction_isolation", "read committed")
		rt13Expect(t, "B", b, "INSERT INTO copy_sink (line) VALUES ('rt13-ro') RETURNING line", "rt13-ro")
		rt13Expect(t, "B", b, "SELECT nextval('projects_id_seq') > 0", "t")
		rt13Expect(t, "A", a, "SHOW transaction_isolation", "serializable")
		rtWant(t, a, tenantA, "read only defaults")
		rtWant(t, b, tenantB, "read only defaults")
	})

	// idle_in_transaction_session_timeout: the server ends the shared
	// connection under the client that set it.
	t.Run("IdleInTransactionTimeoutKillsSharedConnection", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		rt13Q(a, "SET idle_in_transaction_session_timeout = '20ms'")
		rt13Q(a, "BEGIN")
		time.Sleep(200 * time.Millisecond)
		t.Logf("A after the timeout: %s", rt13Q(a, "SELECT 1"))
		rtWant(t, b, tenantB, "A's idle_in_transaction_session_timeout")
		rt13Expect(t, "B", b, "SHOW idle_in_transaction_session_timeout", "0")
	})

	// SET, then COPY FROM STDIN in the same query string: no readback may
	// land among the copy data.
	t.Run("SetThenCopyInOneQuery", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ac := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		a := ppHijack(t, ac)
		rtSend(t, a, ppQuery("SET myapp.secret = 'A-secret'; COPY copy_sink (line) FROM STDIN"))
		got, err := rtRead(a, 5*time.Second, func(m pgproto3.BackendMessage) bool {
			_, ok := m.(*pgproto3.CopyInResponse)
			return ok || rtIsRFQ(m)
		})
		if err != nil {
			t.Fatalf("COPY start: %v %v", got, err)
		}
		rtSend(t, a, &pgproto3.CopyData{Data: []byte("rt13-copy\n")}, &pgproto3.CopyDone{})
		if got, err := rtRead(a, 5*time.Second, rtIsRFQ); err != nil {
			t.Fatalf("COPY end: %v %v", got, err)
		}
		got2, err := a.exchange([]pgproto3.FrontendMessage{ppQuery(rt13Secret)}, 0)
		if err != nil || !strings.Contains(strings.Join(got2, ";"), "A-secret") {
			t.Errorf("A after SET; COPY: %v %v", got2, err)
		}
		rt13Expect(t, "B", b, rt13Secret, "")
		rtWant(t, b, tenantB, "SET; COPY")
	})
}

// Differential scenarios (replies compared with PostgreSQL's own).
func TestRedTeam13Diff(t *testing.T) {
	// DEALLOCATE of a statement the held connection lacks: pgtenant first
	// prepares it in a hidden round trip, inside the client's block. The
	// text no longer parses there (SET LOCAL search_path): the hidden Parse
	// fails and aborts the client's transaction, where PostgreSQL's
	// DEALLOCATE just succeeds.
	t.Run("DeallocateHiddenParseAbortsBlock", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", "SELECT count(*) FROM projects"), ppSync()),
			ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, nil, ppQuery("BEGIN; SET LOCAL search_path = pg_catalog")),
			ppAs(ppA, nil, ppQuery("DEALLOCATE s1")),
			ppAs(ppA, nil, ppQuery("SELECT 1")),
			ppAs(ppA, nil, ppQuery("COMMIT")),
			ppAs(ppA, nil, ppQuery(ppWho)),
		})
	})

	// DEALLOCATE s1 as a Parse that is not the first message of its group:
	// no hidden prepare, so the server's DEALLOCATE finds nothing.
	t.Run("DeallocateParseMidGroup", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, ppOK("ParseComplete"), ppParse("s1", ppWho), ppSync()),
			ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, nil, ppParse("x", "SELECT 1"), ppParse("d", "DEALLOCATE s1"), ppBind("d"), ppExec(), ppSync()),
			ppAs(ppA, nil, ppParse("s1", ppWho), ppSync()),
			ppAs(ppA, nil, ppBind("s1"), ppExec(), ppSync()),
		})
	})

	// A SET by the extended protocol, then a Query before any Sync.
	t.Run("ExtendedSetThenQueryNoSync", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, nil, ppParse("", "SET myapp.secret = 'A-secret'"), ppBind(""), ppExec(), ppQuery(rt13Secret)),
			ppAs(ppB, nil, ppQuery(rt13Secret)),
			ppAs(ppA, nil, ppQuery(rt13Secret)),
			ppAs(ppB, nil, ppQuery(ppWho)),
			ppAs(ppA, nil, ppQuery(ppWho)),
		})
	})

	// A pipeline: SET, Flush, read, then Sync later.
	t.Run("PipelineSetFlushThenSync", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			{who: ppA, msgs: []pgproto3.FrontendMessage{ppParse("", "SET myapp.secret = 'A-secret'"), ppBind(""), ppExec(), ppFlush()}, read: 3},
			ppAs(ppA, nil, ppParse("q", rt13Secret), ppBind("q"), ppExec(), ppSync()),
			ppAs(ppB, nil, ppQuery(rt13Secret)),
			ppAs(ppA, nil, ppQuery(rt13Secret)),
			ppAs(ppB, nil, ppQuery(ppWho)),
		})
	})

	// RESET ALL in a failed transaction block: PostgreSQL says 25P02 and the
	// session goes on.
	t.Run("ResetAllInFailedBlock", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, nil, ppQuery("BEGIN; SELECT 1/0")),
			ppAs(ppA, nil, ppQuery("RESET ALL")),
			ppAs(ppA, nil, ppQuery("ROLLBACK")),
			ppAs(ppA, nil, ppQuery(ppWho)),
			ppAs(ppB, nil, ppQuery(ppWho)),
		})
	})

	// DISCARD ALL inside a block fails (25001) in PostgreSQL.
	t.Run("DiscardAllInBlock", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, nil, ppQuery("BEGIN; DISCARD ALL")),
			ppAs(ppA, nil, ppQuery("ROLLBACK")),
			ppAs(ppA, nil, ppQuery(ppWho)),
			ppAs(ppB, nil, ppQuery(ppWho)),
		})
	})

	// A statement prepared before a SET search_path, prepared again by
	// pgtenant on a connection that lost it: PostgreSQL keeps resolving
	// it with the search_path it was prepared under; pgtenant's re-Parse
	// uses the client's current one.
	t.Run("ReprepareAfterSearchPathChange", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, nil, ppParse("s1", "SELECT count(*) FROM projects"), ppSync()),
			ppAs(ppA, nil, ppQuery("SET search_path = pg_catalog")),
			ppAs(ppB, nil, ppQuery("DEALLOCATE ALL")),
			ppAs(ppA, nil, ppBind("s1"), ppExec(), ppSync()),
		})
	})

	// DEALLOCATE of pgtenant's own names.
	t.Run("DeallocateOwnNames", func(t *testing.T) {
		p := startProxy(t, ppPool())
		steps := []ppStep{ppAs(ppB, nil, ppQuery(ppWho)), ppAs(ppA, nil, ppQuery(ppWho))}
		for _, n := range []string{"pgtenant_ctx0", "pgtenant_ctx1", "pgtenant_assert", "pgtenant_readback", "\"pgtenant_ctx0\"", "PGTENANT_CTX0", "pgtenant_none"} {
			steps = append(steps,
				ppAs(ppA, ppFail("26000"), ppQuery("DEALLOCATE "+n)),
				ppAs(ppA, nil, ppParse("d", "DEALLOCATE "+n), ppBind("d"), ppExec(), ppSync()),
				ppAs(ppA, nil, ppCloseStmt("d"), ppSync()),
				ppAs(ppA, nil, ppQuery(ppWho)),
				ppAs(ppB, nil, ppQuery(ppWho)),
			)
		}
		ppScenario(t, p, ppTenants, steps)
	})
}

// rt13RawDiff sends the same messages directly and through the proxy (after
// setup steps run by ppScenario-like exchanges) and compares everything
// that arrives until a quiet period.
func rt13RawDiff(t *testing.T, p *testProxy, setup []ppStep, attack []pgproto3.FrontendMessage, after []ppStep) {
	t.Helper()
	var direct, proxied []*ppConn
	for _, tn := range ppTenants {
		direct = append(direct, ppHijack(t, directConnect(t, tn.ID)))
		proxied = append(proxied, ppHijack(t, p.pgconnect(t, tn)))
	}
	run := func(conns []*ppConn) []string {
		var out []string
		for _, r := range ppRunSteps(conns, setup) {
			out = append(out, strings.Join(r, "; "))
		}
		for _, m := range attack {
			conns[ppA].fe.Send(m)
		}
		if err := conns[ppA].fe.Flush(); err != nil {
			return append(out, "send: "+err.Error())
		}
		out = append(out, "ATTACK: "+strings.Join(rt13Drain(conns[ppA], 1500*time.Millisecond), "; "))
		for _, r := range ppRunSteps(conns, after) {
			out = append(out, strings.Join(r, "; "))
		}
		return out
	}
	d, g := run(direct), run(proxied)
	if strings.Join(d, "\n") != strings.Join(g, "\n") {
		if l, err := pgcluster.Shared().LogContents(); err == nil && len(l) > 3000 {
			for _, line := range strings.Split(l, "\n") {
				if strings.Contains(line, "ERROR") || strings.Contains(line, "STATEMENT") || strings.Contains(line, "DETAIL") {
					t.Logf("LOG %s", line)
				}
			}
		}
		t.Errorf("replies differ\nPostgreSQL:\n  %s\npgtenant:\n  %s", strings.Join(d, "\n  "), strings.Join(g, "\n  "))
	}
}

func TestRedTeam13Pipeline(t *testing.T) {
	// DEALLOCATE name as a Query that ends an unsynced group: pgtenant's
	// hidden prepare (Close, Parse, Sync) lands in the middle of the
	// client's group; after an error there, its Sync ends the server's
	// skipping and the DEALLOCATE, which PostgreSQL skips, runs.
	for _, first := range []string{"SELECT 1/0", "SELECT 1", "INSERT INTO copy_sink (line) VALUES ('rt13-pipe')"} {
		t.Run("DeallocateQueryEndsGroup/"+strings.Fields(first)[0]+"_"+strings.Fields(first)[1], func(t *testing.T) {
			p := startProxy(t, ppPool())
			rt13RawDiff(t, p,
				[]ppStep{
					ppAs(ppA, nil, ppParse("s1", ppWho), ppSync()),
					ppAs(ppB, nil, ppQuery("DEALLOCATE ALL")),
				},
				[]pgproto3.FrontendMessage{ppParse("", first), ppBind(""), ppExec(), ppQuery("DEALLOCATE s1"), ppSync()},
				[]ppStep{
					ppAs(ppA, nil, ppQuery(ppWho)),
					ppAs(ppB, nil, ppQuery(ppWho)),
					ppAs(ppA, nil, ppQuery("SELECT count(*) > 0 FROM copy_sink WHERE line = 'rt13-pipe'")),
				})
		})
	}
	// A SET as a Query ending an unsynced group that failed.
	t.Run("SetQueryInFailedGroup", func(t *testing.T) {
		p := startProxy(t, ppPool())
		rt13RawDiff(t, p, nil,
			[]pgproto3.FrontendMessage{ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppQuery("SET myapp.secret = 'A-secret'"), ppSync()},
			[]ppStep{
				ppAs(ppA, nil, ppQuery(rt13Secret)),
				ppAs(ppB, nil, ppQuery(rt13Secret)),
				ppAs(ppB, nil, ppQuery(ppWho)),
			})
	})
	// After A's session is ended by a RESET ALL in a failed block, B must
	// get a working connection with its own context.
	t.Run("SessionKilledInFailedBlockThenB", func(t *testing.T) {
		p := startProxy(t, ppPool())
		a := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		rt13Q(a, "BEGIN; SET myapp.secret = 'A-secret'; INSERT INTO copy_sink (line) VALUES ('rt13-killed'); SELECT 1/0")
		t.Logf("A RESET ALL: %s", rt13Q(a, "RESET ALL"))
		t.Logf("A ROLLBACK: %s", rt13Q(a, "ROLLBACK"))
		rtWant(t, b, tenantB, "A's session ended in a failed block")
		rt13Expect(t, "B", b, rt13Secret, "")
		rt13Expect(t, "B", b, "SHOW transaction_isolation", "read committed")
	})
	// A custom setting whose name part is a reserved word: PostgreSQL takes
	// it quoted, pgtenant asserts it unquoted.
	t.Run("CustomNameReservedWord", func(t *testing.T) {
		p := startProxy(t, ppPool())
		ppScenario(t, p, ppTenants, []ppStep{
			ppAs(ppA, nil, ppQuery(`SET "user.id" = '42'`)),
			ppAs(ppB, nil, ppQuery(ppWho)),
			ppAs(ppA, nil, ppQuery("SELECT current_setting('user.id')")),
			ppAs(ppA, nil, ppQuery(ppWho)),
		})
	})
}

// Two clients of different tenants change their settings concurrently on a
// pool of one; each must always see its own.
func TestRedTeam13Concurrent(t *testing.T) {
	p := startProxy(t, ppPool())
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	for who, tn := range ppTenants[:2] {
		conn := p.pgconnect(t, tn)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 150 {
				v := fmt.Sprintf("%c%d", "AB"[who], i)
				mem := fmt.Sprintf("%dMB", who*200+i+64)
				var got string
				switch i % 3 {
				case 0:
					rt13Q(conn, "SET myapp.secret = '"+v+"'; SET work_mem = '"+mem+"'")
				case 1:
					rt13X(conn, "SET myapp.secret = '"+v+"'")
					rt13X(conn, "SET work_mem = '"+mem+"'")
				case 2:
					rt13Q(conn, "BEGIN; SET myapp.secret = '"+v+"'; SET work_mem = '"+mem+"'; COMMIT")
				}
				got = rt13Q(conn, rt13Secret+" || ' ' || current_setting('work_mem') || ' ' || current_setting('app.tenant_id')")
				want := v + " " + mem + " " + tn.ID
				if got != want {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("%s step %d: got %q want %q", tn.Name, i, got, want))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Errorf("%d wrong readings, first: %v", len(bad), bad[:min(len(bad), 5)])
	}
}
