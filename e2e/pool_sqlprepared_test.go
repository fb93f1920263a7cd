package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// SQL PREPARE, EXECUTE and DEALLOCATE in a simple Query are carried like
// protocol-level statements in transaction mode: each client's under
// names of pgtenant's, prepared again on whichever connection it holds
// (here: after another tenant's DEALLOCATE ALL emptied the one connection).
// Every reply is PostgreSQL's own.
func TestPoolPreparedSQL(t *testing.T) {
	q := func(sql string) *pgproto3.Query { return ppQuery(sql) }
	count := ppCount + " WHERE id > $1"
	wipe := ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), q("DEALLOCATE ALL"))
	rows := func(row string) []string {
		cols := "RowDescription tenant,n"
		if strings.Contains(row, ",") {
			cols = "RowDescription tenant,names"
		}
		return ppOK(cols, row, "CommandComplete SELECT 1")
	}
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ppScenario(t, p, ppTenants[:2], []ppStep{
			ppAs(ppA, ppOK("CommandComplete PREPARE"), q("PREPARE q (int) AS "+count)),
			ppAs(ppA, rows(ppCountRow(tenantA)), q("EXECUTE q(0)")),
			// The same name, another tenant: its own statement.
			ppAs(ppB, ppOK("CommandComplete PREPARE"), q("prepare Q as "+ppWho)),
			ppAs(ppB, rows(ppWhoRow(tenantB)), q("execute q")),
			wipe,
			ppAs(ppA, rows(ppCountRow(tenantA)), q("/* again */ EXECUTE q (0);")),
			ppAs(ppA, ppFail("42P05"), q("PREPARE q AS SELECT 1")),
			// At protocol level, and from a Parse's text.
			wipe,
			ppAs(ppA, ppOK(ppRan(ppCountRow(tenantA))), ppBind("q", "0"), ppExec(), ppSync()),
			wipe,
			ppAs(ppA, ppOK("ParseComplete", ppRan(ppCountRow(tenantA))), ppRun("", "EXECUTE q(0)")...),
			ppAs(ppA, ppOK("ParseComplete"), ppParse("run_q", "EXECUTE q(0)"), ppSync()),
			wipe,
			ppAs(ppA, ppOK(ppRan(ppCountRow(tenantA))), ppBind("run_q"), ppExec(), ppSync()),
			ppAs(ppA, ppOK("ParameterDescription [23]", "RowDescription tenant,n"), ppDescribeStmt("q"), ppSync()),
			// Several in one Query, and inside a transaction block.
			ppAs(ppA, ppOK("CommandComplete BEGIN", "RowDescription tenant,n", ppCountRow(tenantA), "CommandComplete SELECT 1",
				"RowDescription tenant,n", ppCountRow(tenantA), "CommandComplete SELECT 1", "CommandComplete COMMIT"),
				q("BEGIN; EXECUTE q(0); EXECUTE q(-1); COMMIT")),
			ppAs(ppA, nil, q("BEGIN")),
			ppAs(ppA, nil, q("PREPARE inblock AS SELECT $1::int + 1")),
			ppAs(ppA, nil, q("EXECUTE inblock(1)")),
			ppAs(ppA, nil, q("ROLLBACK")),
			ppAs(ppB, nil, q("EXECUTE inblock(1)")),
			wipe,
			ppAs(ppA, nil, q("EXECUTE inblock(2)")),
			// A PREPARE that fails leaves nothing behind.
			ppAs(ppA, nil, q("BEGIN")),
			ppAs(ppA, nil, q("SELECT 1/0")),
			ppAs(ppA, []string{"ErrorResponse 25P02", "ReadyForQuery E"}, q("PREPARE failed AS SELECT 1")),
			ppAs(ppA, nil, q("ROLLBACK")),
			ppAs(ppA, ppFail("26000"), q("EXECUTE failed")),
			ppAs(ppA, ppFail("42P01"), q("PREPARE missing AS "+ppMissing)),
			ppAs(ppA, ppFail("26000"), q("EXECUTE missing")),
			// DEALLOCATE, and the name free again.
			ppAs(ppA, ppOK("CommandComplete DEALLOCATE"), q("DEALLOCATE q")),
			ppAs(ppA, ppFail("26000"), q("EXECUTE q(0)")),
			ppAs(ppA, ppOK("CommandComplete PREPARE"), q("PREPARE q AS "+ppWho)),
			wipe,
			ppAs(ppA, rows(ppWhoRow(tenantA)), q("EXECUTE q")),
			ppAs(ppB, ppFail("26000"), q("EXECUTE q")),
		})
	})
}

// The errors about carried statements name them as the client does, with
// PostgreSQL's messages.
func TestPoolPreparedSQLErrors(t *testing.T) {
	ctx := context.Background()
	run := func(t *testing.T, conn *pgconn.PgConn) []string {
		var msgs []string
		for _, sql := range []string{
			"PREPARE p (int) AS SELECT $1",
			"PREPARE p AS SELECT 1",
			"EXECUTE p(1, 2)",
			"EXECUTE p('x')",
			"DEALLOCATE p",
			"EXECUTE p(1)",
		} {
			err := conn.Exec(ctx, sql).Close()
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) {
				msgs = append(msgs, pgErr.Code+" "+pgErr.Message)
			} else {
				msgs = append(msgs, "ok")
			}
		}
		return msgs
	}
	want := run(t, directConnect(t, tenantA.ID))
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		got := run(t, p.pgconnect(t, tenantA))
		for i := range want {
			if i >= len(got) || got[i] != want[i] {
				t.Errorf("through pgtenant %q, PostgreSQL %q", got, want)
				break
			}
		}
	})
}

// A PREPARE sent as a Parse (PgJDBC sends every statement so) is carried
// too, from the Bind that runs it: no pin, and every reply PostgreSQL's.
func TestPoolPreparedSQLByParse(t *testing.T) {
	q := func(sql string) *pgproto3.Query { return ppQuery(sql) }
	count := ppCount + " WHERE id > $1"
	wipe := ppAs(ppB, ppOK("CommandComplete DEALLOCATE ALL"), q("DEALLOCATE ALL"))
	rows := ppOK("RowDescription tenant,n", ppCountRow(tenantA), "CommandComplete SELECT 1")
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		ppScenario(t, p, ppTenants[:2], []ppStep{
			ppAs(ppA, ppOK("ParseComplete", "BindComplete", "CommandComplete PREPARE"), ppRun("", "PREPARE jq (int) AS "+count)...),
			ppAs(ppA, rows, q("EXECUTE jq(0)")),
			ppAs(ppB, ppFail("26000"), q("EXECUTE jq(0)")),
			wipe,
			ppAs(ppA, ppOK("ParseComplete", "BindComplete", ppCountRow(tenantA), "CommandComplete SELECT 1"), ppRun("", "EXECUTE jq(0)")...),
			// Parsed once, run twice: the second run finds the name taken.
			ppAs(ppA, ppOK("ParseComplete"), ppParse("mk", "PREPARE jr AS "+ppWho), ppSync()),
			ppAs(ppA, ppOK("BindComplete", "CommandComplete PREPARE"), ppBind("mk"), ppExec(), ppSync()),
			ppAs(ppA, ppFail("42P05", "BindComplete"), ppBind("mk"), ppExec(), ppSync()),
			wipe,
			ppAs(ppA, ppOK("RowDescription tenant,names", ppWhoRow(tenantA), "CommandComplete SELECT 1"), q("EXECUTE jr")),
			// A Bind that fails makes nothing.
			ppAs(ppA, nil, q("BEGIN; SELECT 1/0")),
			ppAs(ppA, nil, ppRun("", "PREPARE jf AS SELECT 1")...),
			ppAs(ppA, nil, q("ROLLBACK")),
			ppAs(ppA, ppFail("26000"), q("EXECUTE jf")),
		})
	})
}
