package proxy

import "testing"

func TestPipelineSafe(t *testing.T) {
	tests := []struct {
		in          string
		want, local bool // session scope; transaction scope (local)
	}{
		{"SELECT 1", true, true},
		{"  select 1", true, true},
		{"/* a /* nested */ comment */ SELECT 1", true, true},
		{"-- line\nINSERT INTO t VALUES (1)", true, true},
		{"(SELECT 1) UNION (SELECT 2)", true, true},
		{"WITH x AS (SELECT 1) SELECT * FROM x", true, true},
		{"begin", true, true},
		{"VACUUM", false, false},
		{"vacuum analyze t", false, false},
		{"CREATE DATABASE x", false, false},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", false, false},
		{"CALL p()", false, false},
		{"DO $$ BEGIN END $$", false, true},
		{"SET work_mem = '1MB'", false, true},
		{"reset work_mem; SELECT 1", false, true},
		{"LOCK TABLE t", false, false},
		{"/* unterminated SELECT 1", true, true},
		{"", true, true},
		{" -- nothing\n", true, true},
		{";", true, true},
		{"selectx 1", false, false},
		{"setx 1", false, false},
	}
	for _, tt := range tests {
		if got := pipelineSafe([]byte(tt.in), false); got != tt.want {
			t.Errorf("pipelineSafe(%q) = %v, want %v", tt.in, got, tt.want)
		}
		if got := pipelineSafe([]byte(tt.in), true); got != tt.local {
			t.Errorf("pipelineSafe(%q, local) = %v, want %v", tt.in, got, tt.local)
		}
	}
}

func TestIsTransactionEnd(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"COMMIT", true},
		{"commit;", true},
		{" END WORK ; ", true},
		{"ROLLBACK TRANSACTION", true},
		{"abort", true},
		{"ROLLBACK TO SAVEPOINT s1", true},
		{"rollback to s1", true},
		{`ROLLBACK TO "my sp"`, true},
		{"RELEASE SAVEPOINT s1", true},
		{"release s1", true},
		{"COMMIT AND CHAIN", false},
		{"ROLLBACK AND NO CHAIN", false},
		{"COMMIT PREPARED 'x'", false},
		{"COMMIT; SELECT 1", false},
		{"ROLLBACK TO", false},
		{"SELECT 1", false},
		{"/* COMMIT */ SELECT 1", false},
		{`"commit"`, false},
		{"", false},
	}
	for _, tt := range tests {
		if got := isTransactionEnd([]byte(tt.in)); got != tt.want {
			t.Errorf("isTransactionEnd(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
	// Every Parse is asked: a statement that is no transaction end costs
	// no allocation.
	text := []byte("SELECT abalance FROM pgbench_accounts WHERE aid = $1")
	if n := testing.AllocsPerRun(100, func() { isTransactionEnd(text) }); n != 0 {
		t.Errorf("isTransactionEnd of a SELECT: %v allocations, want 0", n)
	}
}

func TestQuoteLiteral(t *testing.T) {
	tests := []struct{ in, want string }{
		{"11111111-1111-1111-1111-111111111111", "'11111111-1111-1111-1111-111111111111'"},
		{"o'brien", "'o''brien'"},
		{`back\slash'`, `E'back\\slash'''`},
	}
	for _, tt := range tests {
		if got := quoteLiteral(tt.in); got != tt.want {
			t.Errorf("quoteLiteral(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}
