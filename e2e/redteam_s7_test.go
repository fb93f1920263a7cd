package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/cli"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

// Red team, session 7.

// A peers entry whose address reaches a replica's listen address (here
// "localhost:<listen port>", which the config cannot tell from the listen
// address "127.0.0.1:<port>") instead of that replica's peer address: a
// cancel for that peer id is forwarded to the listen address, taken there
// as a client's cancel, and forwarded again. Each hop used to forward it
// anew, for ever (one unauthenticated CancelRequest, an endless chain of
// connections); a replica that gets back a key it is still forwarding now
// drops it: at most one forward per replica.
func TestRedTeamS7CancelForwardLoop(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		noLeaks(t)
		shared := reusePortListen(t, "127.0.0.1:0")
		own := reusePortListen(t, "127.0.0.1:0")
		_, port, _ := net.SplitHostPort(shared.Addr().String())
		cfg := proxyConfig(t, m.config(modePoolSize, func(c *config.Config) {
			c.Listen, c.ReusePort, c.PeerID = shared.Addr().String(), true, 1
			c.ConnectTimeout = config.Duration{Duration: time.Second}
			c.Peers = []config.Peer{{ID: 1, Address: own.Addr().String()}, {ID: 2, Address: "localhost:" + port}}
		}))
		logs := &testutil.SyncBuffer{}
		tw := &testWriter{t: t}
		srv, err := cli.NewServer(cfg, slog.New(slog.NewTextHandler(io.MultiWriter(tw, logs), &slog.HandlerOptions{Level: slog.LevelDebug})))
		if err != nil {
			t.Fatal(err)
		}
		ln, err := srv.Listen()
		if err != nil {
			t.Fatal(err)
		}
		pln, err := srv.ListenPeers()
		if err != nil {
			t.Fatal(err)
		}
		shared.Close()
		own.Close()
		done := make(chan struct{}, 2)
		go func() { _ = srv.Serve(ln); done <- struct{}{} }()
		go func() { _ = srv.ServePeers(pln); done <- struct{}{} }()
		t.Cleanup(func() {
			srv.Close()
			<-done
			<-done
			tw.done.Store(true)
		})

		sendCancel(t, ln.Addr().String(), 2<<22|12345, []byte{1, 2, 3, 4})
		time.Sleep(time.Second)
		forwards := strings.Count(logs.String(), "cancel request forwarded to its replica") +
			strings.Count(logs.String(), "forwarding cancel request to its replica failed")
		if forwards > 1 {
			t.Fatalf("one cancel request was forwarded %d times (a loop through the listen address)", forwards)
		}
		if !strings.Contains(logs.String(), "came back") {
			t.Errorf("the loop was not reported")
		}
	})
}

// Tenant A sends its own cancel key as fast as it can while A and B run
// transactions on the same pooled connection (a pool of one): a cancel in
// flight as A's lease ends must not reach B's statement on the connection
// A held. B never gets 57014 and always runs as itself. (A's own session
// may end when a cancel lands on pgtenant's assertion ahead of A's
// statement; A then reconnects.)
func TestRedTeamS7CancelStormStaysWithItsTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		b := p.pgconnect(t, tenantB)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var cancels atomic.Int64
		// A stops before the test ends, whatever ends it.
		defer func() {
			close(stop)
			wg.Wait()
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				a, err := pgconn.Connect(context.Background(), p.connString(tenantA))
				if err != nil {
					t.Errorf("A: %v", err)
					return
				}
				pid, secret := a.PID(), a.SecretKey()
				for !a.IsClosed() {
					select {
					case <-stop:
						a.Close(context.Background())
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					rr := a.Exec(ctx, "SELECT pg_sleep(0.001)")
					sendCancel(t, p.addr, pid, secret)
					cancels.Add(1)
					_, _ = rr.ReadAll()
					cancel()
				}
			}
		}()
		deadline := time.Now().Add(3 * time.Second)
		n := 0
		for ; time.Now().Before(deadline); n++ {
			got := queryRows(t, b, "SELECT current_setting('app.tenant_id'), pg_sleep(0.002)")
			if got[0][0] != tenantB.ID {
				t.Fatalf("B runs as %q", got[0][0])
			}
		}
		if n < 50 || cancels.Load() < 50 {
			t.Fatalf("B ran %d transactions, A sent %d cancels: too few to tell", n, cancels.Load())
		}
	})
}

// A tenant placed in a schema is isolated by its role. An identity source
// that gives a user of another tenant that role (a db_users row here; a
// JWT role claim is the same) made the user's session SET ROLE to it and
// read the schema tenant's tables; such a login is now refused, whether
// the row names the role alone or the schema too. The schema tenant's own
// users still log in.
func TestRedTeamS7SchemaRoleOfAnotherTenant(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		schemas := schemaTenants(t)
		superExec(t, demo.Database, dbUsersSQL+`
DROP TABLE IF EXISTS red_users;
CREATE TABLE red_users (name text PRIMARY KEY, verifier text NOT NULL, tenant text NOT NULL, schema text, role text);
GRANT SELECT ON red_users TO pgtenant_lookup;`)
		t.Cleanup(func() { superExec(t, demo.Database, "DROP TABLE IF EXISTS red_users") })
		verifier, err := auth.NewVerifier("pw")
		if err != nil {
			t.Fatal(err)
		}
		superExec(t, demo.Database, fmt.Sprintf(`INSERT INTO red_users VALUES
    ('a_as_r2', '%[1]s', '%[2]s', NULL, 'placement_r2'),
    ('a_in_s2', '%[1]s', '%[2]s', 'placement_s2', 'placement_r2'),
    ('b_own', '%[1]s', '%[3]s', NULL, 'placement_r2')`, verifier, tenantA.ID, tenantB.ID))
		p := m.start(t, schemas, func(c *config.Config) {
			delete(c.Tenants, tenantA.ID) // A: shared tables, no role of its own
			c.DBUsers = &config.DBUsers{
				Connection: pgcluster.Shared().URL("pgtenant_lookup", "lookup_pw", demo.Database),
				Query:      "SELECT verifier, tenant, schema, role FROM red_users WHERE name = $1",
			}
		})
		user := func(name string) demo.Tenant { return demo.Tenant{User: name, Password: "pw"} }
		for _, name := range []string{"a_as_r2", "a_in_s2"} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			c, err := pgconn.Connect(ctx, p.connString(user(name)))
			cancel()
			if err == nil {
				got := queryRows(t, c, "SELECT current_user, (SELECT string_agg(note, ',') FROM placement_s2.placement_notes)")
				c.Close(context.Background())
				t.Fatalf("%s (tenant A) logged in and sees %v", name, got)
			}
			if pgCode(err) != "42501" || !strings.Contains(err.Error(), `role "placement_r2" of user "`+name+`" is another tenant's`) {
				t.Errorf("%s: %v, want FATAL 42501", name, err)
			}
		}
		b := p.pgconnect(t, user("b_own"))
		if got := queryRows(t, b, "SELECT current_user, note FROM placement_notes"); len(got) != 1 || got[0][0] != "placement_r2" || got[0][1] != "secret of s2" {
			t.Fatalf("B's own user sees %v", got)
		}
	})
}

// A Parse of the unnamed statement that the guard refuses: PostgreSQL
// drops the unnamed statement before it parses, so after any failing
// Parse a Bind of the unnamed statement gets 26000 (and when an earlier
// error makes the server skip the Parse, the statement stays). In
// transaction mode the refused Parse did not count as one: on the next
// connection pgtenant prepared the client's previous unnamed statement
// again and ran it.
func TestRedTeamS7RefusedUnnamedParse(t *testing.T) {
	refused := ppParse("", "SELECT set_config('app.tenant_id', 'x', false)")
	gone := ppFail("26000")
	ran := ppOK(ppRan(ppWhoRow(tenantA)))
	parsedRan := ppOK("ParseComplete", ppRan(ppWhoRow(tenantA)))
	for _, tc := range []struct {
		desc  string
		steps []ppStep
	}{{
		desc: "refused, then B on the connection",
		steps: []ppStep{
			ppAs(ppA, parsedRan, ppParse("", ppWho), ppBind(""), ppExec(), ppSync()),
			ppAs(ppA, ppFail("42501"), refused, ppSync()),
			ppAs(ppB, nil, ppQuery(ppWho)),
			ppAs(ppA, gone, ppBind(""), ppExec(), ppSync()),
		},
	}, {
		desc: "refused, same connection",
		steps: []ppStep{
			ppAs(ppA, parsedRan, ppParse("", ppWho), ppBind(""), ppExec(), ppSync()),
			ppAs(ppA, ppFail("42501"), refused, ppSync()),
			ppAs(ppA, gone, ppBind(""), ppExec(), ppSync()),
		},
	}, {
		desc: "skipped after an error: the statement stays",
		steps: []ppStep{
			ppAs(ppA, parsedRan, ppParse("", ppWho), ppBind(""), ppExec(), ppSync()),
			ppAs(ppA, ppFail("42P01"), ppParse("x", ppMissing), refused, ppSync()),
			ppAs(ppB, nil, ppQuery(ppWho)),
			ppAs(ppA, ran, ppBind(""), ppExec(), ppSync()),
		},
	}} {
		t.Run(tc.desc, func(t *testing.T) {
			eachPoolMode(t, func(t *testing.T, m poolMode) {
				p := startProxy(t, m.config(1, func(c *config.Config) {
					c.Users = append(c.Users, config.User{Name: tenantA2.User, Password: tenantA2.Password, Tenant: tenantA2.ID})
				}))
				var conns []*ppConn
				for _, tn := range ppTenants {
					conns = append(conns, ppHijack(t, p.pgconnect(t, tn)))
				}
				got := ppRunSteps(conns, tc.steps)
				for i, s := range tc.steps {
					if s.want != nil && (i >= len(got) || !slices.Equal(got[i], s.want)) {
						t.Errorf("step %d: %q, want %q", i, got[min(i, len(got)-1)], s.want)
					}
				}
			})
		})
	}
}

// Two-phase commit on an upstream that allows it (max_prepared_transactions
// above 0): a prepared transaction belongs to the role, not to a session,
// and every tenant's sessions share the role, so tenant B could list tenant
// A's prepared transaction and roll it back (or commit it). PREPARE
// TRANSACTION, COMMIT PREPARED and ROLLBACK PREPARED are refused through
// pgtenant (42501), like pg_cancel_backend; one prepared outside pgtenant
// stays untouched.
func TestRedTeamS7TwoPhaseCommit(t *testing.T) {
	ctx := context.Background()
	c2, err := pgcluster.Start(ctx, pgcluster.Options{ExtraConf: []string{"max_prepared_transactions = 2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c2.Stop() })
	if err := demo.Setup(ctx, c2); err != nil {
		t.Fatal(err)
	}
	// Tenant A's transaction, prepared by its application on a direct connection.
	direct, err := pgconn.Connect(ctx, c2.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close(ctx)
	queryRows(t, direct, "SET app.tenant_id = '"+tenantA.ID+"'; BEGIN; INSERT INTO projects (tenant_id, name) VALUES ('"+tenantA.ID+"', 'red-2pc'); PREPARE TRANSACTION 'red_a'")
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) { c.Upstream = c2.URL(demo.RLSRole, demo.RLSPassword, demo.Database) })
		a, b := p.pgconnect(t, tenantA), p.pgconnect(t, tenantB)
		for _, sql := range []string{"ROLLBACK PREPARED 'red_a'", "COMMIT PREPARED 'red_a'", "commit prepared 'red_a'"} {
			if err := execErr(b, sql); pgCode(err) != "42501" {
				t.Errorf("B: %s: %v, want 42501", sql, err)
			}
		}
		if err := execErr(a, "BEGIN; INSERT INTO projects (tenant_id, name) VALUES ('"+tenantA.ID+"', 'red-2pc-b'); PREPARE TRANSACTION 'red_a2'"); pgCode(err) != "42501" {
			t.Errorf("A: PREPARE TRANSACTION: %v, want 42501", err)
		}
		if got := queryOne(t, a, "SELECT current_setting('app.tenant_id')"); got != tenantA.ID {
			t.Errorf("A after the refusal: %q", got)
		}
		if got := queryRows(t, direct, "SELECT gid FROM pg_prepared_xacts ORDER BY 1"); len(got) != 1 || got[0][0] != "red_a" {
			t.Errorf("prepared transactions: %v, want A's red_a alone", got)
		}
	})
	queryRows(t, direct, "ROLLBACK PREPARED 'red_a'")
}
