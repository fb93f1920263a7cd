package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/audit"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
)

// auditLine is one line of the audit log as the test reads it.
type auditLine struct {
	Kind        string  `json:"kind"`
	Tenant      string  `json:"tenant"`
	User        string  `json:"user"`
	Conn        uint64  `json:"conn"`
	Protocol    string  `json:"protocol"`
	Fingerprint string  `json:"fingerprint"`
	Statement   string  `json:"statement"`
	Unparsed    bool    `json:"unparsed"`
	Rows        *int64  `json:"rows"`
	SQLState    string  `json:"sqlstate"`
	Reason      string  `json:"reason"`
	DurationMS  float64 `json:"duration_ms"`
	Time        string  `json:"time"`
}

// wantAudit is what a line must say: statement is a part of its
// normalized text; rows -1 for no rows field.
type wantAudit struct {
	kind, protocol, statement string
	rows                      int64
	sqlstate                  string
}

// The literal values the test's statements carry: none may reach the log.
var auditLiterals = []string{"lit-simple-7a3", "987654", "lit-ext-9f1", "424242", "refused-lit-55", "copy-lit-xyz", "wrong-pw-31337", "ext-refused-lit"}

func TestAuditLog(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		p := m.start(t, func(c *config.Config) { c.Audit = &config.Audit{Output: path} })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()

		// 1. Simple protocol, tenant A: literals inline, an error, a refusal.
		simple := pgxConnect(t, p, tenantA, pgx.QueryExecModeSimpleProtocol)
		var n int
		if err := simple.QueryRow(ctx, "SELECT count(*) FROM projects WHERE name <> 'lit-simple-7a3' AND 987654 > 0").Scan(&n); err != nil || n != 3 {
			t.Fatalf("simple select: %d %v", n, err)
		}
		if _, err := simple.Exec(ctx, "SELECT 1/0"); pgCode(err) != "22012" {
			t.Fatalf("1/0: %v", err)
		}
		if _, err := simple.Exec(ctx, "SET app.tenant_id = 'refused-lit-55'"); pgCode(err) != "42501" {
			t.Fatalf("SET of the tenant: %v", err)
		}
		if _, err := simple.Exec(ctx, "UPDATE projects SET name = name WHERE name = 'lit-simple-7a3'"); err != nil {
			t.Fatal(err)
		}
		simple.Close(ctx)

		// 2. Extended protocol, tenant B: parameters, a prepared statement
		// run twice, an error, a refused Parse.
		ext := pgxConnect(t, p, tenantB, pgx.QueryExecModeCacheStatement)
		for range 2 {
			rows, err := ext.Query(ctx, "SELECT name FROM projects WHERE name <> $1 LIMIT $2", "lit-ext-9f1", 2)
			if err != nil {
				t.Fatal(err)
			}
			rows.Close()
			if rows.Err() != nil {
				t.Fatal(rows.Err())
			}
		}
		if _, err := ext.Exec(ctx, "SELECT 424242/$1::int", 0); pgCode(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
		if _, err := ext.Exec(ctx, "SELECT set_config('app.tenant_id', $1, false)", "ext-refused-lit"); pgCode(err) != "42501" {
			t.Fatalf("set_config of the tenant: %v", err)
		}
		ext.Close(ctx)

		// 3. A failed login.
		bad := tenantA
		bad.Password = "wrong-pw-31337"
		if c, err := pgx.Connect(ctx, p.connString(bad)); err == nil {
			c.Close(ctx)
			t.Fatal("login with a wrong password succeeded")
		} else if pgCode(err) != "28P01" {
			t.Fatalf("wrong password: %v", err)
		}

		// 4. COPY, tenant A.
		cp := pgxConnect(t, p, tenantA, pgx.QueryExecModeCacheStatement)
		if n, err := cp.CopyFrom(ctx, pgx.Identifier{"copy_sink"}, []string{"line"}, pgx.CopyFromRows([][]any{{"copy-lit-xyz"}, {"copy-lit-xyz2"}})); err != nil || n != 2 {
			t.Fatalf("CopyFrom: %d %v", n, err)
		}
		if _, err := cp.Exec(ctx, "DELETE FROM copy_sink WHERE line LIKE 'copy-lit-%'", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		cp.Close(ctx)

		// Every line is queued before the client has its answer: closing
		// the log writes them out.
		p.srv.Auditor().(*audit.Log).Close()
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, lit := range auditLiterals {
			if strings.Contains(string(raw), lit) {
				t.Errorf("the literal %q appears in the audit log:\n%s", lit, raw)
			}
		}
		byConn := auditByConn(t, raw)
		want := []struct {
			tn    demo.Tenant
			lines []wantAudit
		}{
			{tenantA, []wantAudit{
				{"statement", "simple", "SELECT count(*) FROM projects WHERE name <> $1 AND $2 > $3", 1, ""},
				{"statement", "simple", "SELECT $1/$2", 0, "22012"},
				{"refusal", "simple", "SET app.tenant_id = $1", -1, "42501"},
				{"statement", "simple", "UPDATE projects SET name = name WHERE name = $1", 0, ""},
			}},
			{tenantB, []wantAudit{
				{"statement", "extended", "SELECT name FROM projects WHERE name <> $1 LIMIT $2", 2, ""},
				{"statement", "extended", "SELECT name FROM projects WHERE name <> $1 LIMIT $2", 2, ""},
				{"statement", "extended", "SELECT $2/$1::int", 0, "22012"},
				{"refusal", "extended", "SELECT set_config(", -1, "42501"},
			}},
			{tenantA, []wantAudit{{"login_failed", "", "", -1, "28P01"}}},
			{tenantA, []wantAudit{
				{"statement", "simple", "from stdin", 2, ""},
				{"statement", "simple", "DELETE FROM copy_sink WHERE line LIKE $1", 2, ""},
			}},
		}
		if len(byConn) != len(want) {
			t.Fatalf("audit lines of %d connections, want %d:\n%s", len(byConn), len(want), raw)
		}
		for i, w := range want {
			got := byConn[i]
			if len(got) != len(w.lines) {
				t.Errorf("connection %d: %d lines, want %d:\n%s", i, len(got), len(w.lines), raw)
				continue
			}
			for j, wl := range w.lines {
				checkAuditLine(t, got[j], w.tn, wl)
			}
			if got[0].Kind != "login_failed" && !strings.Contains(p.logs.String(), fmt.Sprintf("conn=%d ", got[0].Conn)) {
				t.Errorf("conn %d of the audit log is not in the session logs", got[0].Conn)
			}
		}
	})
}

// auditByConn splits the log's lines by connection, in connection order.
func auditByConn(t *testing.T, raw []byte) [][]auditLine {
	t.Helper()
	groups := map[uint64][]auditLine{}
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var l auditLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not a JSON line: %s: %v", sc.Text(), err)
		}
		if l.Conn == 0 || l.Time == "" {
			t.Errorf("line without conn or time: %s", sc.Text())
		}
		groups[l.Conn] = append(groups[l.Conn], l)
	}
	ids := make([]uint64, 0, len(groups))
	for id := range groups {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	out := make([][]auditLine, 0, len(ids))
	for _, id := range ids {
		out = append(out, groups[id])
	}
	return out
}

func checkAuditLine(t *testing.T, got auditLine, tn demo.Tenant, w wantAudit) {
	t.Helper()
	wantTenant := tn.ID
	if w.kind == "login_failed" {
		wantTenant = "" // not known before the login succeeds
	}
	bad := got.Kind != w.kind || got.User != tn.User || got.Tenant != wantTenant || got.Protocol != w.protocol ||
		got.SQLState != w.sqlstate || !strings.Contains(got.Statement, w.statement)
	if w.rows < 0 {
		bad = bad || got.Rows != nil
	} else {
		bad = bad || got.Rows == nil || *got.Rows != w.rows
	}
	if w.kind != "login_failed" {
		bad = bad || got.Fingerprint == "" || got.Unparsed
	}
	if w.kind != "statement" {
		bad = bad || got.Reason == ""
	}
	if bad {
		rows := "none"
		if got.Rows != nil {
			rows = fmt.Sprint(*got.Rows)
		}
		t.Errorf("audit line %+v (rows %s), want %+v for user %s tenant %q", got, rows, w, tn.User, wantTenant)
	}
}
