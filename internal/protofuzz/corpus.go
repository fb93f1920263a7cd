package protofuzz

import "strings"

// A statement of the corpus. Every statement is deterministic (the same
// replies from any PostgreSQL session of tenant A with the demo data: no
// times, pids, or counts of tables other sessions write to) and is relayed
// unchanged by pgtenant in both pool modes (no SET of app.* or of session
// settings, no set_config, no SQL PREPARE other than alone in a Query (which
// transaction mode carries rather than pins), no LISTEN, no temporary
// objects, no WITH HOLD cursors: see guard/pooled.go).
type stmt struct {
	sql    string
	params int // $n parameters it expects
	copyIn int // COPY ... FROM STDIN statements it runs
}

// longStatement is the length from which a statement counts as long: a
// transaction-mode session's first Query or Parse longer than about 250 bytes
// took a different path in pgtenant.
const longStatement = 250

var (
	padComment = "/* " + strings.Repeat("padding ", 36) + "*/ "
	longText   = strings.Repeat("x", 300)
)

// simpleCorpus is what Query messages carry.
var simpleCorpus = []stmt{
	{sql: "SELECT 1"},
	{sql: "SELECT g, repeat('x', g) FROM generate_series(1, 5) g"},
	{sql: "SELECT g FROM generate_series(1, 300) g"},
	{sql: "SELECT name FROM projects ORDER BY id"},
	{sql: "SELECT count(*) FROM projects"},
	{sql: "SELECT current_setting('app.tenant_id')"},
	{sql: "SELECT 1/0"},
	{sql: "SELECT * FROM no_such_table"},
	{sql: "SELEC 1"},
	{sql: ""},
	{sql: "BEGIN"},
	{sql: "BEGIN ISOLATION LEVEL REPEATABLE READ"},
	{sql: "START TRANSACTION READ ONLY"},
	{sql: "COMMIT"},
	{sql: "ROLLBACK"},
	{sql: "END"},
	{sql: "SAVEPOINT sp"},
	{sql: "ROLLBACK TO SAVEPOINT sp"},
	{sql: "RELEASE SAVEPOINT sp"},
	{sql: "SET LOCAL statement_timeout = '5s'"},
	{sql: "SHOW statement_timeout"},
	{sql: "SET LOCAL statement_timeout = 50; SELECT pg_sleep(2)"},
	{sql: "SELECT pg_sleep(0.02)"},
	{sql: "INSERT INTO copy_sink (line) VALUES ('fuzz-insert')"},
	{sql: "INSERT INTO projects (tenant_id, name) VALUES ('22222222-2222-2222-2222-222222222222', 'stolen')"},
	{sql: "DECLARE c CURSOR FOR SELECT g FROM generate_series(1, 10) g"},
	{sql: "FETCH 3 FROM c"},
	{sql: "CLOSE c"},
	{sql: "COPY copy_sink (line) FROM STDIN", copyIn: 1},
	{sql: "COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT"},
	{sql: "COPY (SELECT name FROM projects ORDER BY id) TO STDOUT (FORMAT csv, HEADER)"},
	{sql: "SELECT 1; COMMIT; SELECT 2"},
	{sql: "BEGIN; SELECT 1; COMMIT; SELECT current_setting('app.tenant_id')"},
	{sql: "SELECT 1; SELECT 1/0; SELECT 2"},
	{sql: "BEGIN; SELECT 1/0; COMMIT"},
	{sql: "SELECT 1;;"},
	{sql: "COPY (SELECT 1) TO STDOUT; COPY copy_sink (line) FROM STDIN", copyIn: 1},
	{sql: "COPY copy_sink (line) FROM STDIN; COPY copy_sink (line) FROM STDIN", copyIn: 2},
	{sql: "COPY copy_sink (line) FROM STDIN; SELECT 1", copyIn: 1},
	{sql: "SELECT length('" + longText + "')"},
	{sql: padComment + "SELECT name FROM projects ORDER BY id"},
	{sql: padComment + "COPY copy_sink (line) FROM STDIN", copyIn: 1},
	{sql: "PREPARE fz (int) AS SELECT $1 + count(*) FROM projects"},
	{sql: "EXECUTE fz(1)"},
	{sql: "BEGIN; EXECUTE fz(2); EXECUTE fz('x'); COMMIT"},
	{sql: "DEALLOCATE fz"},
}

// extendedCorpus is what Parse messages carry.
var extendedCorpus = []stmt{
	{sql: "SELECT 1"},
	{sql: "SELECT $1::int + 1", params: 1},
	{sql: "SELECT g FROM generate_series(1, $1::int) g", params: 1},
	{sql: "SELECT g, repeat('y', g) FROM generate_series(1, 4) g"},
	{sql: "SELECT name FROM projects ORDER BY id"},
	{sql: "SELECT current_setting('app.tenant_id')"},
	{sql: "SELECT 1/0"},
	{sql: "SELECT 1/$1::int", params: 1},
	{sql: "BEGIN"},
	{sql: "COMMIT"},
	{sql: "ROLLBACK"},
	{sql: "SAVEPOINT sp"},
	{sql: "SET LOCAL statement_timeout = '5s'"},
	{sql: "INSERT INTO copy_sink (line) VALUES ($1)", params: 1},
	{sql: "COPY copy_sink (line) FROM STDIN", copyIn: 1},
	{sql: "COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT"},
	{sql: ""},
	{sql: "SELECT 1; SELECT 2"},
	{sql: "SELEC 1"},
	{sql: "SELECT length('" + longText + "') + $1::int", params: 1},
	{sql: padComment + "SELECT g FROM generate_series(1, 3) g"},
	{sql: "EXECUTE fz(3)"},
}
