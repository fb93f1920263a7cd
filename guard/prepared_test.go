package guard

import (
	"reflect"
	"testing"
)

func TestPooledPrepare(t *testing.T) {
	g := newPooledGuard()
	for _, tc := range []struct {
		sql    string
		parse  bool     // CheckParse, not CheckQuery
		name   string   // the Prepare's name, "" when none
		inner  string   // its Inner
		nameAt string   // the text it names stands as
		pins   string   // Verdict.Pins
		exec   []string // the texts of Executes' names
		ipins  string   // Prepare.Pins
	}{
		{sql: "PREPARE p AS SELECT * FROM projects WHERE id = $1", name: "p", inner: "SELECT * FROM projects WHERE id = $1", nameAt: "p"},
		{sql: "prepare P (int) as select $1", name: "p", inner: "select $1", nameAt: "P"},
		{sql: `PREPARE "Odd ""name""" (int, text[]) AS SELECT $1, $2;`, name: `Odd "name"`, inner: "SELECT $1, $2", nameAt: `"Odd ""name"""`},
		{sql: "/* c */ PREPARE p(numeric(10, 2)) -- x\n AS\n INSERT INTO t SELECT $1 AS a ; ", name: "p", inner: "INSERT INTO t SELECT $1 AS a", nameAt: "p"},
		{sql: "PREPARE function AS SELECT 1", name: "function", inner: "SELECT 1", nameAt: "function"},
		{sql: "PREPARE p AS SELECT pg_advisory_lock(1)", name: "p", inner: "SELECT pg_advisory_lock(1)", nameAt: "p", ipins: PinAdvisoryLock},
		// In a Parse too (carried from the Bind that runs it); pinned with
		// other statements.
		{sql: "PREPARE p AS SELECT 1", parse: true, name: "p", inner: "SELECT 1", nameAt: "p"},
		{sql: "PREPARE p AS SELECT 1; SELECT 2", pins: PinPrepared},
		{sql: "PREPARE p AS SELECT pg_advisory_lock(1); SELECT 2", pins: PinPrepared},
		// EXECUTE names, wherever an EXECUTE statement stands.
		{sql: "EXECUTE s1 (1)", exec: []string{"s1"}},
		{sql: "EXECUTE s1 (1)", parse: true, exec: []string{"s1"}},
		{sql: "execute S1; EXECUTE \"S1\"", exec: []string{"S1", `"S1"`}},
		{sql: "EXPLAIN (ANALYZE) EXECUTE q(1, 'a')", exec: []string{"q"}},
		{sql: "CREATE TABLE t AS EXECUTE q WITH NO DATA", exec: []string{"q"}},
		{sql: "CREATE TABLE t AS EXECUTE q", exec: []string{"q"}},
		{sql: "GRANT EXECUTE ON FUNCTION q() TO public"},
		{sql: "SELECT 'EXECUTE q'"},
		{sql: "PREPARE p AS SELECT 1; EXECUTE p", pins: PinPrepared, exec: []string{"p"}},
	} {
		check := g.CheckQuery
		if tc.parse {
			check = g.CheckParse
		}
		v := check([]byte(tc.sql))
		if v.Err != nil {
			t.Errorf("%q: refused: %v", tc.sql, v.Err)
			continue
		}
		if v.Pins != tc.pins {
			t.Errorf("%q: Pins %q, want %q", tc.sql, v.Pins, tc.pins)
		}
		switch p := v.Prepare; {
		case tc.name == "" && p != nil:
			t.Errorf("%q: Prepare %+v, want none", tc.sql, p)
		case tc.name != "" && p == nil:
			t.Errorf("%q: no Prepare", tc.sql)
		case p != nil && (p.Name != tc.name || p.Inner != tc.inner || tc.sql[p.Start:p.End] != tc.nameAt || p.Pins != tc.ipins):
			t.Errorf("%q: Prepare %+v (%q), want %q, %q at %q, pins %q", tc.sql, p, tc.sql[p.Start:p.End], tc.name, tc.inner, tc.nameAt, tc.ipins)
		}
		var exec []string
		for _, e := range v.Executes {
			exec = append(exec, tc.sql[e.Start:e.End])
		}
		if !reflect.DeepEqual(exec, tc.exec) {
			t.Errorf("%q: Executes at %q, want %q", tc.sql, exec, tc.exec)
		}
	}
}

func TestTransactions(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want int
	}{
		{"SELECT 1", 1},
		{"SELECT 1; ", 1},
		{"BEGIN; SELECT 1; COMMIT", 1},
		{"SELECT 1; COMMIT; SELECT 2", 2},
		{"SELECT txid_current(); COMMIT; SELECT txid_current(); COMMIT; ", 2},
		{"BEGIN; SAVEPOINT s; ROLLBACK TO s; COMMIT", 1},
		{"PREPARE p AS SELECT 1; SELECT 2", 1},
		{"SELECT ';COMMIT; x'", 1},
		{"END; SELECT 1; ABORT; SELECT 2; ROLLBACK", 3},
	} {
		if got := Transactions([]byte(tc.sql)); got != tc.want {
			t.Errorf("Transactions(%q) = %d, want %d", tc.sql, got, tc.want)
		}
	}
}
