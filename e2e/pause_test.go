package e2e

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/proxy"
)

// asyncResult is a query or login running while the test goes on.
type asyncResult struct {
	done chan struct{}
	rows [][]string
	conn *pgconn.PgConn
	err  error
}

// goQuery runs sql on conn in the background.
func goQuery(conn *pgconn.PgConn, sql string) *asyncResult {
	a := &asyncResult{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		results, err := conn.Exec(ctx, sql).ReadAll()
		a.err = err
		for _, r := range results {
			if r.Err != nil && a.err == nil {
				a.err = r.Err
			}
			for _, row := range r.Rows {
				var vals []string
				for _, v := range row {
					vals = append(vals, string(v))
				}
				a.rows = append(a.rows, vals)
			}
		}
	}()
	return a
}

// goExecParams runs sql with the extended protocol (Parse, Bind,
// Describe, Execute, Sync) in the background.
func goExecParams(conn *pgconn.PgConn, sql string) *asyncResult {
	a := &asyncResult{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res := conn.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
		a.err = res.Err
		for _, row := range res.Rows {
			var vals []string
			for _, v := range row {
				vals = append(vals, string(v))
			}
			a.rows = append(a.rows, vals)
		}
	}()
	return a
}

// goConnect logs in with connString in the background; the test closes
// the connection.
func goConnect(t *testing.T, connString string) *asyncResult {
	a := &asyncResult{done: make(chan struct{})}
	go func() {
		defer close(a.done)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		a.conn, a.err = pgconn.Connect(ctx, connString)
	}()
	t.Cleanup(func() {
		<-a.done
		if a.conn != nil {
			a.conn.Close(context.Background())
		}
	})
	return a
}

// wait waits for the result, failing the test after d.
func (a *asyncResult) wait(t *testing.T, d time.Duration, what string) *asyncResult {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(d):
		t.Fatalf("%s: no answer within %s", what, d)
	}
	return a
}

// stillWaiting reports whether the result has not come within d.
func (a *asyncResult) stillWaiting(d time.Duration) bool {
	select {
	case <-a.done:
		return false
	case <-time.After(d):
		return true
	}
}

// keepQuerying runs sql on conn in a loop until the returned stop is
// called, which reports how many ran and the errors.
func keepQuerying(conn *pgconn.PgConn, sql string) (stop func() (int, []error)) {
	var (
		n    int
		errs []error
		quit atomic.Bool
		wg   sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !quit.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := conn.Exec(ctx, sql).ReadAll()
			cancel()
			if err != nil {
				errs = append(errs, err)
				return
			}
			n++
			time.Sleep(5 * time.Millisecond)
		}
	}()
	return func() (int, []error) {
		quit.Store(true)
		wg.Wait()
		return n, errs
	}
}

// pauseCleanCopySink removes the rows these tests put in copy_sink, now
// and when the test ends.
func pauseCleanCopySink(t *testing.T) {
	const clean = "DELETE FROM copy_sink WHERE line LIKE 'pause: %' OR line LIKE 'move: %'"
	superQuery(t, clean)
	t.Cleanup(func() { superQuery(t, clean) })
}

func pauseTimeout(d time.Duration) func(*config.Config) {
	return func(c *config.Config) { c.PauseTimeout = config.Duration{Duration: d} }
}

// pausedWaiting is how many units and logins wait for tenant's resume.
func pausedWaiting(p *testProxy, tenant string) int64 {
	for _, info := range p.srv.Paused() {
		if info.Tenant == tenant {
			return info.Waiting
		}
	}
	return -1
}

// Pausing a tenant: its new transactions and logins wait while another
// tenant's run; its transaction in progress commits; the pause reports it
// until it ends; resume lets the waiting statement and login go on.
func TestPauseTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		pauseCleanCopySink(t)
		p := m.start(t, pauseTimeout(20*time.Second))
		idle, inTx, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		ext := p.pgconnect(t, tenantA)
		queryRows(t, inTx, "BEGIN; INSERT INTO copy_sink (line) VALUES ('pause: before')")

		ctx := context.Background()
		if info := p.srv.Pause(ctx, tenantA.ID, 0); info.InTransaction != 1 || info.Tenant != tenantA.ID {
			t.Fatalf("pause: %+v, want one session in a transaction", info)
		}
		// Waiting for the transaction in progress gives up after wait.
		start := time.Now()
		if info := p.srv.Pause(ctx, tenantA.ID, 300*time.Millisecond); info.InTransaction != 1 || time.Since(start) < 300*time.Millisecond {
			t.Fatalf("pause with wait: %+v after %s", info, time.Since(start))
		}

		waiting := goQuery(idle, "SELECT current_setting('app.tenant_id')")
		extWaiting := goExecParams(ext, "INSERT INTO copy_sink (line) VALUES ('pause: extended') RETURNING current_setting('app.tenant_id')")
		login := goConnect(t, p.connString(tenantA))
		if !waiting.stillWaiting(300*time.Millisecond) || !extWaiting.stillWaiting(0) {
			t.Fatalf("a paused tenant's statement ran: %v %v / %v %v", waiting.rows, waiting.err, extWaiting.rows, extWaiting.err)
		}
		eventually(t, 5*time.Second, "the statements and the login to wait", func() bool { return pausedWaiting(p, tenantA.ID) == 3 })
		if login.stillWaiting(0) == false {
			t.Fatalf("a paused tenant's login went through: %v", login.err)
		}
		// Other tenants go on.
		for range 5 {
			if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
				t.Fatalf("B: %s", got)
			}
		}
		// The transaction in progress finishes.
		queryRows(t, inTx, "INSERT INTO copy_sink (line) VALUES ('pause: during')")
		queryRows(t, inTx, "COMMIT")
		if info := p.srv.Pause(ctx, tenantA.ID, 5*time.Second); info.InTransaction != 0 || info.Waiting != 3 {
			t.Fatalf("pause after the commit: %+v", info)
		}
		if !waiting.stillWaiting(100 * time.Millisecond) {
			t.Fatalf("the statement ran before the resume")
		}

		info, err := p.srv.Resume(tenantA.ID)
		if err != nil || info.Waiting != 3 || info.Moved != 0 {
			t.Fatalf("resume: %+v %v", info, err)
		}
		if w := waiting.wait(t, 5*time.Second, "the waiting statement"); w.err != nil || len(w.rows) != 1 || w.rows[0][0] != tenantA.ID {
			t.Fatalf("after the resume: %v %v", w.rows, w.err)
		}
		if e := extWaiting.wait(t, 5*time.Second, "the waiting Execute"); e.err != nil || len(e.rows) != 1 || e.rows[0][0] != tenantA.ID {
			t.Fatalf("extended protocol after the resume: %v %v", e.rows, e.err)
		}
		if l := login.wait(t, 5*time.Second, "the waiting login"); l.err != nil {
			t.Fatalf("login after the resume: %v", l.err)
		}
		if got := queryOne(t, login.conn, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Fatalf("the login's session: %s", got)
		}
		if got := queryOne(t, idle, "SELECT count(*) FROM copy_sink WHERE line LIKE 'pause: %'"); got != "3" {
			t.Fatalf("rows of the transaction in progress: %s", got)
		}
		if _, err := p.srv.Resume(tenantA.ID); err != proxy.ErrNotPaused {
			t.Fatalf("resume of a tenant not paused: %v", err)
		}
		if len(p.srv.Paused()) != 0 {
			t.Fatalf("still paused: %+v", p.srv.Paused())
		}

		// A drain ends a waiting statement's session at once, as an idle one.
		p.srv.Pause(ctx, tenantA.ID, 0)
		waiting = goQuery(idle, "SELECT 1")
		login = goConnect(t, p.connString(tenantA))
		eventually(t, 5*time.Second, "the statement and the login to wait", func() bool { return pausedWaiting(p, tenantA.ID) == 2 })
		shutdown, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		start = time.Now()
		_ = p.srv.Shutdown(shutdown)
		if w := waiting.wait(t, 5*time.Second, "the statement during the drain"); pgCode(w.err) != "57P01" || time.Since(start) > 5*time.Second {
			t.Fatalf("waiting statement at the drain: %v after %s, want FATAL 57P01 at once", w.err, time.Since(start))
		}
		if l := login.wait(t, 5*time.Second, "the login during the drain"); pgCode(l.err) != "57P03" || !strings.Contains(l.err.Error(), "shutting down") {
			t.Fatalf("waiting login at the drain: %v, want FATAL 57P03", l.err)
		}
	})
}

// A pause that outlasts pause_timeout: the waiting statement fails with
// FATAL 57014 (not run), a waiting login with FATAL 57P03; other tenants
// are unaffected, and after the resume the tenant connects again.
func TestPauseTimeout(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		pauseCleanCopySink(t)
		p := m.start(t, pauseTimeout(500*time.Millisecond))
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		p.srv.Pause(context.Background(), tenantA.ID, 0)
		stmt := goQuery(a, "INSERT INTO copy_sink (line) VALUES ('pause: timed out')")
		login := goConnect(t, p.connString(tenantA))
		if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("B: %s", got)
		}
		s := stmt.wait(t, 5*time.Second, "the statement")
		if pgCode(s.err) != "57014" || !strings.Contains(s.err.Error(), "is paused and was not resumed within pause_timeout (500ms)") {
			t.Fatalf("statement: %v, want FATAL 57014", s.err)
		}
		l := login.wait(t, 5*time.Second, "the login")
		if pgCode(l.err) != "57P03" || !strings.Contains(l.err.Error(), "pause_timeout") {
			t.Fatalf("login: %v, want FATAL 57P03", l.err)
		}
		if _, err := p.srv.Resume(tenantA.ID); err != nil {
			t.Fatal(err)
		}
		if got := queryOne(t, p.pgconnect(t, tenantA), "SELECT count(*) FROM copy_sink WHERE line = 'pause: timed out'"); got != "0" {
			t.Fatalf("the timed-out statement ran: %s rows", got)
		}
		if got := queryOne(t, b, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("B after: %s", got)
		}
	})
}

// An online move: tenant C from the shared tables to a database of its
// own and A into a schema, by a reload while both are paused. B, not
// paused, runs all along without an error. C's transaction begun before
// the pause commits in the shared database. After the resume no
// statement of C or A runs on the old placement: in transaction mode the
// existing sessions move (the waiting statement runs on the new
// placement); in session mode they end with 57P01 and a new session goes
// to the new placement. A login made during the pause goes there in both.
func TestPauseMoveTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		schemaTenants(t)
		placeC := databaseTenant(t)
		pauseCleanCopySink(t)
		unplaced := func(c *config.Config) {
			placeC(c)
			delete(c.Tenants, tenantC.ID)
		}
		p := m.start(t, pauseTimeout(20*time.Second), unplaced)
		cIdle, cWait, cTx := p.pgconnect(t, tenantC), p.pgconnect(t, tenantC), p.pgconnect(t, tenantC)
		cLate := p.pgconnect(t, tenantC) // still in a transaction at the resume
		aWait := p.pgconnect(t, tenantA)
		b := p.pgconnect(t, tenantB)
		for _, c := range []*pgconn.PgConn{cIdle, cWait, aWait} {
			if got := queryOne(t, c, "SELECT current_database() || ' ' || current_user"); got != demo.Database+" "+demo.RLSRole {
				t.Fatalf("before the move: %s", got)
			}
		}
		queryRows(t, cIdle, "SET work_mem = '7MB'") // the client's own setting
		queryRows(t, cTx, "BEGIN; INSERT INTO copy_sink (line) VALUES ('move: in progress')")
		queryRows(t, cLate, "BEGIN")
		stopB := keepQuerying(b, "SELECT count(*) FROM projects")

		ctx := context.Background()
		p.srv.Pause(ctx, tenantC.ID, 0)
		p.srv.Pause(ctx, tenantA.ID, 0)
		cStmt := goQuery(cWait, "SELECT current_database(), current_setting('app.tenant_id')")
		aStmt := goQuery(aWait, "SELECT current_user, current_setting('search_path')")
		cLogin := goConnect(t, p.connString(tenantC))
		eventually(t, 5*time.Second, "C's statement and login to wait", func() bool { return pausedWaiting(p, tenantC.ID) == 2 })
		queryRows(t, cTx, "COMMIT")
		if info := p.srv.Pause(ctx, tenantC.ID, 300*time.Millisecond); info.InTransaction != 1 {
			t.Fatalf("C in a transaction: %+v, want cLate's only", info)
		}

		moved := proxyConfig(t, m.config(modePoolSize, pauseTimeout(20*time.Second), placeC, func(c *config.Config) {
			c.Tenants[tenantA.ID] = config.TenantLimits{Schema: "placement_s1", Role: "placement_r1"}
		}))
		if err := cli.Reload(p.srv, moved, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			t.Fatal(err)
		}
		if !cStmt.stillWaiting(100 * time.Millisecond) {
			t.Fatalf("C's statement ran before the resume: %v %v", cStmt.rows, cStmt.err)
		}
		for _, tn := range []demo.Tenant{tenantC, tenantA} {
			info, err := p.srv.Resume(tn.ID)
			if err != nil {
				t.Fatal(err)
			}
			// C: the idle session, the waiting one, the one that was in a
			// transaction, the one that still is (the waiting login is no
			// session yet); A: one.
			wantMoved := map[string]int{tenantC.ID: 4, tenantA.ID: 1}[tn.ID]
			if info.Moved != wantMoved {
				t.Errorf("resume %s: %+v, want %d sessions moved", tn.Name, info, wantMoved)
			}
		}

		// A transaction in progress at the resume (the pause did not wait for
		// it) finishes where it began; the session moves, or ends, after it.
		if got := queryOne(t, cLate, "SELECT current_database()"); got != demo.Database {
			t.Fatalf("C's transaction in progress at the resume runs in %s", got)
		}
		queryRows(t, cLate, "COMMIT")
		if m.tx {
			if got := queryOne(t, cLate, "SELECT current_database()"); got != placementDB {
				t.Fatalf("C's session after its transaction: %s", got)
			}
		} else if err := execErr(cLate, "SELECT 1"); pgCode(err) != "57P01" || !strings.Contains(err.Error(), "was moved while paused") {
			t.Fatalf("C's session-mode session after its transaction: %v, want FATAL 57P01", err)
		}

		c := cStmt.wait(t, 5*time.Second, "C's waiting statement")
		a := aStmt.wait(t, 5*time.Second, "A's waiting statement")
		if m.tx {
			if c.err != nil || !slices.Equal(c.rows[0], []string{placementDB, tenantC.ID}) {
				t.Fatalf("C's waiting statement: %v %v, want it run in %s", c.rows, c.err, placementDB)
			}
			if a.err != nil || !slices.Equal(a.rows[0], []string{"placement_r1", "placement_s1"}) {
				t.Fatalf("A's waiting statement: %v %v, want it run in schema placement_s1", a.rows, a.err)
			}
			for _, conn := range []*pgconn.PgConn{cIdle, cTx} {
				if got := queryOne(t, conn, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != placementDB+" "+tenantC.ID {
					t.Fatalf("C's session after the move: %s", got)
				}
			}
			if got := queryOne(t, cIdle, "SHOW work_mem"); got != "7MB" {
				t.Fatalf("the client's setting after the move: %s", got)
			}
			for _, s := range p.srv.Sessions() {
				if s.Tenant == tenantC.ID && s.Upstream != "c_db" {
					t.Fatalf("status after the move: %+v", s)
				}
			}
			if got := queryOne(t, aWait, "SELECT note FROM placement_notes"); got != "secret of s1" {
				t.Fatalf("A's session after the move sees %q", got)
			}
			// The guard of a schema placement now protects its search_path.
			if err := execErr(aWait, "SET search_path TO public"); pgCode(err) != "42501" {
				t.Fatalf("A's moved session sets search_path: %v", err)
			}
		} else {
			for what, err := range map[string]error{"C's waiting statement": c.err, "A's waiting statement": a.err} {
				if pgCode(err) != "57P01" || !strings.Contains(err.Error(), "was moved while paused") {
					t.Errorf("%s: %v, want FATAL 57P01", what, err)
				}
			}
			for _, conn := range []*pgconn.PgConn{cIdle, cTx} {
				if err := execErr(conn, "SELECT current_database()"); pgCode(err) != "57P01" {
					t.Errorf("C's idle session-mode session after the move: %v, want it ended", err)
				}
			}
		}
		l := cLogin.wait(t, 5*time.Second, "C's login")
		if l.err != nil {
			t.Fatalf("C's login during the pause: %v", l.err)
		}
		if got := queryOne(t, l.conn, "SELECT current_database() || ' ' || current_setting('app.tenant_id')"); got != placementDB+" "+tenantC.ID {
			t.Fatalf("C's login during the pause went to %s", got)
		}
		if got := queryOne(t, p.pgconnect(t, tenantC), "SELECT current_database()"); got != placementDB {
			t.Fatalf("C's new session: %s", got)
		}
		// C's transaction from before the pause committed on the old placement.
		if got := superQuery(t, "SELECT count(*) FROM copy_sink WHERE line = 'move: in progress' AND tenant_id = '"+tenantC.ID+"'"); got[0][0] != "1" {
			t.Fatalf("C's transaction in progress: %v rows", got)
		}
		n, errs := stopB()
		if len(errs) > 0 || n < 10 {
			t.Fatalf("B during the move: %d queries, errors %v", n, errs)
		}
	})
}

// A unit the session let through just before the pause, but has not sent
// yet (held here in the guard), counts as in progress: the pause does not
// report the tenant idle while it could still start a transaction on the
// old placement. It runs once let go, and then the pause finds none.
func TestPauseSeesUnitLetThrough(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		pauseCleanCopySink(t)
		p := m.start(t, pauseTimeout(20*time.Second))
		held, release := make(chan struct{}), make(chan struct{})
		var once sync.Once
		p.srv.SetTestingKnobs(&proxy.TestingKnobs{OnStatement: func(text []byte) {
			if strings.Contains(string(text), "INSERT INTO copy_sink (line) VALUES ('pause: let through')") {
				once.Do(func() {
					close(held)
					<-release
				})
			}
		}})
		a := p.pgconnect(t, tenantA)
		var releaseOnce sync.Once
		letGo := func() { releaseOnce.Do(func() { close(release) }) }
		t.Cleanup(letGo) // a failing test must not leave the session held
		stmt := goQuery(a, "INSERT INTO copy_sink (line) VALUES ('pause: let through')")
		<-held
		if info := p.srv.Pause(context.Background(), tenantA.ID, 300*time.Millisecond); info.InTransaction != 1 {
			t.Fatalf("pause with a unit let through: %+v, want it counted in a transaction", info)
		}
		letGo()
		if s := stmt.wait(t, 5*time.Second, "the statement let through"); s.err != nil {
			t.Fatalf("the statement let through before the pause: %v", s.err)
		}
		if info := p.srv.Pause(context.Background(), tenantA.ID, 5*time.Second); info.InTransaction != 0 {
			t.Fatalf("pause after it: %+v", info)
		}
		if _, err := p.srv.Resume(tenantA.ID); err != nil {
			t.Fatal(err)
		}
		if got := queryOne(t, a, "SELECT count(*) FROM copy_sink WHERE line = 'pause: let through'"); got != "1" {
			t.Fatalf("rows: %s", got)
		}
	})
}

// Transaction mode only (session mode ends every moved session): a
// session pinned to its pooled connection, or that has used LISTEN, keeps
// state on the old placement, so a resume that moves its tenant ends it
// (57P01) at its next statement; the pinned connection is not reused.
func TestPauseMovePinned(t *testing.T) {
	placeC := databaseTenant(t)
	p := poolModes[1].start(t, pauseTimeout(20*time.Second), func(c *config.Config) {
		placeC(c)
		delete(c.Tenants, tenantC.ID)
	})
	pinned, listening, plain := p.pgconnect(t, tenantC), p.pgconnect(t, tenantC), p.pgconnect(t, tenantC)
	queryRows(t, pinned, "SELECT pg_advisory_lock(4242)")
	queryRows(t, listening, "LISTEN pause_moves")
	p.srv.Pause(context.Background(), tenantC.ID, 0)
	waiting := goQuery(pinned, "SELECT 1")
	eventually(t, 5*time.Second, "the pinned session to wait", func() bool { return pausedWaiting(p, tenantC.ID) == 1 })
	moved := proxyConfig(t, poolModes[1].config(modePoolSize, pauseTimeout(20*time.Second), placeC))
	if err := cli.Reload(p.srv, moved, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	if info, err := p.srv.Resume(tenantC.ID); err != nil || info.Moved != 3 {
		t.Fatalf("resume: %+v %v", info, err)
	}
	w := waiting.wait(t, 5*time.Second, "the pinned session's statement")
	if pgCode(w.err) != "57P01" || !strings.Contains(w.err.Error(), "was moved while paused") {
		t.Fatalf("pinned session: %v, want FATAL 57P01", w.err)
	}
	if err := execErr(listening, "SELECT 1"); pgCode(err) != "57P01" {
		t.Fatalf("listening session: %v, want FATAL 57P01", err)
	}
	if got := queryOne(t, plain, "SELECT current_database()"); got != placementDB {
		t.Fatalf("C's plain session after the move: %s", got)
	}
	// The advisory lock went with the pinned connection.
	if got := queryOne(t, p.pgconnect(t, tenantA), "SELECT pg_try_advisory_lock(4242)"); got != "t" {
		t.Fatalf("the pinned session's lock is still held")
	}
}

// `pgtenant pause` and `pgtenant resume` through the admin endpoint: the
// pause waits for the transaction in progress (exit 1 while it runs), the
// status and the metrics show the paused tenant and what waits, resume
// lets the waiting statement run, and a second resume is refused.
func TestPauseCommands(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		admin := ln.Addr().String()
		ln.Close()
		rp := startBinary(t, m.yaml()+"admin_listen: "+admin+"\npause_timeout: 20s\n", tenantA, tenantB)
		connect := func(tn demo.Tenant) *pgconn.PgConn {
			t.Helper()
			c, err := rp.connect(tn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			return c
		}
		run := func(args ...string) (string, int) {
			t.Helper()
			out, err := exec.Command(buildBinary(t), args...).CombinedOutput()
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			return string(out), code
		}
		a, inTx := connect(tenantA), connect(tenantA)
		queryRows(t, inTx, "BEGIN; SELECT 1")
		out, code := run("pause", tenantA.ID, "--admin", admin, "--wait", "300ms")
		if code != 1 || !strings.Contains(out, "1 of its sessions are still in a transaction") {
			t.Fatalf("pause during a transaction: exit %d: %s", code, out)
		}
		stmt := goQuery(a, "SELECT current_setting('app.tenant_id')")
		queryRows(t, inTx, "COMMIT")
		out, code = run("pause", "--admin", admin, tenantA.ID)
		if code != 0 || !strings.Contains(out, "tenant "+tenantA.ID+" paused: no transaction of it is in progress") {
			t.Fatalf("pause: exit %d: %s", code, out)
		}
		eventually(t, 5*time.Second, "the statement to wait", func() bool {
			out, _ := run("status", "--admin", admin)
			return strings.Contains(out, "paused: "+tenantA.ID) && strings.Contains(out, "1 waiting, 0 in a transaction")
		})
		resp, err := http.Get("http://" + admin + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, want := range []string{"pgtenant_paused_tenants 1", "pgtenant_pause_waiting 1"} {
			if !strings.Contains(string(body), want) {
				t.Errorf("metrics lack %q", want)
			}
		}
		if got := queryOne(t, connect(tenantB), "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
			t.Fatalf("B while A is paused: %s", got)
		}
		if !stmt.stillWaiting(0) {
			t.Fatalf("A's statement ran while paused: %v", stmt.err)
		}
		out, code = run("resume", tenantA.ID, "--admin", admin)
		if code != 0 || !strings.Contains(out, "tenant "+tenantA.ID+" resumed: 1 waiting went on, 0 sessions moved") {
			t.Fatalf("resume: exit %d: %s", code, out)
		}
		if s := stmt.wait(t, 5*time.Second, "the statement"); s.err != nil || s.rows[0][0] != tenantA.ID {
			t.Fatalf("after the resume: %v %v", s.rows, s.err)
		}
		out, code = run("resume", tenantA.ID, "--admin", admin)
		if code != 1 || !strings.Contains(out, "404") || !strings.Contains(out, "is not paused") {
			t.Fatalf("second resume: exit %d: %s", code, out)
		}
		if out, code = run("pause", "--admin", admin); code != 2 || !strings.Contains(out, "usage: pgtenant pause") {
			t.Fatalf("pause without a tenant: exit %d: %s", code, out)
		}
	})
}
