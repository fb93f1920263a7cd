package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// fakeDB is an injectable lookup query with a controllable clock.
type fakeDB struct {
	mu    sync.Mutex
	rows  map[string]dbRow
	err   error
	calls map[string]int
	total atomic.Int64
	now   time.Time
	// block, when set, is waited on by every query (after started is signalled).
	block   chan struct{}
	started chan struct{}
}

func newFakeDB() *fakeDB {
	return &fakeDB{rows: map[string]dbRow{}, calls: map[string]int{}, now: time.Unix(1_700_000_000, 0)}
}

func (f *fakeDB) query(ctx context.Context, user string) (dbRow, error) {
	f.total.Add(1)
	f.mu.Lock()
	f.calls[user]++
	block, started := f.block, f.started
	f.mu.Unlock()
	if block != nil {
		started <- struct{}{}
		select {
		case <-block:
		case <-ctx.Done():
			return dbRow{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return dbRow{}, f.err
	}
	return f.rows[user], nil
}

func (f *fakeDB) set(user, verifier, tenant string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rows[user] = dbRow{verifier: verifier, tenant: tenant, found: true}
}

func (f *fakeDB) del(user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.rows, user)
}

func (f *fakeDB) setErr(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *fakeDB) callsFor(user string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[user]
}

func (f *fakeDB) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *fakeDB) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

const (
	testCacheTTL    = time.Minute
	testNegativeTTL = 10 * time.Second
)

func newTestDBDirectory(t *testing.T, f *fakeDB, log *slog.Logger) *DBDirectory {
	t.Helper()
	cfg := &config.DBUsers{
		Query:       "SELECT verifier, tenant FROM users WHERE name = $1",
		CacheTTL:    config.Duration{Duration: testCacheTTL},
		NegativeTTL: config.Duration{Duration: testNegativeTTL},
	}
	d := newDBDirectory(cfg, log, f.query)
	d.now = f.clock
	t.Cleanup(d.Close)
	return d
}

var (
	testVerifierOnce sync.Once
	testVerifierStr  string
)

func testVerifier(t *testing.T) string {
	t.Helper()
	testVerifierOnce.Do(func() {
		v, err := NewVerifier("secret")
		if err != nil {
			panic(err)
		}
		testVerifierStr = v
	})
	return testVerifierStr
}

func wantLookup(t *testing.T, d Directory, user string, wantFound bool, wantTenant string) {
	t.Helper()
	e, ok := d.Lookup(user)
	if ok != wantFound {
		t.Fatalf("Lookup(%q) found = %v, want %v", user, ok, wantFound)
	}
	if ok && e.Tenant != wantTenant {
		t.Fatalf("Lookup(%q) tenant = %q, want %q", user, e.Tenant, wantTenant)
	}
}

func TestDBDirectoryCacheTTL(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	v := testVerifier(t)
	f.set("alice", v, "t1")

	wantLookup(t, d, "alice", true, "t1")
	e, _ := d.Lookup("alice")
	want, err := ParseVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(e.Credentials.StoredKey, want.StoredKey) || !bytes.Equal(e.Credentials.ServerKey, want.ServerKey) ||
		e.Credentials.Salt != want.Salt || e.Credentials.Iters != want.Iters {
		t.Fatalf("credentials = %+v, want %+v", e.Credentials, want)
	}

	// Changes in the database are not seen while the entry is fresh.
	f.set("alice", v, "t2")
	f.advance(testCacheTTL - time.Second)
	wantLookup(t, d, "alice", true, "t1")
	if n := f.callsFor("alice"); n != 1 {
		t.Fatalf("queries = %d, want 1 (cached)", n)
	}
	// ... and are once it expires.
	f.advance(time.Second)
	wantLookup(t, d, "alice", true, "t2")
	if n := f.callsFor("alice"); n != 2 {
		t.Fatalf("queries = %d, want 2 (expired)", n)
	}
	// A removed user stops being found after the TTL.
	f.del("alice")
	wantLookup(t, d, "alice", true, "t2")
	f.advance(testCacheTTL)
	wantLookup(t, d, "alice", false, "")
}

func TestDBDirectoryNegativeCache(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)

	for range 100 {
		wantLookup(t, d, "nobody", false, "")
	}
	if n := f.callsFor("nobody"); n != 1 {
		t.Fatalf("queries for an unknown name = %d, want 1", n)
	}
	// Added meanwhile: still unknown until the negative TTL expires.
	f.set("nobody", testVerifier(t), "t1")
	f.advance(testNegativeTTL - time.Millisecond)
	wantLookup(t, d, "nobody", false, "")
	f.advance(time.Millisecond)
	wantLookup(t, d, "nobody", true, "t1")
	if n := f.callsFor("nobody"); n != 2 {
		t.Fatalf("queries = %d, want 2", n)
	}
}

func TestDBDirectoryInvalidRows(t *testing.T) {
	v := testVerifier(t)
	for _, tc := range []struct {
		name, verifier, tenant string
	}{
		{"plaintext", "hunter2-plaintext", "t1"},
		{"corrupt verifier", strings.Replace(v, "$4096:", "$x:", 1), "t1"},
		{"empty verifier (NULL)", "", "t1"},
		{"empty tenant", v, ""},
		{"control character in tenant", v, "t1\x00"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDB()
			var logBuf testutil.SyncBuffer
			d := newTestDBDirectory(t, f, slog.New(slog.NewTextHandler(&logBuf, nil)))
			f.set("u", tc.verifier, tc.tenant)
			wantLookup(t, d, "u", false, "")
			wantLookup(t, d, "u", false, "")
			if n := f.callsFor("u"); n != 1 {
				t.Fatalf("queries = %d, want 1 (cached as unknown)", n)
			}
			logs := logBuf.String()
			if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "user=u") {
				t.Fatalf("want a warning naming the user, got %q", logs)
			}
			if tc.verifier != "" && strings.Contains(logs, tc.verifier) {
				t.Fatalf("log leaks the verifier: %q", logs)
			}
			if _, key, _ := strings.Cut(v, "$"); tc.verifier != "" && strings.Contains(logs, key[len(key)-20:]) {
				t.Fatalf("log leaks part of the verifier: %q", logs)
			}
		})
	}
}

func TestDBDirectoryErrorNotCached(t *testing.T) {
	f := newFakeDB()
	var logBuf testutil.SyncBuffer
	d := newTestDBDirectory(t, f, slog.New(slog.NewTextHandler(&logBuf, nil)))
	v := testVerifier(t)
	f.set("alice", v, "t1")
	f.setErr(errors.New("connection refused"))

	wantLookup(t, d, "alice", false, "")
	wantLookup(t, d, "alice", false, "")
	if n := f.callsFor("alice"); n != 2 {
		t.Fatalf("queries = %d, want 2 (errors are not cached)", n)
	}
	if logs := logBuf.String(); !strings.Contains(logs, "connection refused") || !strings.Contains(logs, "level=WARN") {
		t.Fatalf("want a warning with the error, got %q", logs)
	}
	// The database is back: found at once, no negative entry in the way.
	f.setErr(nil)
	wantLookup(t, d, "alice", true, "t1")
	if strings.Contains(logBuf.String(), v) {
		t.Fatal("log leaks the verifier")
	}
}

func TestDBDirectorySingleQueryUnderConcurrency(t *testing.T) {
	f := newFakeDB()
	f.set("alice", testVerifier(t), "t1")
	release := make(chan struct{})
	f.block, f.started = release, make(chan struct{}, 100)
	d := newTestDBDirectory(t, f, nil)

	const n = 50
	var wg sync.WaitGroup
	var found atomic.Int64
	for range n {
		wg.Go(func() {
			if e, ok := d.Lookup("alice"); ok && e.Tenant == "t1" {
				found.Add(1)
			}
		})
	}
	<-f.started
	// Give the other lookups time to join the query in flight; any that
	// arrive later hit the cache, so the count below holds either way.
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	if got := f.callsFor("alice"); got != 1 {
		t.Fatalf("queries = %d, want 1", got)
	}
	if found.Load() != n {
		t.Fatalf("%d of %d lookups found the user", found.Load(), n)
	}
}

func TestDBDirectoryConcurrentErrorShared(t *testing.T) {
	// Lookups joining a failing query all get "not found", and the next
	// lookup queries again.
	f := newFakeDB()
	f.set("alice", testVerifier(t), "t1")
	f.setErr(errors.New("down"))
	release := make(chan struct{})
	f.block, f.started = release, make(chan struct{}, 100)
	d := newTestDBDirectory(t, f, nil)

	var wg sync.WaitGroup
	var found atomic.Int64
	for range 20 {
		wg.Go(func() {
			if _, ok := d.Lookup("alice"); ok {
				found.Add(1)
			}
		})
	}
	<-f.started
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	if found.Load() != 0 {
		t.Fatalf("%d lookups found the user while the query failed", found.Load())
	}
	before := f.callsFor("alice")
	f.setErr(nil)
	wantLookup(t, d, "alice", true, "t1")
	if f.callsFor("alice") != before+1 {
		t.Fatal("the failed answer was cached")
	}
}

func TestDBDirectorySizeBound(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	d.maxEntries = 4
	v := testVerifier(t)
	for _, u := range []string{"u1", "u2", "u3"} {
		f.set(u, v, "t-"+u)
		wantLookup(t, d, u, true, "t-"+u)
	}
	// A flood of unknown names evicts unknown names, never the users.
	for i := range 100 {
		wantLookup(t, d, fmt.Sprintf("ghost%d", i), false, "")
		if len(d.cache) > d.maxEntries {
			t.Fatalf("cache has %d entries, bound is %d", len(d.cache), d.maxEntries)
		}
	}
	for _, u := range []string{"u1", "u2", "u3"} {
		wantLookup(t, d, u, true, "t-"+u)
		if n := f.callsFor(u); n != 1 {
			t.Fatalf("%s queried %d times; it was evicted", u, n)
		}
	}
	if d.unknown.Len() != 1 || d.found.Len() != 3 || len(d.cache) != 4 {
		t.Fatalf("found=%d unknown=%d cache=%d", d.found.Len(), d.unknown.Len(), len(d.cache))
	}
	// With no unknown names left to evict, the oldest user goes.
	f.set("u4", v, "t-u4")
	f.set("u5", v, "t-u5")
	wantLookup(t, d, "u4", true, "t-u4") // evicts ghost99
	wantLookup(t, d, "u5", true, "t-u5") // evicts u1
	if _, ok := d.cache["u1"]; ok {
		t.Fatal("oldest user u1 not evicted")
	}
	for _, u := range []string{"u2", "u3", "u4", "u5"} {
		if _, ok := d.cache[u]; !ok {
			t.Fatalf("%s evicted; want only the oldest (u1) gone", u)
		}
	}
	// Once everything has expired, the next insertion sweeps it all.
	f.advance(testCacheTTL)
	wantLookup(t, d, "new-ghost", false, "")
	if len(d.cache) != 1 {
		t.Fatalf("cache has %d entries after expiry sweep, want 1", len(d.cache))
	}
}

func TestDBDirectoryExpiredEvictedBeforeFresh(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	d.maxEntries = 2
	f.set("u1", testVerifier(t), "t")
	wantLookup(t, d, "u1", true, "t") // expires at 60s
	f.advance(testCacheTTL - 5*time.Second)
	wantLookup(t, d, "ghost1", false, "") // expires at 65s
	f.advance(5 * time.Second)
	// Full; u1 has expired, ghost1 has not: u1 goes, although the oldest
	// unknown name would go first if nothing had expired.
	wantLookup(t, d, "ghost2", false, "")
	if _, ok := d.cache["u1"]; ok {
		t.Fatal("expired u1 still cached")
	}
	for _, u := range []string{"ghost1", "ghost2"} {
		if _, ok := d.cache[u]; !ok {
			t.Fatalf("fresh %s evicted; want the expired u1 gone instead", u)
		}
	}
}

func TestDBDirectoryRejectsBadNamesWithoutQuery(t *testing.T) {
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	for _, u := range []string{"", "\xff\xfe", "a\x00b"} {
		wantLookup(t, d, u, false, "")
	}
	if n := f.total.Load(); n != 0 {
		t.Fatalf("%d queries for invalid names, want 0", n)
	}
	if len(d.cache) != 0 {
		t.Fatalf("invalid names were cached: %d entries", len(d.cache))
	}
}

func TestDBDirectoryClose(t *testing.T) {
	f := newFakeDB()
	release := make(chan struct{})
	f.block, f.started = release, make(chan struct{}, 1)
	d := newTestDBDirectory(t, f, nil)
	f.set("alice", testVerifier(t), "t1")
	done := make(chan bool)
	go func() {
		_, ok := d.Lookup("alice")
		done <- ok
	}()
	<-f.started
	// Close aborts the query in flight (the fake honours its context).
	d.Close()
	if <-done {
		t.Fatal("lookup aborted by Close found the user")
	}
	close(release)
}

func TestNewDBDirectory(t *testing.T) {
	if _, err := NewDBDirectory(&config.DBUsers{Connection: "postgres://u@127.0.0.1/db", Query: "SELECT 1"}, nil); err == nil {
		t.Fatal("query without $1 accepted")
	}
	_, err := NewDBDirectory(&config.DBUsers{Connection: "postgres://u:topsecretpw@127.0.0.1:notaport/db", Query: "SELECT a, b FROM t WHERE n = $1"}, nil)
	if err == nil {
		t.Fatal("bad connection string accepted")
	}
	if strings.Contains(err.Error(), "topsecretpw") {
		t.Fatalf("error leaks the password: %v", err)
	}

	// A server that refuses connections: not found, not cached, no panic;
	// NewDBDirectory itself does not connect.
	var logBuf testutil.SyncBuffer
	d, err := NewDBDirectory(&config.DBUsers{
		Connection: "postgres://u:pw@127.0.0.1:1/db?sslmode=disable&connect_timeout=2",
		Query:      "SELECT verifier, tenant FROM users WHERE name = $1",
	}, slog.New(slog.NewTextHandler(&logBuf, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.cacheTTL != defaultDBCacheTTL || d.negativeTTL != defaultDBNegativeTTL {
		t.Fatalf("TTL defaults = %v, %v", d.cacheTTL, d.negativeTTL)
	}
	wantLookup(t, d, "alice", false, "")
	if len(d.cache) != 0 {
		t.Fatal("a failed lookup was cached")
	}
	if !strings.Contains(logBuf.String(), "level=WARN") {
		t.Fatalf("no warning logged: %q", logBuf.String())
	}
}

func TestChain(t *testing.T) {
	static, _, err := NewStaticDirectory([]config.User{
		{Name: "alice", Password: testVerifier(t), Tenant: "static"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeDB()
	d := newTestDBDirectory(t, f, nil)
	f.set("alice", testVerifier(t), "db")
	f.set("bob", testVerifier(t), "db")
	c := Chain(static, nil, d)

	wantLookup(t, c, "alice", true, "static")
	if f.callsFor("alice") != 0 {
		t.Fatal("the database was asked for a config user")
	}
	wantLookup(t, c, "bob", true, "db")
	wantLookup(t, c, "carol", false, "")
	wantLookup(t, Chain(), "alice", false, "")
}
