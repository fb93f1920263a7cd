package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

const dbUsersSQL = `
CREATE TABLE IF NOT EXISTS pgtenant_users (name text PRIMARY KEY, verifier text NOT NULL, tenant uuid NOT NULL);
TRUNCATE pgtenant_users;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgtenant_lookup') THEN
    CREATE ROLE pgtenant_lookup LOGIN PASSWORD 'lookup_pw';
  END IF;
END $$;
GRANT SELECT ON pgtenant_users TO pgtenant_lookup;
`

// Users looked up in the database work without a restart, and stop working
// once removed and the cache has expired.
func TestDatabaseUsers(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		c := pgcluster.Shared()
		ctx := context.Background()
		if err := c.Exec(ctx, demo.Database, dbUsersSQL); err != nil {
			t.Fatal(err)
		}
		p := m.start(t, func(cfg *config.Config) {
			cfg.DBUsers = &config.DBUsers{
				Connection:  c.URL("pgtenant_lookup", "lookup_pw", demo.Database),
				Query:       "SELECT verifier, tenant::text FROM pgtenant_users WHERE name = $1",
				CacheTTL:    config.Duration{Duration: 300 * time.Millisecond},
				NegativeTTL: config.Duration{Duration: 200 * time.Millisecond},
			}
		})
		newUser := demo.Tenant{User: "dyn_user", Password: "dyn_pw"}
		login := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			conn, err := pgconn.Connect(ctx, p.connString(newUser))
			if err != nil {
				return err
			}
			defer conn.Close(context.Background())
			if got := queryOne(t, conn, "SELECT current_setting('app.tenant_id')"); got != tenantB.ID {
				t.Fatalf("database user runs as tenant %q", got)
			}
			return nil
		}
		if err := login(); pgCode(err) != "28P01" {
			t.Fatalf("before the user exists: %v", err)
		}
		verifier, err := auth.NewVerifier(newUser.Password)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Exec(ctx, demo.Database, "INSERT INTO pgtenant_users VALUES ('dyn_user', '"+verifier+"', '"+tenantB.ID+"')"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the new user to log in", func() bool { return login() == nil })
		// Config users still work next to database users.
		queryOne(t, p.pgconnect(t, tenantA), "SELECT 1")

		if err := c.Exec(ctx, demo.Database, "DELETE FROM pgtenant_users WHERE name = 'dyn_user'"); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, "the removed user to be refused", func() bool { return pgCode(login()) == "28P01" })
	})
}

// Failed logins back off per address and user; a success resets.
func TestLoginThrottle(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(cfg *config.Config) {
			cfg.Auth.Throttle = config.Throttle{Initial: config.Duration{Duration: 500 * time.Millisecond}, Max: config.Duration{Duration: 2 * time.Second}}
		})
		wrong := tenantA
		wrong.Password = "guess"
		if e := connectErr(t, p.connString(wrong)); e.Code != "28P01" {
			t.Fatalf("first wrong password: %s %s", e.Code, e.Message)
		}
		// Inside the back-off even the right password is refused, without a check.
		e := connectErr(t, p.connString(tenantA))
		if e.Code != "28000" || !strings.Contains(e.Message, "too many failed login attempts") {
			t.Fatalf("during back-off: %s %q", e.Code, e.Message)
		}
		// Another user from the same address is not affected.
		queryOne(t, p.pgconnect(t, tenantB), "SELECT 1")
		time.Sleep(600 * time.Millisecond)
		queryOne(t, p.pgconnect(t, tenantA), "SELECT 1")
	})
}

// A client that does not finish authenticating in time is disconnected
// (slowloris), with nothing sent upstream.
func TestAuthenticationTimeout(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(cfg *config.Config) { cfg.Auth.Timeout = config.Duration{Duration: 300 * time.Millisecond} })
		for _, partial := range [][]byte{
			nil,                    // connects and sends nothing
			{0, 0, 0, 40, 0, 3, 0}, // half a startup packet
		} {
			conn := rawDial(t, p)
			if _, err := conn.Write(partial); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			var b [1]byte
			_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(b[:]); err == nil {
				t.Fatalf("got a byte from a proxy that should hang up")
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("closed after %s, want about 300ms", d)
			}
		}
		// A startup that stops in the middle of SCRAM.
		conn := rawDial(t, p)
		send(t, conn, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": tenantA.User, "database": "app"}})
		fe := pgproto3.NewFrontend(conn, conn)
		if msg, err := fe.Receive(); err != nil {
			t.Fatal(err)
		} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
			t.Fatalf("got %T", msg)
		}
		start := time.Now()
		if _, err := fe.Receive(); err == nil {
			t.Fatal("the proxy kept waiting for the SASL response")
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("closed after %s", d)
		}
	})
}
