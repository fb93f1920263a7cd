package guard

import (
	"reflect"
	"strings"
	"testing"
)

func TestChannels(t *testing.T) {
	long := strings.Repeat("é", 40) // 80 bytes: cut to 62 at a character boundary
	for _, tc := range []struct {
		sql   string
		want  []string // each channel: its text in sql, then "=" and the name for identifiers
		err   string   // the refusal's SQLSTATE
		plain bool     // also for a guard not in pool mode (it always is)
	}{
		{sql: "LISTEN jobs", want: []string{"jobs=jobs"}},
		{sql: `listen "Jobs"`, want: []string{`"Jobs"=Jobs`}},
		{sql: "UNLISTEN Jobs; UNLISTEN *", want: []string{"Jobs=jobs"}},
		{sql: "NOTIFY jobs, 'payload'", want: []string{"jobs=jobs"}},
		{sql: "/* x */ NOTIFY listen; LISTEN notify", want: []string{"listen=listen", "notify=notify"}},
		{sql: "LISTEN " + long, want: []string{long + "=" + strings.Repeat("é", 31)}},
		{sql: "SELECT pg_notify('jobs', 'x')", want: []string{"'jobs'"}},
		{sql: "SELECT pg_catalog.pg_notify(name || '.' || id, 'x') FROM projects", want: []string{"name || '.' || id"}},
		{sql: "SELECT app.pg_catalog.pg_notify('jobs', 'x')", want: []string{"'jobs'"}},
		{sql: `SELECT * FROM "App".pg_catalog.pg_notify('jobs', 'x')`, want: []string{"'jobs'"}},
		{sql: "SELECT app.pg_catalog.pg_notify('jobs')", err: CodeRefused},
		{sql: "SELECT pg_notify(coalesce($1, 'a'), $2)", want: []string{"coalesce($1, 'a')"}},
		{sql: "SELECT pg_notify((ARRAY['a','b'])[1], 'x'), pg_notify('c', 'y')", want: []string{"(ARRAY['a','b'])[1]", "'c'"}},
		{sql: "SELECT * FROM pg_notify('jobs', 'x')", want: []string{"'jobs'"}},
		{sql: "SELECT 'LISTEN jobs', listen FROM (SELECT 1 AS listen) t"},
		{sql: `LISTEN U&"j\006fbs"`, want: []string{`U&"j\006fbs"=jobs`}},
		{sql: `LISTEN U&"j!006fbs" UESCAPE '!'`, err: CodeRefused},
		{sql: "SELECT pg_notify('jobs')", err: CodeRefused},
		{sql: "SELECT pg_notify(VARIADIC ARRAY['a', 'b'])", err: CodeRefused},
		{sql: "CREATE VIEW v AS SELECT pg_notify('a', name) FROM projects", err: CodeRefused},
		{sql: "CREATE MATERIALIZED VIEW v AS SELECT pg_notify('a', 'b')", err: CodeRefused},
		{sql: "CREATE VIEW v AS SELECT app.pg_catalog.pg_notify('a', name) FROM projects", err: CodeRefused},
		{sql: "CREATE TABLE t (a text DEFAULT pg_notify('a', 'b')::text)", err: CodeRefused},
		{sql: "ALTER TABLE projects ADD CHECK (pg_notify('a', name) IS NULL)", err: CodeRefused},
		{sql: "CREATE OPERATOR pg_temp.### (leftarg = text, rightarg = text, function = pg_catalog.pg_notify)", err: CodeRefused, plain: true},
		{sql: "CREATE OPERATOR public.### (leftarg = text, rightarg = text, procedure = pg_notify)", err: CodeRefused, plain: true},
		{sql: "CREATE AGGREGATE a (text, text) (sfunc = pg_notify, stype = text)", err: CodeRefused, plain: true},
		{sql: "CREATE CAST (text AS int) WITH FUNCTION pg_notify(text, text)", err: CodeRefused, plain: true},
		{sql: "SELECT pg_notify FROM (SELECT 1 AS pg_notify) t", want: nil},
		{sql: "CREATE TABLE t AS SELECT pg_notify('a', 'b')", want: []string{"'a'"}},
		{sql: "EXPLAIN ANALYZE SELECT pg_notify('a', 'b')", want: []string{"'a'"}},
		{sql: "PREPARE p AS SELECT pg_notify($1, 'b')", want: []string{"$1"}},
	} {
		for _, g := range []*Guard{newPooledGuard(), newTestGuard()} {
			v := g.CheckQuery([]byte(tc.sql))
			if tc.err != "" {
				if v.Err == nil || v.Err.Code != tc.err {
					t.Errorf("%q: %+v, want refused %s", tc.sql, v.Err, tc.err)
				}
				continue
			}
			if v.Err != nil {
				t.Errorf("%q: refused: %v", tc.sql, v.Err)
				continue
			}
			var got []string
			for _, c := range v.Channels {
				s := tc.sql[c.Start:c.End]
				if !c.Expr() {
					s += "=" + c.Name
				}
				got = append(got, s)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("%q: channels %q, want %q", tc.sql, got, tc.want)
			}
		}
	}
}
