package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/proxy"
)

func TestDescribeRemovesLiterals(t *testing.T) {
	tests := []struct {
		desc, sql string
		want      string // normalized text; "" when unparsed
		secrets   []string
	}{
		{"strings and numbers", "SELECT * FROM t WHERE a = 'secret' AND b = 4242 LIMIT 5",
			"SELECT * FROM t WHERE a = $1 AND b = $2 LIMIT $3", []string{"secret", "4242"}},
		{"every constant form", "INSERT INTO t VALUES ('s1x', 3.14159, -777, E'esc9', $$dollar9$$, B'10101', x'1f1f', U&'uni9')",
			"INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", []string{"s1x", "3.14", "777", "esc9", "dollar9", "10101", "1f1f", "uni9"}},
		{"SET value", "SET app.tenant_id = 'tenant-secret'", "SET app.tenant_id = $1", []string{"tenant-secret"}},
		{"set_config", "SELECT set_config('app.x', 'val-secret', false)", "SELECT set_config($1, $2, $3)", []string{"val-secret"}},
		{"EXECUTE arguments (left by Normalize)", "EXECUTE p(98765, 'arg-secret')", "EXECUTE p(?, ?)", []string{"98765", "arg-secret"}},
		{"COMMENT ... IS (left by Normalize)", "COMMENT ON TABLE t IS 'comment-secret'", "COMMENT ON TABLE t IS ?", []string{"comment-secret"}},
		{"DEFAULT (left by Normalize)", "CREATE TABLE t (a int DEFAULT 31337)", "CREATE TABLE t (a int DEFAULT ?)", []string{"31337"}},
		{"DO body", "DO $$ BEGIN RAISE NOTICE 'do-secret'; END $$", "DO $1", []string{"do-secret"}},
		{"comments dropped", "SELECT 1 -- note-secret\n, 2 /* block-secret */", "SELECT $1 \n, $2", []string{"note-secret", "block-secret"}},
		{"division", "SELECT 1/0", "SELECT $1/$2", nil},
		{"unparsable: no text", "SELEC broken 'bad-secret'", "", []string{"bad-secret"}},
		{"unterminated quote: no text", "SELECT 'open-secret", "", []string{"open-secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			st := describe(tt.sql)
			if st.Normalized != tt.want {
				t.Errorf("Normalized = %q, want %q", st.Normalized, tt.want)
			}
			if (st.Fingerprint == "") != (tt.want == "") {
				t.Errorf("Fingerprint = %q with Normalized %q", st.Fingerprint, st.Normalized)
			}
			for _, s := range tt.secrets {
				if strings.Contains(st.Normalized, s) || strings.Contains(st.Fingerprint, s) {
					t.Errorf("%q appears in %+v", s, st)
				}
			}
		})
	}
}

func TestFingerprintIgnoresValues(t *testing.T) {
	a, b := describe("SELECT * FROM t WHERE id = 1"), describe("SELECT * FROM t WHERE id = 2")
	if a.Fingerprint != b.Fingerprint || a.Normalized != b.Normalized {
		t.Errorf("%+v and %+v differ", a, b)
	}
}

func TestMaskQuoted(t *testing.T) {
	tests := []struct{ in, want string }{
		{`permission denied to set parameter "app.tenant_id" to "x" through pgtenant`, `permission denied to set parameter "…" through pgtenant`},
		{`unterminated quoted string at or near "'{"token": "s3cr3t"} WHERE id = 1"`, `unterminated quoted string at or near "…"`},
		{`permission denied: "a\"b" is refused`, `permission denied: "…" is refused`},
		{`invalid value 'x"y' for setting`, `invalid value "…" for setting`},
		{`syntax error at or near "secret"`, `syntax error at or near "…"`},
		{`no quotes here`, `no quotes here`},
		{`unterminated "abc`, `unterminated "…"`},
	}
	for _, tt := range tests {
		if got := maskQuoted(tt.in); got != tt.want {
			t.Errorf("maskQuoted(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCacheBounded(t *testing.T) {
	c := newCache(3)
	first := c.get([]byte("SELECT 1"))
	if c.get([]byte("SELECT 1")) != first {
		t.Error("a repeated text was worked out again")
	}
	for _, s := range []string{"SELECT a FROM t", "SELECT b FROM t", "SELECT c FROM t", "SELECT d FROM t"} {
		c.get([]byte(s))
	}
	if n := len(c.m); n != 3 {
		t.Errorf("cache holds %d entries, want 3", n)
	}
	long := "SELECT " + strings.Repeat("1+", maxCachedText) + "1"
	c.get([]byte(long))
	if _, ok := c.m[long]; ok {
		t.Error("a text over maxCachedText was cached")
	}
}

func rate(f float64) *float64 { return &f }

func TestSample(t *testing.T) {
	cfg := &config.Audit{Output: "stdout", SampleRate: rate(0.5), Buffer: 10,
		TenantSampleRates: map[string]float64{"all": 1, "none": 0}}
	tests := []struct {
		tenant   string
		min, max int // of 1000 statements
	}{
		{"all", 1000, 1000},
		{"none", 0, 0},
		{"other", 350, 650}, // 0.5: far from either bound by chance
	}
	l := openTest(t, cfg, io.Discard)
	for _, tt := range tests {
		n := 0
		for range 1000 {
			if l.Sample(tt.tenant) {
				n++
			}
		}
		if n < tt.min || n > tt.max {
			t.Errorf("Sample(%q): %d of 1000, want %d..%d", tt.tenant, n, tt.min, tt.max)
		}
	}
	// A reload changes the rates at once.
	l.Apply(&config.Audit{Output: "stdout", SampleRate: rate(0), Buffer: 10})
	if l.Sample("all") {
		t.Error("Sample after a reload to rate 0 = true")
	}
}

func openTest(t *testing.T, cfg *config.Audit, stdout io.Writer) *Log {
	t.Helper()
	l, err := Open(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), Options{Stdout: stdout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Close)
	return l
}

// blockingWriter holds every write until released.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestFullBufferDropsAndCounts(t *testing.T) {
	w := &blockingWriter{release: make(chan struct{})}
	l := openTest(t, &config.Audit{Output: "stdout", Buffer: 4}, w)
	st := l.Statement([]byte("SELECT 1"))
	// The writer takes one event and blocks writing it; 4 more fill the
	// buffer; the rest are dropped, and Log never waits.
	const sent = 50
	for range sent {
		l.Log(proxy.AuditEvent{Kind: proxy.AuditStatementRun, Time: time.Now(), Tenant: "t", Statement: st})
	}
	dropped := l.Dropped()
	if dropped < sent-4-1 || dropped > sent-4 {
		t.Errorf("Dropped = %d, want %d or %d", dropped, sent-5, sent-4)
	}
	close(w.release)
	l.Close()
	lines := strings.Count(w.buf.String(), "\n")
	if uint64(lines)+dropped != sent {
		t.Errorf("%d lines written + %d dropped, want %d", lines, dropped, sent)
	}
}

func TestFileAppendAndReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(path, []byte("{\"earlier\":true}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &config.Audit{Output: path, Buffer: 100}
	l := openTest(t, cfg, io.Discard)
	st := l.Statement([]byte("SELECT * FROM t WHERE a = 'x'"))
	l.Log(proxy.AuditEvent{Kind: proxy.AuditStatementRun, Time: time.Now(), Tenant: "t1", User: "u", Conn: 7, Statement: st, Protocol: "simple", Rows: 3})
	// logrotate: rename, then SIGHUP (Apply): the next line goes to a new
	// file (one logged before may go to either).
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l.Apply(cfg)
	l.Log(proxy.AuditEvent{Kind: proxy.AuditRefusal, Time: time.Now(), Tenant: "t2", User: "u", Conn: 8, Statement: st, SQLState: "42501", Reason: `permission denied to set parameter "a" to "b"`})
	l.Close()
	old, cur := readLines(t, path+".1"), readLines(t, path)
	if len(old)+len(cur) != 3 || len(old) < 1 || len(cur) < 1 || old[0] != `{"earlier":true}` {
		t.Fatalf("rotated file has %q, new file %q; want the earlier line, then 2 more", old, cur)
	}
	all := append(old[1:], cur...)
	var got map[string]any
	if err := json.Unmarshal([]byte(all[0]), &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"kind": "statement", "tenant": "t1", "user": "u", "conn": 7.0, "protocol": "simple",
		"statement": "SELECT * FROM t WHERE a = $1", "rows": 3.0, "fingerprint": st.Fingerprint}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("line %s: %s = %v, want %v", all[0], k, got[k], v)
		}
	}
	last := cur[len(cur)-1]
	if !strings.Contains(last, `"reason":"permission denied to set parameter \"…\""`) || !strings.Contains(last, `"kind":"refusal"`) {
		t.Errorf("refusal line = %s", last)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("new file: %v, mode %v; want 0600", err, fi.Mode())
	}
}

func TestOpenFailsOnBadPath(t *testing.T) {
	_, err := Open(&config.Audit{Output: filepath.Join(t.TempDir(), "missing", "audit.jsonl"), Buffer: 1}, slog.Default(), Options{})
	if err == nil || !strings.Contains(err.Error(), "audit.output") {
		t.Errorf("Open error = %v, want one naming audit.output", err)
	}
}

func readLines(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}
