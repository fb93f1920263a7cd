package e2e

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

// execErr runs sql and returns the first error, of the query or of its
// results.
func execErr(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	results, err := conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		return err
	}
	for _, r := range results {
		if r.Err != nil {
			return r.Err
		}
	}
	return nil
}

func dur(d time.Duration) *config.Duration { return &config.Duration{Duration: d} }

// tenantLimits sets tenant A's limits.
func tenantLimits(l config.TenantLimits) func(*config.Config) {
	return func(c *config.Config) { c.Tenants = map[string]config.TenantLimits{tenantA.ID: l} }
}

// A tenant's statement_timeout, lock_timeout and
// idle_in_transaction_session_timeout are asserted with its context: its
// long statement is cancelled at its own timeout while another tenant's
// identical statement runs on (in transaction mode, on the same pooled
// connections), and no route lets the client lift them.
func TestTenantTimeouts(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, tenantLimits(config.TenantLimits{StatementTimeout: dur(300 * time.Millisecond),
			LockTimeout: dur(2 * time.Second), IdleInTransactionSessionTimeout: dur(time.Minute)}))
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		for i := 0; i < 2; i++ { // twice: in transaction mode, each tenant after the other on a connection
			start := time.Now()
			if err := execErr(a, "SELECT pg_sleep(1.5)"); pgCode(err) != "57014" || !strings.Contains(err.Error(), "statement timeout") {
				t.Fatalf("A's long statement: %v, want 57014 canceling statement due to statement timeout", err)
			}
			if d := time.Since(start); d > 1400*time.Millisecond {
				t.Errorf("A's statement was cancelled after %s, want about 300ms", d)
			}
			if err := execErr(b, "SELECT pg_sleep(0.5)"); err != nil {
				t.Fatalf("B's identical statement: %v", err)
			}
		}
		for setting, want := range map[string]string{"statement_timeout": "300ms", "lock_timeout": "2s", "idle_in_transaction_session_timeout": "1min"} {
			if got := queryOne(t, a, "SHOW "+setting); got != want {
				t.Errorf("A: SHOW %s = %q, want %q", setting, got, want)
			}
			for _, sql := range []string{
				"SET " + setting + " = 0",
				"SET SESSION " + setting + " TO '1h'",
				"BEGIN; SET LOCAL " + setting + " = 0",
				"RESET " + setting,
				"SET " + strings.ToUpper(setting) + " TO DEFAULT",
				"SELECT set_config('" + setting + "', '0', false)",
			} {
				if err := execErr(a, sql); pgCode(err) != "42501" {
					t.Errorf("A: %s: %v, want 42501", sql, err)
				}
				if err := execErr(a, "ROLLBACK"); err != nil {
					t.Fatal(err)
				}
			}
			if got := queryOne(t, a, "SHOW "+setting); got != want {
				t.Errorf("A after the refusals: SHOW %s = %q, want %q", setting, got, want)
			}
			// Protected for every tenant: one without a limit of its own
			// keeps the server's value.
			if err := execErr(b, "SET "+setting+" = 0"); pgCode(err) != "42501" {
				t.Errorf("B: SET %s: %v, want 42501", setting, err)
			}
		}
		// Not as startup parameters either, in options or as parameters.
		for _, extra := range []string{"options='-c statement_timeout=0'", "statement_timeout=0", "options='--lock-timeout=0'"} {
			if e := connectErr(t, p.connString(tenantA, extra)); e.Code != "42501" || e.Severity != "FATAL" {
				t.Errorf("startup %s: %s %s %q, want FATAL 42501", extra, e.Severity, e.Code, e.Message)
			}
		}
	})
}

// A tenant's max_transaction_duration ends a transaction open longer, busy
// or idle: the session gets FATAL 25P04, the transaction is rolled back,
// and the upstream connection is not reused; another tenant's transaction
// of the same length is fine.
func TestTenantTransactionDuration(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, tenantLimits(config.TenantLimits{MaxTransactionDuration: dur(500 * time.Millisecond)}))
		marker := "txdur-" + m.name
		superQuery(t, "DELETE FROM copy_sink WHERE line LIKE 'txdur-%'")

		b := p.pgconnect(t, tenantB)
		if err := execErr(b, "BEGIN; SELECT pg_sleep(0.8); COMMIT"); err != nil {
			t.Fatalf("B's transaction: %v", err)
		}

		// Busy: a statement running inside the block.
		a := p.pgconnect(t, tenantA)
		queryRows(t, a, "BEGIN")
		queryRows(t, a, "INSERT INTO copy_sink (line) VALUES ('"+marker+"')")
		start := time.Now()
		err := execErr(a, "SELECT pg_sleep(5)")
		var pgErr *pgconn.PgError
		if pgCode(err) != "25P04" || !strings.Contains(err.Error(), "transaction timeout") {
			t.Fatalf("A's long transaction: %v, want FATAL 25P04", err)
		}
		if pgconnErrorAs(err, &pgErr); pgErr.Severity != "FATAL" || !strings.Contains(pgErr.Detail, "max_transaction_duration") {
			t.Errorf("error %+v: want FATAL naming max_transaction_duration", pgErr)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("ended after %s, want about 500ms", d)
		}

		// Idle in the block.
		a = p.pgconnect(t, tenantA)
		queryRows(t, a, "BEGIN")
		queryRows(t, a, "INSERT INTO copy_sink (line) VALUES ('"+marker+"')")
		time.Sleep(time.Second)
		if err := execErr(a, "COMMIT"); pgCode(err) != "25P04" {
			t.Fatalf("COMMIT after idling past the limit: %v, want 25P04", err)
		}
		eventually(t, 5*time.Second, "the transactions to roll back", func() bool {
			return superQuery(t, "SELECT count(*) FROM copy_sink WHERE line = '"+marker+"'")[0][0] == "0"
		})
		// Short transactions of A go on, and B is fine (in transaction
		// mode, on connections other than the closed ones).
		a = p.pgconnect(t, tenantA)
		for range 3 {
			queryRows(t, a, "BEGIN; SELECT pg_sleep(0.1); COMMIT")
			queryOne(t, b, "SELECT 1")
		}
	})
}

func pgconnErrorAs(err error, target **pgconn.PgError) bool {
	pe, ok := err.(*pgconn.PgError)
	if ok {
		*target = pe
	}
	return ok
}

// A read-only user's sessions have default_transaction_read_only on, and
// no route turns it off; another user of the pool writes as usual.
func TestReadOnlyUser(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) { c.Users[0].ReadOnly = true })
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		insert := "INSERT INTO copy_sink (line) VALUES ('read-only-" + m.name + "')"
		for _, route := range []string{
			"SET default_transaction_read_only = off",
			"SET SESSION default_transaction_read_only TO false",
			"RESET default_transaction_read_only",
			"SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
			"BEGIN READ WRITE",
			"START TRANSACTION READ WRITE",
			"BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
			"BEGIN; SET TRANSACTION READ WRITE",
			"BEGIN; SET LOCAL transaction_read_only = off",
			"SELECT set_config('default_transaction_read_only', 'off', false)",
		} {
			if err := execErr(a, route); pgCode(err) != "42501" {
				t.Errorf("%s: %v, want 42501", route, err)
			}
			queryRows(t, a, "ROLLBACK")
			if err := execErr(a, insert); pgCode(err) != "25006" {
				t.Errorf("INSERT after %q: %v, want 25006 (read-only transaction)", route, err)
			}
			if err := execErr(a, "BEGIN; "+insert); pgCode(err) != "25006" {
				t.Errorf("INSERT in a block after %q: %v, want 25006", route, err)
			}
			queryRows(t, a, "ROLLBACK")
		}
		if got := queryOne(t, a, "SHOW default_transaction_read_only"); got != "on" {
			t.Errorf("SHOW default_transaction_read_only = %q", got)
		}
		// Reading and READ ONLY (PgJDBC's readOnlyMode=always) work.
		queryRows(t, a, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
		queryRows(t, a, "BEGIN READ ONLY; SELECT count(*) FROM projects; COMMIT")
		// A startup parameter does not turn it off either: the context wins.
		a2 := p.pgconnect(t, tenantA, "options='-c default_transaction_read_only=off'")
		if err := execErr(a2, insert); pgCode(err) != "25006" {
			t.Errorf("INSERT with default_transaction_read_only=off at startup: %v, want 25006", err)
		}
		// Another user writes.
		queryRows(t, b, "BEGIN READ WRITE; SELECT 1; ROLLBACK")
		queryRows(t, b, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
		if got := queryOne(t, b, "SHOW transaction_read_only"); got != "off" {
			t.Errorf("B: transaction_read_only = %q", got)
		}
	})
}

// A user's role is the upstream role of its sessions (SET ROLE with the
// context), as a JWT's role claim is, and cannot be left.
func TestUserRole(t *testing.T) {
	superQuery(t, `DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limits_reader') THEN CREATE ROLE limits_reader NOLOGIN; END IF;
END $$;
GRANT limits_reader TO app_rls;
GRANT USAGE ON SCHEMA public TO limits_reader;
GRANT SELECT ON projects TO limits_reader`)
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) { c.Users[0].Role = "limits_reader" })
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		for range 2 {
			if got := queryOne(t, a, "SELECT current_user"); got != "limits_reader" {
				t.Errorf("A: current_user = %q, want limits_reader", got)
			}
			if got := queryOne(t, b, "SELECT current_user"); got != "app_rls" {
				t.Errorf("B: current_user = %q, want app_rls", got)
			}
		}
		queryOne(t, a, "SELECT count(*) FROM projects")
		if err := execErr(a, "INSERT INTO copy_sink (line) VALUES ('role')"); pgCode(err) != "42501" {
			t.Errorf("A writes where its role may not: %v, want 42501", err)
		}
		for _, sql := range []string{"RESET ROLE", "SET ROLE app_rls", "SET SESSION AUTHORIZATION DEFAULT"} {
			if err := execErr(a, sql); pgCode(err) != "42501" {
				t.Errorf("%s: %v, want 42501", sql, err)
			}
		}
		if got := queryOne(t, a, "SELECT current_user"); got != "limits_reader" {
			t.Errorf("A at the end: current_user = %q", got)
		}
	})
}

// runFor runs tx on conns in parallel until d has passed and returns the
// transactions per second they completed.
func runFor(t *testing.T, conns []*pgconn.PgConn, d time.Duration, sql string) float64 {
	t.Helper()
	var n atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	deadline := start.Add(d)
	errs := make(chan error, len(conns))
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if err := execErr(c, sql); err != nil {
					errs <- err
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return float64(n.Load()) / time.Since(start).Seconds()
}

// A tenant's transactions_per_second holds within 10% under load from
// several clients, and another tenant running at the same time is not
// slowed by it; past rate_limit_wait a transaction start is refused.
func TestTenantRateLimit(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		const rate = 50
		p := startProxy(t, m.config(4, tenantLimits(config.TenantLimits{TransactionsPerSecond: ptr(float64(rate))})))
		var as, bs []*pgconn.PgConn
		for range 4 {
			as = append(as, p.pgconnect(t, tenantA))
		}
		for range 2 {
			bs = append(bs, p.pgconnect(t, tenantB))
		}
		bAlone := runFor(t, bs, time.Second, "SELECT 1")

		var aRate, bLoaded float64
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			aRate = runFor(t, as, 3*time.Second, "SELECT 1")
		}()
		time.Sleep(500 * time.Millisecond)
		bLoaded = runFor(t, bs, time.Second, "SELECT 1")
		wg.Wait()
		t.Logf("A: %.1f tps under a limit of %d; B: %.0f tps alone, %.0f tps next to A", aRate, rate, bAlone, bLoaded)
		if aRate < rate*0.9 || aRate > rate*1.1 {
			t.Errorf("A ran %.1f transactions per second, want %d ± 10%%", aRate, rate)
		}
		if bLoaded < bAlone*0.5 {
			// Alone once more, now that A is done: a machine that got busier
			// meanwhile (other tests) slows B alone too, A's limit does not.
			bAfter := runFor(t, bs, time.Second, "SELECT 1")
			t.Logf("B: %.0f tps alone after A", bAfter)
			if bLoaded < min(bAlone, bAfter)*0.5 {
				t.Errorf("B ran %.0f tps next to the limited A, %.0f and %.0f alone: slowed by A's limit", bLoaded, bAlone, bAfter)
			}
		}
	})
	t.Run("refused past rate_limit_wait", func(t *testing.T) {
		eachPoolMode(t, func(t *testing.T, m poolMode) {
			p := m.start(t, tenantLimits(config.TenantLimits{TransactionsPerSecond: ptr(0.5), RateLimitWait: dur(100 * time.Millisecond)}))
			a := p.pgconnect(t, tenantA)
			queryOne(t, a, "SELECT 1")
			err := execErr(a, "SELECT 1")
			var pgErr *pgconn.PgError
			if !pgconnErrorAs(err, &pgErr) || pgErr.Code != "53400" || pgErr.Severity != "FATAL" ||
				!strings.Contains(pgErr.Message, "rate_limit_wait") || !strings.Contains(pgErr.Detail, "transactions_per_second") {
				t.Fatalf("second transaction within the second: %v, want FATAL 53400 naming rate_limit_wait", err)
			}
			queryOne(t, p.pgconnect(t, tenantB), "SELECT 1") // not B's limit
		})
	})
}

func ptr[T any](v T) *T { return &v }

// Where the operator allows it, a token's claims set the session's limits
// (jwt.limit_claims) and make it read-only (jwt.read_only_claim); a token
// without the claims keeps the tenant's configured values.
func TestJWTLimitClaims(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize, tenantLimits(config.TenantLimits{StatementTimeout: dur(time.Minute)}), func(c *config.Config) {
			c.JWT.LimitClaims = map[string]string{"statement_timeout": "limits.statement_ms", "lock_timeout": "limits.lock"}
			c.JWT.ReadOnlyClaim = "bi"
		}))
		claims := claimsFor(tenantA.ID, "alice@acme", time.Hour)
		claims["limits"] = map[string]any{"statement_ms": 250, "lock": "3s"}
		claims["bi"] = true
		conn, err := e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claims))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if got := strings.Join(queryRows(t, conn, "SELECT current_setting('statement_timeout'), current_setting('lock_timeout'), current_setting('default_transaction_read_only')")[0], " "); got != "250ms 3s on" {
			t.Errorf("limits and read-only from the claims: %s", got)
		}
		if err := execErr(conn, "SELECT pg_sleep(1)"); pgCode(err) != "57014" {
			t.Errorf("statement past the claim's timeout: %v, want 57014", err)
		}
		for _, sql := range []string{"SET statement_timeout = 0", "BEGIN READ WRITE"} {
			if err := execErr(conn, sql); pgCode(err) != "42501" {
				t.Errorf("%s: %v, want 42501", sql, err)
			}
			queryRows(t, conn, "ROLLBACK")
		}

		plain, err := e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claimsFor(tenantA.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		defer plain.Close(context.Background())
		if got := strings.Join(queryRows(t, plain, "SELECT current_setting('statement_timeout'), current_setting('default_transaction_read_only')")[0], " "); got != "1min off" {
			t.Errorf("without the claims: %s, want the tenant's 1min and read-write", got)
		}
	})
}
