package e2e

// Red team, session 8: odd but legal protocol use, compared message by
// message with what PostgreSQL answers (relaySameAsPostgres), in both pool
// modes. These found no difference; they keep the corners covered.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

type rt8Case struct {
	desc  string
	steps []relayStep
}

// rt8Run is an unnamed-statement Parse, Bind and Execute of sql, no Sync.
func rt8Run(sql string) []pgproto3.FrontendMessage {
	return []pgproto3.FrontendMessage{ppParse("", sql), ppBind(""), ppExec()}
}

func rt8Cat(parts ...[]pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
	var out []pgproto3.FrontendMessage
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func rt8Same(t *testing.T, prefix string, cases []rt8Case) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		for i, tc := range cases {
			t.Run(tc.desc, func(t *testing.T) {
				p := m.start(t)
				relaySameAsPostgres(t, p, tenantA, fmt.Sprintf("%s_%d", prefix, i), tc.steps)
			})
		}
	})
}

// COPY run by Execute, with a Flush and no Sync: the copy data, stray
// messages and errors come later, in other writes.
func TestRedTeamS8ExtendedCopyWithFlush(t *testing.T) {
	relayCleanCopySink(t)
	data := func(s string) *pgproto3.CopyData {
		return &pgproto3.CopyData{Data: []byte(relayLine + "-s8-" + s + "\n")}
	}
	done := &pgproto3.CopyDone{}
	out := "COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT"
	in := "COPY copy_sink (line) FROM STDIN"
	rt8Same(t, "rt8_copy", []rt8Case{
		{"COPY FROM STDIN, Flush, the data in a later write", []relayStep{
			relayAt(rt8Cat(rt8Run(in), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(data("a"), data("b"), done, ppSync()),
		}},
		{"COPY FROM STDIN, Flush, Sync and Flush among the data", []relayStep{
			relayAt(rt8Cat(rt8Run(in), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(data("c"), ppSync(), ppFlush(), data("d"), done),
			relayAt(ppSync()),
		}},
		{"COPY FROM STDIN, Flush, CopyFail and Flush, then a group", []relayStep{
			relayAt(rt8Cat(rt8Run(in), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(data("e"), &pgproto3.CopyFail{Message: "client gives up"}, ppFlush()),
			relayAt(rt8Cat(rt8Run("SELECT 9"), []pgproto3.FrontendMessage{ppSync()})...),
		}},
		{"COPY FROM STDIN in a block, a Query among the data", []relayStep{
			relayAt(rt8Cat(rt8Run("BEGIN"), []pgproto3.FrontendMessage{ppSync()}, rt8Run(in), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(data("f"), ppQuery("SELECT 1")),
			relayAt(ppSync()),
			relayAt(ppQuery("ROLLBACK")),
		}},
		{"COPY FROM STDIN and an Execute after it in the group", []relayStep{
			relayAt(rt8Cat(rt8Run(in), rt8Run("SELECT 4"), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(data("g"), done, ppFlush()),
			relayAt(ppSync()),
		}},
		{"COPY FROM STDIN, a Bind and Execute among the data", []relayStep{
			relayAt(ppParse("ci", in), ppBind("ci"), ppExec(), ppFlush()),
			relayAt(data("h"), ppBind("ci"), ppExec(), ppSync()),
			relayAt(ppBind("ci"), ppExec(), ppFlush()),
			relayAt(data("i"), done, ppSync()),
		}},
		{"COPY FROM STDIN, Describe and Close of its statement after CopyDone", []relayStep{
			relayAt(ppParse("ci2", in), ppBind("ci2"), ppExec(), ppFlush()),
			relayAt(data("j"), done, ppDescribeStmt("ci2"), ppCloseStmt("ci2"), ppSync()),
			relayAt(ppBind("ci2"), ppExec(), ppSync()),
		}},
		{"COPY TO STDOUT, Flush, the Sync in a later write", []relayStep{
			relayAt(rt8Cat(rt8Run(out), []pgproto3.FrontendMessage{ppFlush()})...),
			relayAt(ppSync()),
		}},
		{"COPY TO STDOUT, Flush, a Query before the replies are read", []relayStep{
			relayAt(ppParse("", out), ppBind(""), ppExec(), ppFlush(), ppQuery("SELECT 1"), ppSync()),
		}},
		{"COPY TO STDOUT, copy data from the client during it", []relayStep{
			relayAt(ppParse("", out), ppBind(""), ppExec(), ppFlush(), data("k"), done, ppSync()),
		}},
	})
}

// Portals and statements across transaction ends inside pipelines.
func TestRedTeamS8PortalsAcrossCommit(t *testing.T) {
	sync := []pgproto3.FrontendMessage{ppSync()}
	open := []pgproto3.FrontendMessage{ppParse("s1", "SELECT g FROM generate_series(1, 5) g"), ppBindPortal("p1", "s1"), &pgproto3.Execute{Portal: "p1", MaxRows: 2}}
	var many []pgproto3.FrontendMessage
	for i := range 400 {
		sql := fmt.Sprintf("SELECT %d", i)
		switch i % 37 {
		case 5:
			sql = "SELECT 1/0"
		case 11:
			sql = "BEGIN"
		case 13:
			sql = "COMMIT"
		case 20:
			sql = "SELEC"
		}
		many = append(many, rt8Cat(rt8Run(sql), sync)...)
	}
	rt8Same(t, "rt8_portal", []rt8Case{
		{"Describe, Close and Execute of a portal after its block's COMMIT", []relayStep{
			relayAt(rt8Cat(rt8Run("BEGIN"), open, sync)...),
			relayAt(rt8Cat(rt8Run("COMMIT"), sync, []pgproto3.FrontendMessage{ppDescribePortal("p1"), ppSync(), ppClosePortal("p1"), ppSync(), ppExecPortal("p1"), ppSync()})...),
		}},
		{"the same in one write", []relayStep{
			relayAt(rt8Cat(rt8Run("BEGIN"), open, sync, rt8Run("COMMIT"), sync,
				[]pgproto3.FrontendMessage{ppDescribePortal("p1"), ppSync(), ppExecPortal("p1"), ppSync(), ppDescribeStmt("s1"), ppSync()})...),
		}},
		{"COMMIT inside the group, then the portal", []relayStep{
			relayAt(rt8Cat(rt8Run("BEGIN"), open, rt8Run("COMMIT"), []pgproto3.FrontendMessage{ppExecPortal("p1")}, sync)...),
		}},
		{"a suspended portal in a block, a Query between its Executes", []relayStep{
			relayAt(ppQuery("BEGIN")),
			relayAt(rt8Cat(open, sync)...),
			relayAt(ppQuery("SELECT 99")),
			relayAt(&pgproto3.Execute{Portal: "p1", MaxRows: 2}, ppSync()),
			relayAt(ppQuery("COMMIT")),
			relayAt(&pgproto3.Execute{Portal: "p1", MaxRows: 2}, ppSync()),
		}},
		{"COMMIT, an error and more after it in one group of a block", []relayStep{
			relayAt(ppQuery("BEGIN")),
			relayAt(rt8Cat(rt8Run("SELECT 1"), rt8Run("COMMIT"), rt8Run("SELECT current_setting('app.tenant_id')"), rt8Run("SELECT 1/0"), rt8Run("SELECT 2"), sync, rt8Run("SELECT 3"), sync)...),
		}},
		{"400 groups with errors and blocks in one write", []relayStep{relayAt(many...)}},
	})
}

// RESET ALL and DISCARD ALL (allowed as the last statement of a Query)
// leave a read-only user with a role read-only, in its role and tenant.
func TestRedTeamS8ResetKeepsUserPolicy(t *testing.T) {
	superQuery(t, `DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limits_reader') THEN CREATE ROLE limits_reader NOLOGIN; END IF;
END $$;
GRANT limits_reader TO app_rls;
GRANT USAGE ON SCHEMA public TO limits_reader;
GRANT SELECT ON projects TO limits_reader`)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) {
			c.Users[0].ReadOnly = true
			c.Users[0].Role = "limits_reader"
		})
		a := p.pgconnect(t, tenantA)
		for _, reset := range []string{"RESET ALL", "DISCARD ALL", "SELECT 1; RESET ALL"} {
			if err := execErr(a, reset); err != nil {
				t.Fatalf("%s: %v", reset, err)
			}
			for q, want := range map[string]string{
				"SELECT current_user":                     "limits_reader",
				"SHOW default_transaction_read_only":      "on",
				"SELECT current_setting('app.tenant_id')": tenantA.ID,
			} {
				if got := queryOne(t, a, q); got != want {
					t.Errorf("after %s: %s = %q, want %q", reset, q, got, want)
				}
			}
			if err := execErr(a, "SELECT count(*) FROM projects"); err != nil {
				t.Errorf("after %s: reading: %v", reset, err)
			}
		}
	})
}

// rt8DirectListener listens on channel on PostgreSQL directly, as an
// operator's own service would, and returns what it heard when asked.
func rt8DirectListener(t *testing.T, channel string) func() []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg, err := pgconn.ParseConfig(pgcluster.Shared().SuperURL(demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var heard []string
	cfg.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		mu.Lock()
		heard = append(heard, n.Channel+"="+n.Payload)
		mu.Unlock()
	}
	service, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { service.Close(context.Background()) })
	mustExec(t, service, "LISTEN "+channel)
	return func() []string {
		for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); {
			wctx, wcancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_ = service.WaitForNotification(wctx)
			wcancel()
		}
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), heard...)
	}
}

// pg_notify called by its three-part name (database.pg_catalog.pg_notify,
// which PostgreSQL accepts when the database is the current one) is scoped
// to the tenant like the other spellings. It used to go upstream unscoped:
// any tenant could notify any channel of the database, heard by whatever
// listens on PostgreSQL directly (an operator's own services), outside
// every tenant's scope.
func TestRedTeamS8NotifyThreePartName(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		heard := rt8DirectListener(t, "jobs")
		a, b := listen(t, p, tenantA), listen(t, p, tenantB)
		mustExec(t, a.conn, "LISTEN jobs")
		mustExec(t, b.conn, "LISTEN jobs")
		sender := p.pgconnect(t, tenantA)
		for _, sql := range []string{
			"SELECT " + demo.Database + ".pg_catalog.pg_notify('jobs', 'three-part')",
			`SELECT "` + demo.Database + `".pg_catalog.pg_notify('jobs', 'quoted')`,
			"SELECT * FROM " + demo.Database + ".pg_catalog.pg_notify('jobs', 'from')",
		} {
			mustExec(t, sender, sql)
		}
		want := []string{"jobs=three-part", "jobs=quoted", "jobs=from"}
		if got := a.drain(t, len(want)); strings.Join(got, ";") != strings.Join(want, ";") {
			t.Errorf("tenant A's listener heard %q, want %q", got, want)
		}
		if got := b.drain(t, 0); len(got) != 0 {
			t.Errorf("LEAK: tenant B's listener heard tenant A's notifications %q", got)
		}
		if got := heard(); len(got) != 0 {
			t.Errorf("LEAK: a listener on PostgreSQL directly heard tenant A's notifications, unscoped: %q", got)
		}
	})
}

// An operator (or aggregate, or cast) whose function is pg_notify calls
// it later, unscoped: creating one through pgtenant is refused, as storing
// a pg_notify call is. It used to be allowed wherever the role may create
// objects (TEMP on the database, PostgreSQL's default for PUBLIC, which
// pgtenant doctor reports; CREATE on a schema): then
// SELECT 'jobs' OPERATOR(pg_temp.###) 'x' notified any channel of the
// database, outside the tenant's scope.
func TestRedTeamS8NotifyThroughOperator(t *testing.T) {
	superQuery(t, "GRANT TEMPORARY ON DATABASE "+demo.Database+" TO "+demo.RLSRole+"; GRANT CREATE ON SCHEMA public TO "+demo.RLSRole)
	t.Cleanup(func() {
		superQuery(t, "DROP OPERATOR IF EXISTS public.### (text, text); REVOKE TEMPORARY ON DATABASE "+demo.Database+" FROM "+demo.RLSRole+"; REVOKE CREATE ON SCHEMA public FROM "+demo.RLSRole)
	})
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		t.Cleanup(func() { superQuery(t, "DROP OPERATOR IF EXISTS public.### (text, text)") })
		p := m.start(t)
		heard := rt8DirectListener(t, "jobs")
		a := p.pgconnect(t, tenantA)
		for _, schema := range []string{"pg_temp", "public"} {
			create := "CREATE OPERATOR " + schema + ".### (leftarg = text, rightarg = text, function = pg_catalog.pg_notify)"
			if err := execErr(a, create); pgCode(err) != "42501" {
				t.Errorf("%s: %v, want 42501", create, err)
				_ = execErr(a, "SELECT 'jobs' OPERATOR("+schema+".###) 'operator in "+schema+"'")
			}
		}
		if got := heard(); len(got) != 0 {
			t.Errorf("LEAK: a listener on PostgreSQL directly heard tenant A's notifications, unscoped: %q", got)
		}
	})
}
