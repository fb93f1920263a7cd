package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
	"github.com/pgtenant/pgtenant/metrics"
)

const (
	jwtIssuer   = "https://idp.example.test/"
	jwtAudience = "pgtenant"
	hmacSecret  = "0123456789abcdef0123456789abcdef-e2e"
)

// jwksServer serves a JSON Web Key Set that a test can rotate.
type jwksServer struct {
	mu      sync.Mutex
	keys    []map[string]string
	srv     *httptest.Server
	fetches atomic.Int64
}

func newJWKSServer(t *testing.T) *jwksServer {
	j := &jwksServer{}
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.fetches.Add(1)
		j.mu.Lock()
		defer j.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": j.keys})
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *jwksServer) set(keys ...map[string]string) {
	j.mu.Lock()
	j.keys = keys
	j.mu.Unlock()
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func rsaJWK(kid string, k *rsa.PublicKey) map[string]string {
	return map[string]string{"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
}

func ecJWK(t *testing.T, kid string, k *ecdsa.PublicKey) map[string]string {
	point, err := k.Bytes() // 0x04 || X || Y
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{"kty": "EC", "kid": kid, "alg": "ES256", "use": "sig", "crv": "P-256", "x": b64(point[1:33]), "y": b64(point[33:])}
}

func writePublicPEM(t *testing.T, pub any) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sign(t *testing.T, method jwt.SigningMethod, key any, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	if kid != "" {
		tok.Header["kid"] = kid
	}
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// claimsFor are valid claims for the analyst of a tenant, nested the way an
// identity provider with organisations does it.
func claimsFor(tenant, user string, ttl time.Duration) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{
		"iss": jwtIssuer, "aud": jwtAudience, "sub": user,
		"iat": now.Unix(), "nbf": now.Add(-time.Minute).Unix(), "exp": now.Add(ttl).Unix(),
		"org":     map[string]any{"id": tenant, "name": "x"},
		"roles":   []string{"viewer", "exporter"},
		"db_role": "app_rls", // the login role itself: read-write
	}
}

const jwtSchemaSQL = `
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst_ro') THEN CREATE ROLE analyst_ro NOLOGIN; END IF;
END $$;
GRANT analyst_ro TO app_rls;
GRANT USAGE ON SCHEMA public TO analyst_ro;
GRANT SELECT ON projects TO analyst_ro;
CREATE TABLE IF NOT EXISTS notes (tenant_id uuid NOT NULL, user_id text NOT NULL, body text NOT NULL);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS own_notes ON notes;
CREATE POLICY own_notes ON notes USING (
  tenant_id = current_setting('app.tenant_id')::uuid AND user_id = current_setting('app.user_id'));
GRANT SELECT, INSERT ON notes TO app_rls;
TRUNCATE notes;
INSERT INTO notes VALUES
  ('11111111-1111-1111-1111-111111111111', 'alice@acme', 'alice note'),
  ('11111111-1111-1111-1111-111111111111', 'bob@acme', 'bob note'),
  ('22222222-2222-2222-2222-222222222222', 'alice@acme', 'globex note');
`

type jwtEnv struct {
	p      *testProxy
	jwks   *jwksServer
	rsaKey *rsa.PrivateKey
	ecKey  *ecdsa.PrivateKey
	edKey  ed25519.PrivateKey
	cert   string
}

func startJWTProxy(t *testing.T, mutate ...func(*config.Config)) *jwtEnv {
	t.Helper()
	if err := pgcluster.Shared().Exec(context.Background(), demo.Database, jwtSchemaSQL); err != nil {
		t.Fatal(err)
	}
	env := &jwtEnv{jwks: newJWKSServer(t)}
	var err error
	if env.rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if env.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	var edPub ed25519.PublicKey
	if edPub, env.edKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	env.jwks.set(rsaJWK("rsa-1", &env.rsaKey.PublicKey), ecJWK(t, "ec-1", &env.ecKey.PublicKey))
	edPath := writePublicPEM(t, edPub)
	certFile, keyFile := writeCert(t)
	env.cert = certFile
	env.p = startProxy(t, func(c *config.Config) {
		c.TLS = &config.TLS{CertFile: certFile, KeyFile: keyFile, Mode: "allow"}
		c.Auth.Methods = []config.MethodRule{{Users: "*@*", Method: config.MethodJWT}}
		c.JWT = &config.JWT{
			HMACSecret:  hmacSecret,
			PublicKeys:  []config.JWTKey{{File: edPath, Algorithms: []string{"EdDSA"}}},
			JWKS:        []config.JWKSURL{{URL: env.jwks.srv.URL, Algorithms: []string{"RS256", "ES256"}, RefreshRateLimit: config.Duration{Duration: time.Millisecond}}},
			Issuer:      jwtIssuer,
			Audience:    jwtAudience,
			TenantClaim: "org.id",
			UserClaim:   "sub",
			Settings:    map[string]string{"app.user_id": "sub", "app.roles": "roles"},
			RoleClaim:   "db_role", AllowedRoles: []string{"app_rls", "analyst_ro"},
		}
		for _, m := range mutate {
			m(c)
		}
	})
	return env
}

func (e *jwtEnv) connect(user, token string) (*pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return pgconn.Connect(ctx, "host="+e.p.host+" port="+e.p.port+" dbname=app sslmode=verify-full sslrootcert="+e.cert+
		" user="+user+" password="+token)
}

func TestJWTLogin(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize))
		tokens := map[string]string{
			"HS256": sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claimsFor(tenantA.ID, "alice@acme", time.Hour)),
			"RS256": sign(t, jwt.SigningMethodRS256, e.rsaKey, "rsa-1", claimsFor(tenantA.ID, "alice@acme", time.Hour)),
			"ES256": sign(t, jwt.SigningMethodES256, e.ecKey, "ec-1", claimsFor(tenantA.ID, "alice@acme", time.Hour)),
			"EdDSA": sign(t, jwt.SigningMethodEdDSA, e.edKey, "", claimsFor(tenantA.ID, "alice@acme", time.Hour)),
		}
		for alg, token := range tokens {
			t.Run(alg, func(t *testing.T) {
				conn, err := e.connect("alice@acme", token)
				if err != nil {
					t.Fatalf("%s token refused: %v", alg, err)
				}
				defer conn.Close(context.Background())
				rows := queryRows(t, conn, "SELECT current_setting('app.tenant_id'), current_setting('app.user_id'), current_setting('app.roles'), (SELECT string_agg(body, ',') FROM notes)")
				if got := strings.Join(rows[0], " | "); got != tenantA.ID+` | alice@acme | ["viewer","exporter"] | alice note` {
					t.Fatalf("session context: %s", got)
				}
				// The claim settings are protected like the tenant.
				if _, err := conn.Exec(context.Background(), "SET app.user_id = 'bob@acme'").ReadAll(); pgCode(err) != "42501" {
					t.Fatalf("SET app.user_id: %v", err)
				}
			})
		}

		// The tenant claim decides the rows: the same user in another org.
		conn, err := e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, e.rsaKey, "rsa-1", claimsFor(tenantB.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		if got := queryOne(t, conn, "SELECT string_agg(body, ',') FROM notes"); got != "globex note" {
			t.Fatalf("tenant B token sees %q", got)
		}
		conn.Close(context.Background())

		// Keys rotate at the identity provider: a new kid is fetched on first use.
		newKey, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		e.jwks.set(rsaJWK("rsa-2", &newKey.PublicKey), ecJWK(t, "ec-1", &e.ecKey.PublicKey))
		conn, err = e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, newKey, "rsa-2", claimsFor(tenantA.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Fatalf("token signed with the rotated-in key: %v", err)
		}
		conn.Close(context.Background())

		// A role from the claim, from the allow-list: read-only analyst.
		rc := claimsFor(tenantA.ID, "alice@acme", time.Hour)
		rc["db_role"] = "analyst_ro"
		conn, err = e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", rc))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if got := queryOne(t, conn, "SELECT current_user || ' ' || count(*) FROM projects"); got != "analyst_ro 3" {
			t.Fatalf("analyst role session: %q", got)
		}
		if _, err := conn.Exec(context.Background(), "INSERT INTO projects (tenant_id, name) VALUES ('"+tenantA.ID+"', 'x')").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("read-only role inserted: %v", err)
		}
		if _, err := conn.Exec(context.Background(), "RESET ROLE").ReadAll(); pgCode(err) != "42501" {
			t.Fatalf("RESET ROLE: %v", err)
		}
	})
}

func TestJWTRefusals(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize))
		hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", c) }
		mod := func(f func(jwt.MapClaims)) jwt.MapClaims {
			c := claimsFor(tenantA.ID, "alice@acme", time.Hour)
			f(c)
			return c
		}
		good := sign(t, jwt.SigningMethodRS256, e.rsaKey, "rsa-1", claimsFor(tenantA.ID, "alice@acme", time.Hour))
		parts := strings.Split(good, ".")
		tamperedClaims := claimsFor(tenantB.ID, "alice@acme", time.Hour)
		payload, _ := json.Marshal(tamperedClaims)
		tampered := parts[0] + "." + b64(payload) + "." + parts[2]
		otherKey, _ := rsa.GenerateKey(rand.Reader, 2048)
		pubDER, _ := x509.MarshalPKIXPublicKey(&e.rsaKey.PublicKey)
		pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
		none := b64([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + b64(mustJSON(t, claimsFor(tenantA.ID, "alice@acme", time.Hour))) + "."

		tests := []struct {
			desc, user, token, want string
		}{
			{"expired", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), "expired"},
			{"not yet valid", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() })), "not valid yet"},
			{"wrong issuer", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["iss"] = "https://evil.example/" })), "issuer"},
			{"wrong audience", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["aud"] = "someone-else" })), "audience"},
			{"tampered payload", "alice@acme", tampered, "signature"},
			{"wrong signature", "alice@acme", sign(t, jwt.SigningMethodRS256, otherKey, "rsa-1", claimsFor(tenantA.ID, "alice@acme", time.Hour)), "signature"},
			{"alg none", "alice@acme", none, "none"},
			{"HS256 signed with the RSA public key", "alice@acme", sign(t, jwt.SigningMethodHS256, pubPEM, "rsa-1", claimsFor(tenantA.ID, "alice@acme", time.Hour)), ""},
			{"unknown kid", "alice@acme", sign(t, jwt.SigningMethodRS256, otherKey, "rsa-9", claimsFor(tenantA.ID, "alice@acme", time.Hour)), "rsa-9"},
			{"missing tenant claim", "alice@acme", hs(mod(func(c jwt.MapClaims) { delete(c, "org") })), "org.id"},
			{"non-string tenant claim", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["org"] = map[string]any{"id": 42} })), "string"},
			{"user claim mismatch", "bob@acme", hs(claimsFor(tenantA.ID, "alice@acme", time.Hour)), "does not match the user name"},
			{"missing role claim", "alice@acme", hs(mod(func(c jwt.MapClaims) { delete(c, "db_role") })), "db_role"},
			{"role not allowed", "alice@acme", hs(mod(func(c jwt.MapClaims) { c["db_role"] = "postgres" })), "postgres"},
		}
		for _, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) {
				_, err := e.connect(tt.user, tt.token)
				var pgErr *pgconn.PgError
				if err == nil || !errorsAs(err, &pgErr) {
					t.Fatalf("accepted or not a PostgreSQL error: %v", err)
				}
				if pgErr.Severity != "FATAL" || (pgErr.Code != "28000" && pgErr.Code != "28P01") {
					t.Fatalf("got %s %s %q, want FATAL 28000", pgErr.Severity, pgErr.Code, pgErr.Message)
				}
				if !strings.Contains(pgErr.Message, tt.want) {
					t.Fatalf("message %q does not say %q", pgErr.Message, tt.want)
				}
				if strings.Contains(pgErr.Message, tt.token) {
					t.Fatal("the message echoes the token")
				}
				if sig := tt.token[strings.LastIndexByte(tt.token, '.')+1:]; len(sig) > 8 && strings.Contains(e.p.logs.String(), sig) {
					t.Fatal("the proxy logged the token")
				}
			})
		}

		t.Run("token on a plaintext connection", func(t *testing.T) {
			_, err := pgconn.Connect(context.Background(), e.p.connString(demo.Tenant{User: "alice@acme", Password: hs(claimsFor(tenantA.ID, "alice@acme", time.Hour))}))
			var pgErr *pgconn.PgError
			if !errorsAs(err, &pgErr) || pgErr.Code != "28000" || !strings.Contains(pgErr.Message, "TLS") {
				t.Fatalf("plaintext JWT login: %v", err)
			}
		})
	})
}

// psql with the token as its password, the way a BI tool fills the field.
func TestJWTWithPsql(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize))
		token := sign(t, jwt.SigningMethodRS256, e.rsaKey, "rsa-1", claimsFor(tenantA.ID, "alice@acme", time.Hour))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "psql", "-X", "-A", "-t", "-d",
			"host="+e.p.host+" port="+e.p.port+" user=alice@acme dbname=app sslmode=verify-full sslrootcert="+e.cert,
			"-c", "SELECT current_setting('app.user_id'), body FROM notes")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+token)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "alice@acme|alice note" {
			t.Fatalf("psql with a token: %v\n%s", err, out)
		}
		if strings.Contains(e.p.logs.String(), token) {
			t.Fatal("the proxy logged the token")
		}
	})
}

// A session lasts no longer than its token: the transaction in progress
// finishes, the next one is refused with FATAL 28000.
func TestJWTExpiresMidSession(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize))
		token := sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claimsFor(tenantA.ID, "alice@acme", 2*time.Second))
		conn, err := e.connect("alice@acme", token)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		queryRows(t, conn, "BEGIN")
		time.Sleep(2500 * time.Millisecond) // past exp (the leeway applies at login only)
		if got := queryOne(t, conn, "SELECT count(*) FROM notes"); got != "1" {
			t.Fatalf("inside the open transaction: %s", got)
		}
		queryRows(t, conn, "COMMIT")
		_, err = conn.Exec(context.Background(), "SELECT 1").ReadAll()
		var pgErr *pgconn.PgError
		if !errorsAs(err, &pgErr) || pgErr.Severity != "FATAL" || pgErr.Code != "28000" ||
			pgErr.Message != `terminating connection for user "alice@acme": token has expired` || pgErr.Hint != "Connect again with a new token." {
			t.Fatalf("next transaction after expiry: %v", err)
		}
	})
}

// A BI tool whose token has expired gets a fresh one and retries at once:
// the refusal of a correctly signed token is no failed guess, so the retry is
// let in; a badly signed token still counts.
func TestJWTRetryAfterExpiredToken(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		// A back-off far longer than the test: a counted failure would refuse the retry.
		e := startJWTProxy(t, m.config(modePoolSize, func(c *config.Config) {
			c.Auth.Throttle = config.Throttle{Initial: config.Duration{Duration: time.Minute}, Max: config.Duration{Duration: time.Minute}}
		}))
		rs := func(key *rsa.PrivateKey, c jwt.MapClaims) string {
			return sign(t, jwt.SigningMethodRS256, key, "rsa-1", c)
		}
		fresh := func() jwt.MapClaims { return claimsFor(tenantA.ID, "alice@acme", time.Hour) }
		expired, early := fresh(), fresh()
		expired["exp"] = time.Now().Add(-time.Hour).Unix()
		early["nbf"] = time.Now().Add(time.Hour).Unix()

		for _, tt := range []struct {
			desc, token, want, hint string
		}{
			{"expired", rs(e.rsaKey, expired), `JWT authentication failed for user "alice@acme": token has expired`, "Connect again with a new token."},
			{"not yet valid", rs(e.rsaKey, early), `JWT authentication failed for user "alice@acme": token is not valid yet`, ""},
		} {
			_, err := e.connect("alice@acme", tt.token)
			var pgErr *pgconn.PgError
			if !errorsAs(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != tt.want || pgErr.Hint != tt.hint {
				t.Fatalf("%s token: %v (hint %q), want %q", tt.desc, err, hintOf(err), tt.want)
			}
			conn, err := e.connect("alice@acme", rs(e.rsaKey, fresh()))
			if err != nil {
				t.Fatalf("retry with a fresh token right after the %s one: %v", tt.desc, err)
			}
			if got := queryOne(t, conn, "SELECT current_setting('app.user_id')"); got != "alice@acme" {
				t.Fatalf("session after the retry: %q", got)
			}
			conn.Close(context.Background())
		}

		forger, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.connect("alice@acme", rs(forger, fresh())); err == nil || !strings.Contains(err.Error(), "token signature is invalid") {
			t.Fatalf("forged token: %v", err)
		}
		_, err = e.connect("alice@acme", rs(e.rsaKey, fresh()))
		if err == nil || !strings.Contains(err.Error(), "too many failed login attempts") {
			t.Fatalf("right after a forged token: %v, want the back-off", err)
		}
	})
}

// With the default refresh_rate_limit, a token naming a made-up kid (even a
// burst of them) does not keep out a key the identity provider publishes
// right after: the login with it waits for the next fetch, at most the
// limit, and gets in.
func TestJWTNewKeyAfterBogusKidDefaultLimit(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize, func(c *config.Config) {
			c.JWT.JWKS[0].RefreshRateLimit = config.Duration{} // the default
		}))
		attacker, newKey := rsaKey(t), rsaKey(t)
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				_, err := e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, attacker, fmt.Sprintf("made-up-%d", i), claimsFor(tenantA.ID, "alice@acme", time.Hour)))
				if err == nil || !strings.Contains(err.Error(), "unknown key id") {
					t.Errorf("made-up kid: %v", err)
				}
			})
		}
		// The first made-up kid has caused a fetch: the one a single
		// refresh per minute used to allow.
		eventually(t, 10*time.Second, "a fetch for the made-up kids", func() bool { return e.jwks.fetches.Load() >= 2 })

		e.jwks.set(rsaJWK("rsa-1", &e.rsaKey.PublicKey), rsaJWK("rsa-2", &newKey.PublicKey))
		start := time.Now()
		conn, err := e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, newKey, "rsa-2", claimsFor(tenantA.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Fatalf("token signed with the newly published key: %v", err)
		}
		conn.Close(context.Background())
		if d, limit := time.Since(start), config.DefaultJWKSRefreshRateLimit; d > limit+3*time.Second {
			t.Errorf("the new key was let in after %v, want about %v at most", d, limit)
		}
		wg.Wait()
	})
}

// Under a steady flood of made-up kids, the key set is fetched at most once
// per refresh_rate_limit, and a key published meanwhile is let in within
// about that interval.
func TestJWTNewKeyDuringBogusKidFlood(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		const interval = 300 * time.Millisecond
		e := startJWTProxy(t, m.config(modePoolSize, func(c *config.Config) {
			c.JWT.JWKS[0].RefreshRateLimit = config.Duration{Duration: interval}
		}))
		attacker, newKey := rsaKey(t), rsaKey(t)
		before, start := e.jwks.fetches.Load(), time.Now()
		stop := make(chan struct{})
		var refused atomic.Int64
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					kid := fmt.Sprintf("made-up-%d-%d", i, n)
					_, err := e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, attacker, kid, claimsFor(tenantA.ID, "alice@acme", time.Hour)))
					if err == nil || !strings.Contains(err.Error(), "unknown key id") {
						t.Errorf("made-up kid: %v", err)
						return
					}
					refused.Add(1)
				}
			})
		}
		eventually(t, 10*time.Second, "the flood to be under way", func() bool { return refused.Load() >= 20 })

		e.jwks.set(rsaJWK("rsa-1", &e.rsaKey.PublicKey), rsaJWK("rsa-2", &newKey.PublicKey))
		published := time.Now()
		conn, err := e.connect("alice@acme", sign(t, jwt.SigningMethodRS256, newKey, "rsa-2", claimsFor(tenantA.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Errorf("token signed with a key published during the flood: %v", err)
		} else {
			conn.Close(context.Background())
		}
		if d := time.Since(published); d > interval+3*time.Second {
			t.Errorf("the new key was let in after %v, want about %v at most", d, interval)
		}
		close(stop)
		wg.Wait()
		fetches, elapsed := e.jwks.fetches.Load()-before, time.Since(start)
		if limit := int64(elapsed/interval) + 1; fetches > limit {
			t.Errorf("%d fetches in %v under a flood of %d made-up kids, want at most %d (one per %v)", fetches, elapsed, refused.Load(), limit, interval)
		}
	})
}

func rsaKey(t *testing.T) *rsa.PrivateKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A failed and a successful login of one method are counted under the same
// method label, for SCRAM and for JWT alike.
func TestAuthMetricMethodLabel(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		e := startJWTProxy(t, m.config(modePoolSize))
		obs := metrics.New(metrics.Options{})
		e.p.srv.SetObserver(obs)

		wrong := tenantA
		wrong.Password = "guess"
		connectErr(t, e.p.connString(wrong))
		e.p.pgconnect(t, tenantA)
		if _, err := e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte("not-the-secret-not-the-secret-xx"), "", claimsFor(tenantA.ID, "alice@acme", time.Hour))); err == nil {
			t.Fatal("a token with a bad signature was accepted")
		}
		conn, err := e.connect("alice@acme", sign(t, jwt.SigningMethodHS256, []byte(hmacSecret), "", claimsFor(tenantA.ID, "alice@acme", time.Hour)))
		if err != nil {
			t.Fatal(err)
		}
		conn.Close(context.Background())

		want := map[string]float64{
			"scram-sha-256 failed": 1, "scram-sha-256 ok": 1,
			"jwt failed": 1, "jwt ok": 1,
		}
		if got := authCounts(t, obs); !maps.Equal(got, want) {
			t.Fatalf("pgtenant_authentications_total by method and outcome = %v, want %v", got, want)
		}
	})
}

// authCounts sums pgtenant_authentications_total by "method outcome".
func authCounts(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "pgtenant_authentications_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			counts[labels["method"]+" "+labels["outcome"]] += mt.GetCounter().GetValue()
		}
	}
	return counts
}
