// Package dbtest tests auth.DBDirectory against a real PostgreSQL; it is a
// package of its own because it needs a TestMain with a cluster.
package dbtest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

const (
	database       = "dbusers"
	lookupRole     = "pgtenant_lookup"
	lookupPassword = "lookup-pw"
	lookupQuery    = "SELECT verifier, tenant FROM pgtenant_users WHERE name = $1"
)

func TestMain(m *testing.M) {
	pgcluster.RunMain(m, pgcluster.Options{}, func(c *pgcluster.Cluster) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+database); err != nil {
			return err
		}
		return c.Exec(ctx, database, fmt.Sprintf(`
CREATE ROLE %[1]s LOGIN PASSWORD '%[2]s';
CREATE TABLE pgtenant_users (name text PRIMARY KEY, verifier text, tenant text);
REVOKE ALL ON pgtenant_users FROM PUBLIC;
GRANT SELECT ON pgtenant_users TO %[1]s;
CREATE TABLE secrets (x int);
REVOKE ALL ON secrets FROM PUBLIC;
`, lookupRole, lookupPassword))
	})
}

func exec(t *testing.T, sql string) {
	t.Helper()
	if err := pgcluster.Shared().Exec(testutil.Context(t), database, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func addUser(t *testing.T, name, verifier, tenant string) {
	t.Helper()
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
	exec(t, fmt.Sprintf("INSERT INTO pgtenant_users VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET verifier = excluded.verifier, tenant = excluded.tenant",
		q(name), q(verifier), q(tenant)))
	t.Cleanup(func() {
		_ = pgcluster.Shared().Exec(context.Background(), database, "DELETE FROM pgtenant_users WHERE name = "+q(name))
	})
}

func verifier(t *testing.T) string {
	t.Helper()
	v, err := auth.NewVerifier("secret")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func newDir(t *testing.T, query string, cacheTTL, negativeTTL time.Duration) (*auth.DBDirectory, *testutil.SyncBuffer) {
	t.Helper()
	logs := &testutil.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	d, err := auth.NewDBDirectory(&config.DBUsers{
		Connection:  pgcluster.Shared().URL(lookupRole, lookupPassword, database),
		Query:       query,
		CacheTTL:    config.Duration{Duration: cacheTTL},
		NegativeTTL: config.Duration{Duration: negativeTTL},
	}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		d.Close()
		if t.Failed() {
			fmt.Fprintf(os.Stderr, "directory log:\n%s", logs.String())
		}
	})
	return d, logs
}

// eventually polls cond every 20ms until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		if cond() {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func found(d auth.Directory, user string) bool {
	_, ok := d.Lookup(user)
	return ok
}

func TestLookup(t *testing.T) {
	testutil.NoLeaks(t)
	v := verifier(t)
	addUser(t, "alice", v, "11111111-1111-1111-1111-111111111111")
	addUser(t, "o'brien", v, "tenant-b")
	addUser(t, "null-verifier", v, "tenant-c")
	exec(t, "UPDATE pgtenant_users SET verifier = NULL WHERE name = 'null-verifier'")
	addUser(t, "bad-verifier", "md5abcdef", "tenant-c")
	addUser(t, "no-tenant", v, "")
	d, logs := newDir(t, lookupQuery, time.Minute, time.Minute)

	e, ok := d.Lookup("alice")
	if !ok || e.Tenant != "11111111-1111-1111-1111-111111111111" {
		t.Fatalf("alice: %v %+v", ok, e)
	}
	want, err := auth.ParseVerifier(v)
	if err != nil {
		t.Fatal(err)
	}
	if string(e.Credentials.StoredKey) != string(want.StoredKey) || e.Credentials.Salt != want.Salt || e.Credentials.Iters != want.Iters {
		t.Fatal("alice: credentials differ from the stored verifier")
	}
	if e, ok := d.Lookup("o'brien"); !ok || e.Tenant != "tenant-b" {
		t.Fatalf("o'brien: %v %+v", ok, e)
	}
	for _, u := range []string{"nobody", "x' OR '1'='1", "alice ", "ALICE", "null-verifier", "bad-verifier", "no-tenant"} {
		if found(d, u) {
			t.Errorf("%q found", u)
		}
	}
	if strings.Contains(logs.String(), "lookup failed") {
		t.Fatalf("a query failed:\n%s", logs)
	}
	if strings.Contains(logs.String(), v) || strings.Contains(logs.String(), "md5abcdef") {
		t.Fatalf("log leaks a verifier:\n%s", logs)
	}
	for _, u := range []string{"null-verifier", "bad-verifier", "no-tenant"} {
		if !strings.Contains(logs.String(), "user="+u) {
			t.Errorf("no warning for %s:\n%s", u, logs)
		}
	}
}

func TestUserAddedAndRemoved(t *testing.T) {
	testutil.NoLeaks(t)
	const ttl, negativeTTL = 200 * time.Millisecond, time.Second
	d, _ := newDir(t, lookupQuery, ttl, negativeTTL)
	v := verifier(t)

	// Looked up before it exists: cached as unknown, found once that expires.
	looked := time.Now()
	if found(d, "bob") {
		t.Fatal("bob found before being added")
	}
	addUser(t, "bob", v, "tenant-1")
	if time.Since(looked) < negativeTTL/2 && found(d, "bob") {
		t.Fatal("bob found although the unknown answer is cached")
	}
	took := eventually(t, 5*time.Second, "added user found", func() bool { return found(d, "bob") })
	t.Logf("added user found after %v", took)

	// Changed tenant: the new one is seen after the cache TTL.
	addUser(t, "bob", v, "tenant-2")
	eventually(t, 5*time.Second, "tenant change seen", func() bool {
		e, ok := d.Lookup("bob")
		return ok && e.Tenant == "tenant-2"
	})

	// Removed: not found once the cache TTL expires.
	exec(t, "DELETE FROM pgtenant_users WHERE name = 'bob'")
	took = eventually(t, 5*time.Second, "removed user gone", func() bool { return !found(d, "bob") })
	t.Logf("removed user gone after %v", took)

	// A never-looked-up user added while live is found at once.
	addUser(t, "carol", v, "tenant-3")
	if !found(d, "carol") {
		t.Fatal("carol not found")
	}
}

func TestBrokenQuery(t *testing.T) {
	testutil.NoLeaks(t)
	addUser(t, "dave", verifier(t), "t")
	addUser(t, "dave2", verifier(t), "t")
	for _, q := range []string{
		"SELECT verifier, tenant FROM no_such_table WHERE name = $1",
		"SELECT x::text, x::text FROM secrets WHERE $1::text IS NOT NULL", // permission denied
		"SELECT verifier FROM pgtenant_users WHERE name = $1",             // one column
		"SELECT verifier, tenant FROM pgtenant_users WHERE name >= $1",    // several rows
	} {
		d, logs := newDir(t, q, time.Minute, time.Minute)
		if found(d, "dave") {
			t.Errorf("%s: dave found", q)
		}
		if !strings.Contains(logs.String(), "level=WARN") {
			t.Errorf("%s: no warning:\n%s", q, logs)
		}
	}
}

// TestDatabaseDown stops the shared server; it must stay the last test that
// needs the server, or restore it (it does, in a cleanup).
func TestDatabaseDown(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	const ttl = 200 * time.Millisecond
	d, logs := newDir(t, lookupQuery, ttl, ttl)
	addUser(t, "erin", verifier(t), "tenant-e")
	if !found(d, "erin") {
		t.Fatal("erin not found")
	}

	if err := c.StopServerOnly(); err != nil {
		t.Fatal(err)
	}
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			if err := c.StartServer(context.Background()); err != nil {
				t.Errorf("restart: %v", err)
			}
		}
	})
	// Fails closed once the cached entry expires; the failures are logged and
	// not cached.
	eventually(t, 5*time.Second, "not found while the database is down", func() bool { return !found(d, "erin") })
	start := time.Now()
	if found(d, "erin") {
		t.Fatal("found while the database is down")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("lookup with the database down took %v", el)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("no warning while the database is down:\n%s", logs)
	}

	if err := c.StartServer(testutil.Context(t)); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// Recovers at once: the failure was not cached, the connection is remade.
	eventually(t, 5*time.Second, "found after the database is back", func() bool { return found(d, "erin") })
}
