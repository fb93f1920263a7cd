package e2e

// Red-team findings against the features of session 6 (SQL PREPARE carried
// in transaction mode, notification channels per tenant, per-tenant limits
// and read-only users, the audit log). Each test states what should hold
// and failed while the finding stood (all six are fixed; they stay as
// regression tests).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// rtExec runs sql on conn and returns its error.
func rtExec(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql).ReadAll()
	return err
}

// rtScope is the channel prefix pgtenant gives tenant tn upstream: a hash
// of the tenant id, with no secret in it.
func rtScope(tn demo.Tenant) string {
	sum := sha256.Sum256([]byte(tn.ID))
	return hex.EncodeToString(sum[:8]) + ":"
}

// Finding 1: pg_notify nested in pg_notify's first argument (legal SQL,
// PostgreSQL runs it) makes two overlapping text edits; applying them
// panics in the relay and ends the session (and, in transaction mode, the
// pooled connection), instead of running the statement scoped.
func TestRedTeamS6Finding1(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(2))
		a := listen(t, p, tenantA)
		mustExec(t, a.conn, "LISTEN innerch; LISTEN outerx")
		sender := p.pgconnect(t, tenantA)
		if err := rtExec(sender, "SELECT pg_notify(pg_notify('innerch', 'i')::text || 'outerx', 'o')"); err != nil {
			t.Errorf("nested pg_notify: %v (PostgreSQL runs it)", err)
		}
		if err := rtExec(sender, "SELECT 1"); err != nil {
			t.Errorf("the session after a nested pg_notify: %v", err)
		}
		if got := a.drain(t, 2); strings.Join(got, ";") != "innerch=i;outerx=o" {
			t.Errorf("heard %q, want innerch=i;outerx=o", got)
		}
		if strings.Contains(p.logs.String(), "panic") {
			t.Errorf("the relay panicked")
		}
	})
}

// Finding 2: "pg_notify may not be stored in the database through
// pgtenant" holds for CREATE MATERIALIZED VIEW, but EXPLAIN ANALYZE CREATE
// MATERIALIZED VIEW (which creates it too) counts as running now: tenant A
// stores a pg_notify scoped to A in a materialized view, and when tenant B
// refreshes it, B's rows (RLS under B's context) go to A's listener.
func TestRedTeamS6Finding2(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		// A schema the tenant role may create in (doctor flags it, but the
		// guard's refusal of stored pg_notify must not depend on it).
		superQuery(t, "DROP SCHEMA IF EXISTS rt_s6 CASCADE; CREATE SCHEMA rt_s6; GRANT USAGE, CREATE ON SCHEMA rt_s6 TO "+demo.RLSRole)
		t.Cleanup(func() { superQuery(t, "DROP SCHEMA IF EXISTS rt_s6 CASCADE") })
		p := startProxy(t, m.config(2))
		a := listen(t, p, tenantA)
		mustExec(t, a.conn, "LISTEN leak")
		// The same statement without EXPLAIN is refused.
		err := rtExec(a.conn, "CREATE MATERIALIZED VIEW rt_s6.mv AS SELECT name, pg_notify('leak', name) IS NULL AS sent FROM projects")
		if pgCode(err) != "42501" {
			t.Fatalf("CREATE MATERIALIZED VIEW with pg_notify: %v, want 42501", err)
		}
		err = rtExec(a.conn, "EXPLAIN ANALYZE CREATE MATERIALIZED VIEW rt_s6.mv AS SELECT name, pg_notify('leak', name) IS NULL AS sent FROM projects WITH NO DATA")
		if pgCode(err) != "42501" {
			t.Errorf("EXPLAIN ANALYZE CREATE MATERIALIZED VIEW with pg_notify: %v, want 42501", err)
		}
		if err != nil {
			return
		}
		b := p.pgconnect(t, tenantB)
		mustExec(t, b, "REFRESH MATERIALIZED VIEW rt_s6.mv")
		for _, got := range a.drain(t, 1) {
			for _, name := range demo.Projects[tenantB.ID] {
				if strings.HasSuffix(got, "="+name) {
					t.Errorf("tenant A heard tenant B's project %q", got)
				}
			}
		}
	})
}

// Finding 3: the channel scope is a hash of the tenant id with no secret,
// so anyone who knows another tenant's id can write its scoped channel
// name. A function in the database that takes a channel name (a common
// notify helper, or a trigger taking the channel from a row) then sends
// to tenant B's listeners, whose client hears it under its own name. The
// README says no client of pgtenant hears what such functions send.
func TestRedTeamS6Finding3(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		superQuery(t, `CREATE OR REPLACE FUNCTION public.rt_s6_notify(ch text, msg text) RETURNS void
			LANGUAGE sql AS $$ SELECT pg_notify(ch, msg) $$;
			GRANT EXECUTE ON FUNCTION public.rt_s6_notify(text, text) TO `+demo.RLSRole)
		t.Cleanup(func() { superQuery(t, "DROP FUNCTION IF EXISTS public.rt_s6_notify(text, text)") })
		p := startProxy(t, m.config(2))
		b := listen(t, p, tenantB)
		mustExec(t, b.conn, "LISTEN jobs")
		a := p.pgconnect(t, tenantA)
		mustExec(t, a, "SELECT public.rt_s6_notify('"+rtScope(tenantB)+"jobs', 'forged by tenant A')")
		if got := b.drain(t, 1); len(got) != 0 {
			t.Errorf("tenant B heard %q from tenant A", got)
		}
	})
}

// Finding 4: the audit log elides the double-quoted parts of a refusal's
// reason by pairing quote characters; a quoted token that holds a double
// quote itself (a JSON literal, say) breaks the pairing, and the literal's
// text between its own quotes is written to the log.
func TestRedTeamS6Finding4(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		p := m.start(t, func(c *config.Config) { c.Audit = &config.Audit{Output: path} })
		a := p.pgconnect(t, tenantA)
		// An unterminated literal (a client's quoting bug) in a statement the
		// guard parses ("set"): refused with the parser's message.
		err := rtExec(a, `UPDATE projects SET name = '{"token": "s3cr3t-tok-991"} WHERE id = 1`)
		if pgCode(err) != "42601" {
			t.Fatalf("unterminated literal: %v, want 42601", err)
		}
		var raw []byte
		eventually(t, 5*time.Second, "the refusal in the audit log", func() bool {
			raw, _ = os.ReadFile(path)
			return strings.Contains(string(raw), `"refusal"`)
		})
		if strings.Contains(string(raw), "s3cr3t-tok-991") {
			t.Errorf("a literal reached the audit log: %s", raw)
		}
	})
}

// Finding 5: transactions_per_second takes one token per unit (a Query, a
// Sync group), not per transaction: one simple Query whose statements are
// separated by COMMIT runs as many upstream transactions as it holds, so a
// tenant limited to one transaction every two seconds runs twenty in one
// round trip. (The README: a tenant cannot lift its transactions_per_second.)
func TestRedTeamS6Finding5(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, tenantLimits(config.TenantLimits{TransactionsPerSecond: ptr(0.5), RateLimitWait: dur(100 * time.Millisecond)}))
		a := p.pgconnect(t, tenantA)
		const n = 20
		sql := strings.Repeat("SELECT pg_catalog.txid_current(); COMMIT; ", n)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		results, err := a.Exec(ctx, sql).ReadAll()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "53400" {
			return // the limit held
		}
		if err != nil {
			t.Fatalf("%d transactions in one Query: %v", n, err)
		}
		xids := map[string]bool{}
		for _, r := range results {
			for _, row := range r.Rows {
				xids[string(row[0])] = true
			}
		}
		if len(xids) > 1 {
			t.Errorf("one Query ran %d upstream transactions under a limit of 0.5 per second (burst 1, rate_limit_wait 100ms)", len(xids))
		}
	})
}

// Finding 6 (correctness, transaction mode): EXECUTE of a carried SQL
// statement is renamed only where its name token, as written, equals the
// parser's name. A Unicode-escaped name (EXECUTE U&"q") or one longer than
// 63 bytes (PostgreSQL truncates it to the prepared name) is sent upstream
// unrenamed and fails with 26000 where PostgreSQL runs the statement.
// Transaction mode only: session mode relays the names unchanged.
func TestRedTeamS6Finding6(t *testing.T) {
	q := func(sql string) *pgproto3.Query { return ppQuery(sql) }
	rows := ppOK("RowDescription tenant,names", ppWhoRow(tenantA), "CommandComplete SELECT 1")
	long := strings.Repeat("p", 63)
	p := startProxy(t, ppPool())
	ppScenario(t, p, ppTenants, []ppStep{
		ppAs(ppA, ppOK("CommandComplete PREPARE"), q("PREPARE q AS "+ppWho)),
		ppAs(ppA, rows, q(`EXECUTE U&"q"`)),
		ppAs(ppA, rows, q(`EXECUTE U&"\0071"`)),
		ppAs(ppA, ppOK("CommandComplete PREPARE"), q("PREPARE "+long+" AS "+ppWho)),
		ppAs(ppA, rows, q("EXECUTE "+long+"zzz")),
	})
}

// Finding 5, extended protocol: a group that commits between its Executes
// before one Sync runs a transaction per commit, and takes a token for each.
func TestRedTeamS6Finding5Extended(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, tenantLimits(config.TenantLimits{TransactionsPerSecond: ptr(0.5), RateLimitWait: dur(100 * time.Millisecond)}))
		a := p.pgconnect(t, tenantA)
		batch := &pgconn.Batch{}
		for range 20 {
			batch.ExecParams("SELECT pg_catalog.txid_current()", nil, nil, nil, nil)
			batch.ExecParams("COMMIT", nil, nil, nil, nil)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		results, err := a.ExecBatch(ctx, batch).ReadAll()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "53400" {
			return // the limit held
		}
		if err != nil {
			t.Fatalf("20 transactions in one group: %v", err)
		}
		xids := map[string]bool{}
		for _, r := range results {
			for _, row := range r.Rows {
				xids[string(row[0])] = true
			}
		}
		if len(xids) > 1 {
			t.Errorf("one group ran %d upstream transactions under a limit of 0.5 per second", len(xids))
		}
	})
}
