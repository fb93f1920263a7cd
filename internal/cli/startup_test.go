package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/auth"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/internal/testutil"
)

const startupJWTSecret = "0123456789abcdef0123456789abcdef-cli"

// startupLookupSQL is a db_users table with one user of tenant A.
const startupLookupSQL = `
CREATE TABLE IF NOT EXISTS cli_users (name text PRIMARY KEY, verifier text NOT NULL, tenant uuid NOT NULL);
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cli_lookup') THEN
    CREATE ROLE cli_lookup LOGIN PASSWORD 'cli_lookup_pw';
  END IF;
END $$;
GRANT SELECT ON cli_users TO cli_lookup;
`

// A deployment without a users list starts, and its users log in: with
// jwt alone, and with db_users alone (the README promises that BI tools
// need no YAML entry per user).
func TestStartsWithoutUsers(t *testing.T) {
	testutil.NoLeaks(t)
	c := pgcluster.Shared()
	ctx := testutil.Context(t)
	verifier, err := auth.NewVerifier("db_pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, demo.Database, startupLookupSQL+fmt.Sprintf(
		"INSERT INTO cli_users VALUES ('db_user', '%s', '%s') ON CONFLICT (name) DO UPDATE SET verifier = excluded.verifier;",
		verifier, demo.TenantA.ID)); err != nil {
		t.Fatal(err)
	}
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"sub": "analyst@acme", "tenant_id": demo.TenantA.ID, "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString([]byte(startupJWTSecret))
	if err != nil {
		t.Fatal(err)
	}
	upstream := fmt.Sprintf("upstream: %q\n", c.URL(demo.RLSRole, demo.RLSPassword, demo.Database))
	tests := []struct {
		desc           string
		yaml           string
		user, password string
	}{
		{
			desc: "jwt only",
			yaml: upstream + "auth: {cleartext_on_loopback: true, methods: [{users: '*', method: jwt}]}\n" +
				"jwt: {hmac_secret: " + startupJWTSecret + "}\n",
			user: "analyst@acme", password: token,
		},
		{
			desc: "db_users only",
			yaml: upstream + fmt.Sprintf("db_users: {connection: %q, query: 'SELECT verifier, tenant::text FROM cli_users WHERE name = $1'}\n",
				c.URL("cli_lookup", "cli_lookup_pw", demo.Database)),
			user: "db_user", password: "db_pw",
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			addr := startFromFile(t, tt.yaml)
			host, port, _ := net.SplitHostPort(addr)
			conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=%s sslmode=disable",
				host, port, tt.user, tt.password, demo.Database))
			if err != nil {
				t.Fatalf("log in as %s: %v", tt.user, err)
			}
			defer conn.Close(context.Background())
			res := conn.ExecParams(ctx, "SELECT string_agg(name, ',') FROM tenants", nil, nil, nil, nil).Read()
			if res.Err != nil {
				t.Fatal(res.Err)
			}
			if got := string(res.Rows[0][0]); got != demo.TenantA.Name {
				t.Fatalf("%s sees tenants %q, want %q", tt.user, got, demo.TenantA.Name)
			}
		})
	}
}

// startFromFile loads a config the way `pgtenant --config` does, starts the
// proxy on a free loopback port and returns its address.
func startFromFile(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pgtenant.yaml")
	if err := os.WriteFile(path, []byte("listen: 127.0.0.1:0\n"+yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ln, err := srv.Listen()
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	if !strings.HasPrefix(ln.Addr().String(), "127.0.0.1:") {
		t.Fatalf("listening on %s", ln.Addr())
	}
	return ln.Addr().String()
}
