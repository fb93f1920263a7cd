package proxy

import "testing"

func TestPipelineSafe(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"SELECT 1", true},
		{"  select 1", true},
		{"/* a /* nested */ comment */ SELECT 1", true},
		{"-- line\nINSERT INTO t VALUES (1)", true},
		{"(SELECT 1) UNION (SELECT 2)", true},
		{"WITH x AS (SELECT 1) SELECT * FROM x", true},
		{"begin", true},
		{"VACUUM", false},
		{"vacuum analyze t", false},
		{"CREATE DATABASE x", false},
		{"CREATE INDEX CONCURRENTLY i ON t (a)", false},
		{"CALL p()", false},
		{"DO $$ BEGIN END $$", false},
		{"SET work_mem = '1MB'", false},
		{"LOCK TABLE t", false},
		{"/* unterminated SELECT 1", true},
		{"", true},
		{" -- nothing\n", true},
		{";", true},
		{"selectx 1", false},
	}
	for _, tt := range tests {
		if got := pipelineSafe([]byte(tt.in)); got != tt.want {
			t.Errorf("pipelineSafe(%q) = %v, want %v", tt.in, got, tt.want)
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
		{"", false},
	}
	for _, tt := range tests {
		if got := isTransactionEnd([]byte(tt.in)); got != tt.want {
			t.Errorf("isTransactionEnd(%q) = %v, want %v", tt.in, got, tt.want)
		}
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
