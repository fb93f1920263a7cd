package e2e

// Red team: state of one tenant's pinned (or not pinned) client left on a
// pooled connection another tenant gets. Each subtest FAILS when the attack
// succeeds.

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
)

const rtLeftSQL = `SELECT ((SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
	+ (SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema())
	+ (SELECT count(*) FROM pg_statistic_ext WHERE stxnamespace = pg_my_temp_schema())
	+ (SELECT count(*) FROM pg_listening_channels())
	+ (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()))::text`

func rtPool(more ...func(*config.Config)) func(*config.Config) {
	return func(c *config.Config) {
		transactionPool(1)(c)
		c.Pool.WaitTimeout = config.Duration{Duration: 800 * time.Millisecond}
		for _, m := range more {
			m(c)
		}
	}
}

// rtProbe runs, as a fresh client of tenant B, the leftover checks. It
// returns "pinned" when B could not get the connection (A holds it), or an
// empty string when B's connection is clean, or a description of A's
// state B found.
func rtProbe(t *testing.T, p *testProxy, cursors, prepared []string) string {
	t.Helper()
	b := p.pgconnect(t, tenantB)
	defer b.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	res, err := b.Exec(ctx, rtLeftSQL+"; SELECT current_setting('app.tenant_id')").ReadAll()
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || pgCode(err) == "57014" {
			return "pinned"
		}
		return "probe error: " + err.Error()
	}
	var found []string
	if n := string(res[0].Rows[0][0]); n != "0" {
		found = append(found, "objects/locks/channels="+n)
	}
	if tn := string(res[1].Rows[0][0]); tn != tenantB.ID {
		found = append(found, "B's context="+tn)
	}
	for _, c := range cursors {
		if _, err := b.Exec(ctx, "FETCH "+c).ReadAll(); pgCode(err) != "34000" {
			found = append(found, "FETCH "+c+": "+errString(err))
		}
	}
	for _, s := range prepared {
		if _, err := b.Exec(ctx, "EXECUTE "+s).ReadAll(); pgCode(err) != "26000" {
			found = append(found, "EXECUTE "+s+": "+errString(err))
		}
	}
	return strings.Join(found, "; ")
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// Ways to make state that outlives a transaction. Either A stays pinned
// (B waits) or B finds nothing.
func TestRedTeamPinStatements(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	for _, tc := range []struct {
		name     string
		sql      []string
		cursors  []string
		prepared []string
	}{
		{"select into temp", []string{"SELECT 1 AS x INTO TEMP rt_into"}, nil, nil},
		{"select into temporary table", []string{"SELECT 1 AS x INTO TEMPORARY TABLE rt_into2"}, nil, nil},
		{"global temporary", []string{"CREATE GLOBAL TEMPORARY TABLE rt_g (x int)"}, nil, nil},
		{"local temp", []string{"CREATE LOCAL TEMP TABLE rt_l (x int)"}, nil, nil},
		{"explain analyze ctas", []string{"EXPLAIN ANALYZE CREATE TEMP TABLE rt_e AS SELECT 1"}, nil, nil},
		{"explain analyze select into", []string{"EXPLAIN ANALYZE SELECT 1 INTO TEMP rt_e2"}, nil, nil},
		{"temp sequence", []string{"CREATE TEMP SEQUENCE rt_s"}, nil, nil},
		{"temp view", []string{"CREATE TEMP VIEW rt_v AS SELECT 1"}, nil, nil},
		{"temp like", []string{"CREATE TEMP TABLE rt_like (LIKE projects)"}, nil, nil},
		{"temp partitioned", []string{"CREATE TEMP TABLE rt_pt (x int) PARTITION BY RANGE (x)"}, nil, nil},
		{"temp if not exists", []string{"CREATE TEMP TABLE IF NOT EXISTS rt_ine (x int)"}, nil, nil},
		{"on commit delete rows", []string{"CREATE TEMP TABLE rt_ocd (x int) ON COMMIT DELETE ROWS"}, nil, nil},
		{"on commit drop then like", []string{"BEGIN; CREATE TEMP TABLE rt_d (x int) ON COMMIT DROP; CREATE TEMP TABLE rt_d2 (LIKE rt_d); COMMIT"}, nil, nil},
		{"on commit drop partition", []string{"BEGIN; CREATE TEMP TABLE rt_dp (x int) PARTITION BY RANGE (x) ON COMMIT DROP; CREATE TEMP TABLE rt_dpc PARTITION OF rt_dp FOR VALUES FROM (1) TO (10); COMMIT"}, nil, nil},
		{"on commit drop partition drop", []string{"BEGIN; CREATE TEMP TABLE rt_dq (x int) PARTITION BY RANGE (x) ON COMMIT DROP; CREATE TEMP TABLE rt_dqc PARTITION OF rt_dq FOR VALUES FROM (1) TO (10) ON COMMIT DROP; COMMIT"}, nil, nil},
		{"on commit drop inherits", []string{"BEGIN; CREATE TEMP TABLE rt_di (x int) ON COMMIT DROP; CREATE TEMP TABLE rt_dic () INHERITS (rt_di) ON COMMIT DROP; COMMIT"}, nil, nil},
		{"on commit drop implicit temp view", []string{"BEGIN; CREATE TEMP TABLE rt_dv (x int) ON COMMIT DROP; CREATE VIEW rt_dvv AS SELECT * FROM rt_dv; COMMIT"}, nil, nil},
		{"on commit drop identity+stats+index", []string{"BEGIN; CREATE TEMP TABLE rt_ds (a int, b int) ON COMMIT DROP; ALTER TABLE rt_ds ADD COLUMN id int GENERATED ALWAYS AS IDENTITY; CREATE STATISTICS ON a, b FROM rt_ds; CREATE INDEX ON rt_ds (a); COMMIT"}, nil, nil},
		{"ctas on commit drop", []string{"CREATE TEMP TABLE rt_cd ON COMMIT DROP AS SELECT 1 AS x"}, nil, nil},
		{"on commit drop in implicit block", []string{"CREATE TEMP TABLE rt_ib (x int) ON COMMIT DROP; SELECT 1"}, nil, nil},
		{"prepare", []string{"PREPARE rt_p AS SELECT 1"}, nil, []string{"rt_p"}},
		{"prepare rolled back", []string{"BEGIN; PREPARE rt_p2 AS SELECT 1; ROLLBACK"}, nil, []string{"rt_p2"}},
		{"prepare in failed block", []string{"BEGIN; SELECT 1/0", "PREPARE rt_p3 AS SELECT 1", "ROLLBACK"}, nil, []string{"rt_p3"}},
		{"listen in block", []string{"BEGIN; LISTEN rt_ch; COMMIT"}, nil, nil},
		{"listen quoted", []string{`LISTEN "RT ch"`}, nil, nil},
		{"advisory try shared", []string{"SELECT pg_try_advisory_lock_shared(5)"}, nil, nil},
		{"advisory qualified", []string{"SELECT pg_catalog.pg_advisory_lock(6)"}, nil, nil},
		{"advisory in from", []string{"SELECT * FROM pg_advisory_lock(8)"}, nil, nil},
		{"advisory two keys", []string{"SELECT pg_advisory_lock(8, 9)"}, nil, nil},
		{"advisory quoted name", []string{`SELECT "pg_advisory_lock"(10)`}, nil, nil},
		{"advisory in rolled back block", []string{"BEGIN; SELECT pg_advisory_lock(11); ROLLBACK"}, nil, nil},
		{"advisory in failed stmt", []string{"SELECT pg_advisory_lock(12), 1/0"}, nil, nil},
		{"advisory xact", []string{"SELECT pg_advisory_xact_lock(13)"}, nil, nil},
		{"advisory in cte", []string{"WITH l AS (SELECT pg_advisory_lock(14)) SELECT * FROM l"}, nil, nil},
		{"cursor with hold in block", []string{"BEGIN; DECLARE rt_c CURSOR WITH HOLD FOR SELECT 1; COMMIT"}, []string{"rt_c"}, nil},
		{"cursor binary scroll hold", []string{"DECLARE rt_c2 BINARY INSENSITIVE SCROLL CURSOR WITH HOLD FOR SELECT 1"}, []string{"rt_c2"}, nil},
		{"cursor no hold", []string{"BEGIN; DECLARE rt_c3 CURSOR FOR SELECT 1; COMMIT"}, []string{"rt_c3"}, nil},
		{"cursor hold then savepoint rollback", []string{"BEGIN; SAVEPOINT s; DECLARE rt_c4 CURSOR WITH HOLD FOR SELECT 1; RELEASE s; COMMIT"}, []string{"rt_c4"}, nil},
		{"discard all while pinned", []string{"DECLARE rt_c5 CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE rt_da (x int)", "LISTEN rt_da", "SELECT pg_advisory_lock(15)", "PREPARE rt_p5 AS SELECT 1", "DISCARD ALL"}, []string{"rt_c5"}, []string{"rt_p5"}},
		{"reset all while pinned", []string{"DECLARE rt_c6 CURSOR WITH HOLD FOR SELECT 1", "RESET ALL"}, []string{"rt_c6"}, nil},
		{"asyncpg reset string", []string{"DECLARE rt_c7 CURSOR WITH HOLD FOR SELECT 1", "LISTEN rt7", "SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;"}, []string{"rt_c7"}, nil},
		{"discard temp keeps cursor", []string{"DECLARE rt_c8 CURSOR WITH HOLD FOR SELECT 1", "CREATE TEMP TABLE rt_dt (x int)", "DISCARD TEMP"}, []string{"rt_c8"}, nil},
		{"unlock one of two", []string{"SELECT pg_advisory_lock(16)", "SELECT pg_advisory_lock(16)", "SELECT pg_advisory_unlock(16)"}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := p.pgconnect(t, tenantA)
			for _, sql := range tc.sql {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				_, err := a.Exec(ctx, sql).ReadAll()
				cancel()
				if err != nil {
					t.Logf("A: %s: %v", sql, err)
				}
			}
			got := rtProbe(t, p, tc.cursors, tc.prepared)
			t.Logf("probe: %q", got)
			if got != "" && got != "pinned" {
				t.Errorf("B found A's state: %s", got)
			}
			a.Close(context.Background())
			if got := rtProbe(t, p, tc.cursors, tc.prepared); got != "" {
				t.Errorf("after A left, B: %s", got)
			}
		})
	}
}

// Protocol-level: a pinning statement parsed in one group, bound and
// executed in a later one (on another lease).
func TestRedTeamPinParseLater(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	for _, tc := range []struct{ name, stmt, sql string }{
		{"named listen", "s1", "LISTEN rt_pl"},
		{"named temp", "s2", "CREATE TEMP TABLE rt_pl (x int)"},
		{"named lock", "s3", "SELECT pg_advisory_lock(21)"},
		{"named cursor", "s4", "DECLARE rt_plc CURSOR WITH HOLD FOR SELECT 1"},
		{"named prepare", "s5", "PREPARE rt_plp AS SELECT 1"},
		{"unnamed listen", "", "LISTEN rt_pl2"},
		{"unnamed lock", "", "SELECT pg_advisory_lock(22)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := ppHijack(t, p.pgconnect(t, tenantA))
			if got, err := a.exchange([]pgproto3.FrontendMessage{ppParse(tc.stmt, tc.sql), ppSync()}, 0); err != nil {
				t.Fatalf("parse: %q %v", got, err)
			}
			// B uses the connection in between.
			if got := rtProbe(t, p, nil, nil); got != "" {
				t.Fatalf("between parse and bind: %s", got)
			}
			got, err := a.exchange([]pgproto3.FrontendMessage{ppBind(tc.stmt), ppExec(), ppSync()}, 0)
			t.Logf("bind/execute: %q %v", got, err)
			if got := rtProbe(t, p, []string{"rt_plc"}, []string{"rt_plp"}); got != "" && got != "pinned" {
				t.Errorf("B found A's state: %s", got)
			}
			a.conn.Close()
			time.Sleep(100 * time.Millisecond)
			if got := rtProbe(t, p, []string{"rt_plc"}, []string{"rt_plp"}); got != "" {
				t.Errorf("after A left: %s", got)
			}
		})
	}
}

// A pinned client closes its last state inside an extended-protocol group
// it has not synced (Flush), goes quiet, then declares a new cursor in the
// same group. Or: a not-pinned client takes state inside an unsynced group.
func TestRedTeamPinUnsyncedGroup(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	t.Run("close then declare", func(t *testing.T) {
		a := ppHijack(t, p.pgconnect(t, tenantA))
		if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("DECLARE rt_u1 CURSOR WITH HOLD FOR SELECT 1")}, 0); err != nil {
			t.Fatalf("%q %v", got, err)
		}
		got, err := a.exchange([]pgproto3.FrontendMessage{ppParse("", "CLOSE rt_u1"), ppBind(""), ppExec(), ppFlush()}, 3)
		t.Logf("close, flushed: %q %v", got, err)
		time.Sleep(1500 * time.Millisecond) // quiet: past the park delay too
		got, err = a.exchange([]pgproto3.FrontendMessage{ppParse("", "DECLARE rt_u2 CURSOR WITH HOLD FOR SELECT current_setting('app.tenant_id')"), ppBind(""), ppExec(), ppSync()}, 0)
		t.Logf("declare, synced: %q %v", got, err)
		if got := rtProbe(t, p, []string{"rt_u2"}, nil); got != "" && got != "pinned" {
			t.Errorf("B found A's state: %s", got)
		}
		got, err = a.exchange([]pgproto3.FrontendMessage{ppQuery("FETCH rt_u2")}, 0)
		t.Logf("A's fetch: %q %v", got, err)
	})
	t.Run("lock unsynced", func(t *testing.T) {
		a := ppHijack(t, p.pgconnect(t, tenantA))
		got, err := a.exchange([]pgproto3.FrontendMessage{ppParse("", "SELECT pg_advisory_lock(31)"), ppBind(""), ppExec(), ppFlush()}, 3)
		t.Logf("lock, flushed: %q %v", got, err)
		time.Sleep(1500 * time.Millisecond)
		got, err = a.exchange([]pgproto3.FrontendMessage{ppSync()}, 0)
		t.Logf("sync: %q %v", got, err)
		if got := rtProbe(t, p, nil, nil); got != "" && got != "pinned" {
			t.Errorf("B found A's state: %s", got)
		}
	})
}

// Pipelines: several units in one write, the pin ending and starting
// again within it.
func TestRedTeamPinPipeline(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	for _, tc := range []struct {
		name string
		msgs []pgproto3.FrontendMessage
	}{
		{"query close then extended declare", []pgproto3.FrontendMessage{ppQuery("CLOSE rt_q0"), ppParse("", "DECLARE rt_q1 CURSOR WITH HOLD FOR SELECT 1"), ppBind(""), ppExec(), ppSync()}},
		{"extended close then query declare", []pgproto3.FrontendMessage{ppParse("", "CLOSE rt_q0"), ppBind(""), ppExec(), ppSync(), ppQuery("DECLARE rt_q1 CURSOR WITH HOLD FOR SELECT 1")}},
		{"close, select, declare in binds", []pgproto3.FrontendMessage{ppParse("c", "CLOSE rt_q0"), ppParse("d", "DECLARE rt_q1 CURSOR WITH HOLD FOR SELECT 1"), ppSync(), ppBind("c"), ppExec(), ppSync(), ppBind("d"), ppExec(), ppSync()}},
		{"discard all then declare", []pgproto3.FrontendMessage{ppQuery("DISCARD ALL"), ppQuery("DECLARE rt_q1 CURSOR WITH HOLD FOR SELECT 1")}},
		{"close then lock in one group", []pgproto3.FrontendMessage{ppParse("", "CLOSE rt_q0"), ppBind(""), ppExec(), ppSync(), ppParse("", "SELECT pg_advisory_lock(41)"), ppBind(""), ppExec(), ppParse("", "SELECT 1/0"), ppBind(""), ppExec(), ppSync()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := ppHijack(t, p.pgconnect(t, tenantA))
			if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("DECLARE rt_q0 CURSOR WITH HOLD FOR SELECT 1")}, 0); err != nil {
				t.Fatalf("%q %v", got, err)
			}
			got, err := a.exchange(tc.msgs, 0)
			t.Logf("pipeline: %q %v", got, err)
			if got := rtProbe(t, p, []string{"rt_q1"}, nil); got != "" && got != "pinned" {
				t.Errorf("B found A's state: %s", got)
			}
			a.conn.Close()
			time.Sleep(100 * time.Millisecond)
			if got := rtProbe(t, p, []string{"rt_q1"}, nil); got != "" {
				t.Errorf("after A left: %s", got)
			}
		})
	}
}

// Caps: a statement parsed while there is room, bound when there is none.
func TestRedTeamPinCaps(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, func(c *config.Config) {
		transactionPool(3)(c)
		c.Pool.MaxPinned = 1
		c.Pool.WaitTimeout = config.Duration{Duration: 500 * time.Millisecond}
	})
	a := ppHijack(t, p.pgconnect(t, tenantA))
	if got, err := a.exchange([]pgproto3.FrontendMessage{ppParse("s", "DECLARE rt_cap CURSOR WITH HOLD FOR SELECT 1"), ppSync()}, 0); err != nil {
		t.Fatalf("parse: %q %v", got, err)
	}
	b := p.pgconnect(t, tenantB)
	pinExec(t, b, "DECLARE rt_capb CURSOR WITH HOLD FOR SELECT 1")
	got, err := a.exchange([]pgproto3.FrontendMessage{ppBind("s"), ppExec(), ppSync()}, 0)
	t.Logf("A's bind past the cap: %q %v", got, err)
	if strings.Contains(strings.Join(got, ";"), "CommandComplete DECLARE") {
		t.Errorf("two connections pinned with pool.max_pinned 1: %q", got)
	}
	// Failed pinning statements must not leak the count.
	b2 := p.pgconnect(t, tenantB)
	pinExec(t, b, "CLOSE rt_capb")
	for i := 0; i < 3; i++ {
		_, err := b2.Exec(context.Background(), "BEGIN; SELECT 1/0").ReadAll()
		_ = err
		_, _ = b2.Exec(context.Background(), "DECLARE x CURSOR WITH HOLD FOR SELECT 1").ReadAll()
		pinExec(t, b2, "ROLLBACK")
	}
	if _, err := b2.Exec(context.Background(), "SELECT pg_advisory_lock(51), pg_advisory_unlock(51)").ReadAll(); err != nil {
		t.Errorf("pin count leaked: %v", err)
	}
}

// A pinned client leaves mid-COPY: its temporary table must not survive.
func TestRedTeamPinCopyDisconnect(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	a := ppHijack(t, p.pgconnect(t, tenantA))
	if got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("CREATE TEMP TABLE rt_copy (x int)")}, 0); err != nil {
		t.Fatalf("%q %v", got, err)
	}
	got, err := a.exchange([]pgproto3.FrontendMessage{ppQuery("COPY rt_copy FROM STDIN"), &pgproto3.CopyData{Data: []byte("1\n")}}, 1)
	t.Logf("copy: %q %v", got, err)
	a.conn.Close()
	time.Sleep(200 * time.Millisecond)
	if got := rtProbe(t, p, nil, nil); got != "" {
		t.Errorf("after A left mid-COPY: %s", got)
	}
}

// DEALLOCATE of pgtenant's own statement names (PREPARE/EXECUTE of them
// are refused).
func TestRedTeamPinDeallocateOwn(t *testing.T) {
	p := startProxy(t, rtPool())
	a := p.pgconnect(t, tenantA)
	for _, sql := range []string{"DEALLOCATE pgtenant_ctx0", "DEALLOCATE PREPARE pgtenant_ctx1", "DEALLOCATE pgtenant_readback", `DEALLOCATE "pgtenant_ctx0"`} {
		_, err := a.Exec(context.Background(), sql).ReadAll()
		t.Logf("%s: %v", sql, err)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		res, err := a.Exec(ctx, "SELECT current_setting('app.tenant_id', true)").ReadAll()
		cancel()
		if err != nil {
			t.Logf("after: %v", err)
			a = p.pgconnect(t, tenantA)
			continue
		}
		if got := string(res[0].Rows[0][0]); got != tenantA.ID {
			t.Errorf("after %s: context %q", sql, got)
		}
	}
	if got := rtProbe(t, p, nil, nil); got != "" {
		t.Errorf("B: %s", got)
	}
}

// With CREATE on a schema (a configuration pgtenant doctor flags), a view
// or an operator calls pg_advisory_lock without the statement naming it.
func TestRedTeamPinStoredLockCall(t *testing.T) {
	superQuery(t, "GRANT CREATE ON SCHEMA public TO app_rls")
	t.Cleanup(func() {
		superQuery(t, "DROP VIEW IF EXISTS public.rt_lockv; DROP OPERATOR IF EXISTS public.### (int4, int4); REVOKE CREATE ON SCHEMA public FROM app_rls")
	})
	p := startProxy(t, rtPool())
	a := p.pgconnect(t, tenantA)
	pinExec(t, a, "CREATE VIEW rt_lockv AS SELECT pg_try_advisory_lock(61) AS l")
	pinExec(t, a, "CREATE OPERATOR ### (function = pg_try_advisory_lock, leftarg = int4, rightarg = int4)")
	for _, sql := range []string{"SELECT l::text FROM rt_lockv", "SELECT (6 ### 2)::text"} {
		t.Run(sql, func(t *testing.T) {
			pinExec(t, a, sql)
			if got := rtProbe(t, p, nil, nil); got != "" && got != "pinned" {
				t.Errorf("B found A's state: %s", got)
			}
			pinExec(t, a, "SELECT pg_advisory_unlock_all()")
		})
	}
}

// A pinned client whose settings make the readback fail or wait.
func TestRedTeamPinReadbackSettings(t *testing.T) {
	grantTemp(t)
	p := startProxy(t, rtPool())
	a := p.pgconnect(t, tenantA)
	pinExec(t, a, "DECLARE rt_rb CURSOR WITH HOLD FOR SELECT 1")
	pinExec(t, a, "SET statement_timeout = 1")
	for i := 0; i < 5; i++ {
		_, _ = a.Exec(context.Background(), "SELECT 1").ReadAll()
	}
	if got := rtProbe(t, p, []string{"rt_rb"}, nil); got != "" && got != "pinned" {
		t.Errorf("B found A's state: %s", got)
	}
	pinExec(t, a, "SET statement_timeout = 0")
	pinExec(t, a, "CLOSE rt_rb")
	if got := rtProbe(t, p, []string{"rt_rb"}, nil); got != "" {
		t.Errorf("after the state is gone (pool wedged?): %s", got)
	}
}

// Functions of the application's schema (installed by its owner, SECURITY
// INVOKER, nothing pgtenant doctor flags) that make state outliving the
// transaction: the statement that calls them names none of it.
func TestRedTeamPinExistingFunctions(t *testing.T) {
	grantTemp(t)
	superQuery(t, `CREATE OR REPLACE FUNCTION public.rt_report() RETURNS int LANGUAGE plpgsql AS $$
		BEGIN CREATE TEMP TABLE IF NOT EXISTS rt_rep AS SELECT name FROM projects; RETURN 1; END $$;
		CREATE OR REPLACE FUNCTION public.rt_locked(k bigint) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_advisory_lock(k); RETURN 1; END $$;
		CREATE OR REPLACE FUNCTION public.rt_subscribe(ch text) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN EXECUTE 'LISTEN ' || quote_ident(ch); RETURN 1; END $$;
		GRANT EXECUTE ON FUNCTION public.rt_report(), public.rt_locked(bigint), public.rt_subscribe(text) TO app_rls`)
	t.Cleanup(func() {
		superQuery(t, "DROP FUNCTION IF EXISTS public.rt_report(), public.rt_locked(bigint), public.rt_subscribe(text)")
	})
	p := startProxy(t, rtPool())
	for _, sql := range []string{"SELECT public.rt_report()", "SELECT public.rt_locked(71)", "SELECT public.rt_subscribe('rt_fn')"} {
		t.Run(sql, func(t *testing.T) {
			a := p.pgconnect(t, tenantA)
			pinExec(t, a, sql)
			b := p.pgconnect(t, tenantB)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if res, err := b.Exec(ctx, "SELECT string_agg(name, ',') FROM rt_rep").ReadAll(); err == nil {
				t.Errorf("B (tenant %s) reads A's temporary table rt_rep: %s", tenantB.ID, res[0].Rows[0][0])
			}
			if got := rtProbe(t, p, nil, nil); got != "" && got != "pinned" {
				t.Errorf("B found A's state: %s", got)
			}
			a.Close(context.Background())
		})
	}
}
