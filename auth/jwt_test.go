package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtenant/pgtenant/config"
)

const (
	testIssuer   = "https://idp.example.com/"
	testAudience = "pgtenant"
)

// testKeys are generated once per test binary (RSA generation is slow under -race).
type testKeys struct {
	hmac                      []byte
	rsa, rsaOther, rsa2, rsa3 *rsa.PrivateKey
	ec                        *ecdsa.PrivateKey
	ed                        ed25519.PrivateKey
}

var keysOnce = sync.OnceValues(func() (*testKeys, error) {
	k := &testKeys{hmac: []byte("0123456789abcdef0123456789abcdef-hmac")}
	for _, p := range []**rsa.PrivateKey{&k.rsa, &k.rsaOther, &k.rsa2, &k.rsa3} {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		*p = key
	}
	var err error
	if k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		return nil, err
	}
	return k, nil
})

func keys(t *testing.T) *testKeys {
	t.Helper()
	k, err := keysOnce()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func publicPEM(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// sign makes a token; kid is set in the header when non-empty.
func sign(t *testing.T, method jwt.SigningMethod, key any, claims jwt.MapClaims, kid string) string {
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

// claims returns a valid claim set for user alice, changed by edits
// (a nil value deletes the claim).
func claims(edits map[string]any) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"iss":       testIssuer,
		"aud":       testAudience,
		"sub":       "alice",
		"iat":       now.Unix(),
		"nbf":       now.Add(-time.Minute).Unix(),
		"exp":       now.Add(10 * time.Minute).Unix(),
		"tenant_id": "acme",
		"role":      "analyst",
	}
	for k, v := range edits {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// staticConfig trusts the HMAC secret (HS256) and one RSA, ECDSA and Ed25519
// PEM public key each.
func staticConfig(t *testing.T) *config.JWT {
	t.Helper()
	k := keys(t)
	return &config.JWT{
		HMACSecret:     string(k.hmac),
		HMACAlgorithms: []string{"HS256"},
		PublicKeys: []config.JWTKey{
			{File: writeFile(t, "rsa.pem", publicPEM(t, &k.rsa.PublicKey)), Algorithms: []string{"RS256"}},
			{File: writeFile(t, "ec.pem", publicPEM(t, &k.ec.PublicKey)), Algorithms: []string{"ES256"}},
			{File: writeFile(t, "ed.pem", publicPEM(t, k.ed.Public())), Algorithms: []string{"EdDSA"}},
		},
		Issuer:       testIssuer,
		Audience:     testAudience,
		Leeway:       config.Duration{Duration: 5 * time.Second},
		MaxAge:       config.Duration{Duration: time.Hour},
		TenantClaim:  "tenant_id",
		UserClaim:    "sub",
		RoleClaim:    "role",
		AllowedRoles: []string{"analyst", "viewer"},
	}
}

func newVerifier(t *testing.T, cfg *config.JWT) *JWTVerifier {
	t.Helper()
	v, err := NewJWTVerifier(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// checkRefusal asserts err is FATAL 28000 with message
// `JWT authentication failed for user "<user>": <reason containing want>`.
func checkRefusal(t *testing.T, err error, user, want string) {
	t.Helper()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		t.Fatalf("err = %v, want *pgconn.PgError", err)
	}
	prefix := `JWT authentication failed for user "` + user + `": `
	if pgErr.Severity != "FATAL" || pgErr.SeverityUnlocalized != "FATAL" || pgErr.Code != "28000" ||
		!strings.HasPrefix(pgErr.Message, prefix) || !strings.Contains(pgErr.Message, want) {
		t.Errorf("got %s %s %q, want FATAL 28000 %q...%q", pgErr.Severity, pgErr.Code, pgErr.Message, prefix, want)
	}
}

func TestJWTVerify(t *testing.T) {
	k := keys(t)
	rsaPubPEM := publicPEM(t, &k.rsa.PublicKey)
	hs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodHS256, k.hmac, c, "") }
	rs := func(c jwt.MapClaims) string { return sign(t, jwt.SigningMethodRS256, k.rsa, c, "") }
	valid := rs(claims(nil))
	parts := strings.Split(valid, ".")
	tamperedClaims, _ := json.Marshal(claims(map[string]any{"tenant_id": "globex"}))
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(tamperedClaims) + "." + parts[2]
	none := sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims(nil), "")

	rsaOnly := func(c *config.JWT) { c.HMACSecret, c.HMACAlgorithms, c.PublicKeys = "", nil, c.PublicKeys[:1] }

	tests := []struct {
		name       string
		cfg        func(*config.JWT) // changes to staticConfig
		token      string
		user       string // default alice
		wantErr    string // substring of the reason; "" = accepted
		signed     bool   // refused although correctly signed: no guess for the throttle
		wantTenant string // default acme
	}{
		{name: "HS256", token: hs(claims(nil))},
		{name: "RS256", token: valid},
		{name: "ES256", token: sign(t, jwt.SigningMethodES256, k.ec, claims(nil), "")},
		{name: "EdDSA", token: sign(t, jwt.SigningMethodEdDSA, k.ed, claims(nil), "")},
		{name: "kid is ignored for static keys", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "some-kid")},
		{name: "audience array", token: rs(claims(map[string]any{"aud": []string{"other", testAudience}}))},
		{name: "expired within leeway", token: rs(claims(map[string]any{"exp": time.Now().Add(-2 * time.Second).Unix()}))},
		{name: "nested tenant claim", cfg: func(c *config.JWT) { c.TenantClaim = "org.id" },
			token: rs(claims(map[string]any{"org": map[string]any{"id": "o-17"}})), wantTenant: "o-17"},
		{name: "namespaced tenant claim", cfg: func(c *config.JWT) { c.TenantClaim = "https://example.com/tenant_id" },
			token: rs(claims(map[string]any{"https://example.com/tenant_id": "ns-tenant"})), wantTenant: "ns-tenant"},
		{name: "no user claim configured", cfg: func(c *config.JWT) { c.UserClaim = "" }, token: rs(claims(map[string]any{"sub": nil}))},
		{name: "no role claim configured", cfg: func(c *config.JWT) { c.RoleClaim = "" }, token: rs(claims(map[string]any{"role": "admin"}))},
		{name: "no max age", cfg: func(c *config.JWT) { c.MaxAge.Duration = 0 }, token: rs(claims(map[string]any{"iat": nil}))},

		{name: "expired", token: rs(claims(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()})), wantErr: "token has expired", signed: true},
		{name: "not yet valid", token: rs(claims(map[string]any{"nbf": time.Now().Add(time.Minute).Unix()})), wantErr: "token is not valid yet", signed: true},
		{name: "issued in the future", token: rs(claims(map[string]any{"iat": time.Now().Add(time.Minute).Unix()})), wantErr: "token is issued in the future", signed: true},
		{name: "wrong issuer", token: rs(claims(map[string]any{"iss": "https://evil.example.com/"})), wantErr: `issuer "https://evil.example.com/" is not accepted`, signed: true},
		{name: "no issuer", token: rs(claims(map[string]any{"iss": nil})), wantErr: "token has no issuer (iss) claim", signed: true},
		{name: "wrong audience", token: rs(claims(map[string]any{"aud": "someone-else"})), wantErr: `audience does not include "pgtenant"`, signed: true},
		{name: "no audience", token: rs(claims(map[string]any{"aud": nil})), wantErr: "token has no audience (aud) claim", signed: true},
		{name: "tampered payload", token: tampered, wantErr: "token signature is invalid"},
		{name: "wrong signature", token: sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), ""), wantErr: "token signature is invalid"},
		{name: "wrong HMAC secret", token: sign(t, jwt.SigningMethodHS256, []byte("another-secret-another-secret-xx"), claims(nil), ""), wantErr: "token signature is invalid"},
		{name: "alg none", token: none, wantErr: `algorithm "none" is not allowed`},
		{name: "alg not in any allow-list", token: sign(t, jwt.SigningMethodPS256, k.rsa, claims(nil), ""), wantErr: `algorithm "PS256" is not allowed`},
		{name: "HS384 not in the HMAC allow-list", token: sign(t, jwt.SigningMethodHS384, k.hmac, claims(nil), ""), wantErr: `algorithm "HS384" is not allowed`},
		{name: "HS256 with the RSA public key as secret, HMAC configured", token: hs256With(t, rsaPubPEM), wantErr: "token signature is invalid"},
		{name: "HS256 with the RSA public key as secret, RSA only", cfg: rsaOnly, token: hs256With(t, rsaPubPEM), wantErr: `algorithm "HS256" is not allowed`},
		{name: "ES256 token, RSA only", cfg: rsaOnly, token: sign(t, jwt.SigningMethodES256, k.ec, claims(nil), ""), wantErr: `algorithm "ES256" is not allowed`},
		{name: "malformed", token: "not.a.jwt", wantErr: "token is malformed"},
		{name: "empty", token: "", wantErr: "no token was sent"},
		{name: "no exp", token: rs(claims(map[string]any{"exp": nil})), wantErr: "token has no expiry (exp) claim; a session may hold no longer than its token", signed: true},
		{name: "exp of the wrong type", token: rs(claims(map[string]any{"exp": "tomorrow"})), wantErr: "of the wrong type", signed: true},
		{name: "too old for max_age", token: rs(claims(map[string]any{"iat": time.Now().Add(-2 * time.Hour).Unix()})), wantErr: "token is too old", signed: true},
		{name: "no iat with max_age", token: rs(claims(map[string]any{"iat": nil})), wantErr: "token has no issued-at (iat) claim", signed: true},
		{name: "missing tenant claim", token: rs(claims(map[string]any{"tenant_id": nil})), wantErr: `token has no "tenant_id" claim`, signed: true},
		{name: "numeric tenant claim", token: rs(claims(map[string]any{"tenant_id": 42})), wantErr: `tenant claim must be a string; "tenant_id" is a number`, signed: true},
		{name: "empty tenant claim", token: rs(claims(map[string]any{"tenant_id": ""})), wantErr: `tenant claim "tenant_id" is empty`, signed: true},
		{name: "nested tenant claim missing", cfg: func(c *config.JWT) { c.TenantClaim = "org.id" },
			token: rs(claims(map[string]any{"org": map[string]any{"name": "x"}})), wantErr: `token has no "org.id" claim`, signed: true},
		{name: "nested tenant claim not an object", cfg: func(c *config.JWT) { c.TenantClaim = "org.id" },
			token: rs(claims(map[string]any{"org": "o-17"})), wantErr: `token has no "org.id" claim`, signed: true},
		{name: "user claim mismatch", token: rs(claims(nil)), user: "bob", wantErr: `token claim "sub" does not match the user name`, signed: true},
		{name: "user claim missing", token: rs(claims(map[string]any{"sub": nil})), wantErr: `token has no "sub" claim`, signed: true},
		{name: "role not allowed", token: rs(claims(map[string]any{"role": "admin"})), wantErr: `role "admin" is not allowed`, signed: true},
		{name: "role missing", token: rs(claims(map[string]any{"role": nil})), wantErr: `token has no "role" claim`, signed: true},
		{name: "role not a string", token: rs(claims(map[string]any{"role": []string{"analyst"}})), wantErr: "role claim must be a string", signed: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := staticConfig(t)
			if tt.cfg != nil {
				tt.cfg(cfg)
			}
			v := newVerifier(t, cfg)
			user := tt.user
			if user == "" {
				user = "alice"
			}
			id, err := v.Verify(tt.token, user)
			if tt.wantErr != "" {
				checkRefusal(t, err, user, tt.wantErr)
				if CouldBeGuess(err) == tt.signed {
					t.Errorf("CouldBeGuess = %v for a token that was %s", CouldBeGuess(err), map[bool]string{true: "correctly signed", false: "not correctly signed"}[tt.signed])
				}
				if !isZero(id) {
					t.Errorf("Identity = %+v on failure", id)
				}
				if tt.token != "" && err != nil && strings.Contains(err.Error(), tt.token) {
					t.Error("the error echoes the token")
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			want := tt.wantTenant
			if want == "" {
				want = "acme"
			}
			if id.User != user || id.Tenant != want || id.Method != "jwt" {
				t.Errorf("Identity = %+v, want user %s tenant %s method jwt", id, user, want)
			}
			if cfg.RoleClaim != "" && id.Role != "analyst" {
				t.Errorf("Role = %q, want analyst", id.Role)
			}
			if id.Expires.IsZero() || time.Until(id.Expires) > 11*time.Minute {
				t.Errorf("Expires = %v", id.Expires)
			}
		})
	}
}

// hs256With signs an HS256 token using secret, e.g. a public key's PEM: the
// classic algorithm confusion attack.
func hs256With(t *testing.T, secret []byte) string {
	return sign(t, jwt.SigningMethodHS256, secret, claims(nil), "")
}

func TestJWTIdentityDetails(t *testing.T) {
	k := keys(t)
	cfg := staticConfig(t)
	cfg.Settings = map[string]string{
		"app.user_email": "email",
		"app.groups":     "groups",
		"app.org":        "org",
		"app.org_name":   "org.name",
		"app.level":      "level",
		"app.big":        "big",
		"app.admin":      "admin",
		"app.nothing":    "nullclaim",
		"app.missing":    "no_such_claim",
	}
	cfg.ClaimsSetting = "request.jwt.claims"
	v := newVerifier(t, cfg)

	exp := time.Now().Add(5 * time.Minute).Truncate(time.Second)
	c := claims(map[string]any{
		"exp":       exp.Unix(),
		"email":     "a@example.com",
		"groups":    []string{"a", "b<c>"},
		"org":       map[string]any{"name": "Acme & Co", "id": "o1"},
		"level":     3.5,
		"big":       uint64(12345678901234567890),
		"admin":     true,
		"nullclaim": nil,
	})
	c["nullclaim"] = nil // claims() deletes nils; keep this one as JSON null
	id, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, c, ""), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if !id.Expires.Equal(exp) {
		t.Errorf("Expires = %v, want %v", id.Expires, exp)
	}
	want := []Setting{
		{"app.admin", "true"},
		{"app.big", "12345678901234567890"},
		{"app.groups", `["a","b<c>"]`},
		{"app.level", "3.5"},
		{"app.missing", ""},
		{"app.nothing", ""},
		{"app.org", `{"id":"o1","name":"Acme & Co"}`},
		{"app.org_name", "Acme & Co"},
		{"app.user_email", "a@example.com"},
	}
	if len(id.Settings) != len(want)+1 {
		t.Fatalf("Settings = %q, want %q and the claims setting", id.Settings, want)
	}
	if !reflect.DeepEqual(id.Settings[:len(want)], want) {
		t.Errorf("Settings = %q\nwant       %q", id.Settings[:len(want)], want)
	}
	last := id.Settings[len(want)]
	if last.Name != "request.jwt.claims" {
		t.Fatalf("last setting = %q, want the claims setting", last.Name)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(last.Value)); err != nil || compact.String() != last.Value {
		t.Errorf("claims setting %q is not compact JSON (%v)", last.Value, err)
	}
	var got map[string]any
	dec := json.NewDecoder(strings.NewReader(last.Value))
	dec.UseNumber()
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got["tenant_id"] != "acme" || got["big"] != json.Number("12345678901234567890") || got["exp"] != json.Number(jsonInt(exp.Unix())) {
		t.Errorf("claims setting = %s", last.Value)
	}

	// The same token twice gives the same order (map iteration must not leak).
	id2, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, c, ""), "alice")
	if err != nil || !reflect.DeepEqual(id.Settings, id2.Settings) {
		t.Errorf("second Verify: %v, settings differ: %v", err, !reflect.DeepEqual(id.Settings, id2.Settings))
	}
}

func jsonInt(n int64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// jwksServer serves a JWK Set the test can replace, counting fetches.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	body    []byte
	fetches atomic.Int64
}

type testJWK struct {
	kid string
	alg jwkset.ALG
	key any // public key, or []byte for an "oct" key
}

func newJWKSServer(t *testing.T, keys ...testJWK) *jwksServer {
	t.Helper()
	s := &jwksServer{}
	s.set(t, keys...)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body := s.body
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(t *testing.T, keys ...testJWK) {
	t.Helper()
	var set jwkset.JWKSMarshal
	for _, k := range keys {
		_, secret := k.key.([]byte)
		jwk, err := jwkset.NewJWKFromKey(k.key, jwkset.JWKOptions{
			Marshal:  jwkset.JWKMarshalOptions{Private: secret},
			Metadata: jwkset.JWKMetadataOptions{KID: k.kid, ALG: k.alg, USE: jwkset.UseSig},
		})
		if err != nil {
			t.Fatal(err)
		}
		set.Keys = append(set.Keys, jwk.Marshal())
	}
	body, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	s.body = body
	s.mu.Unlock()
}

func jwksConfig(url string, rateLimit time.Duration) *config.JWT {
	return &config.JWT{
		JWKS: []config.JWKSURL{{
			URL:              url,
			Algorithms:       []string{"RS256", "ES256", "EdDSA"},
			RefreshInterval:  config.Duration{Duration: time.Hour},
			RefreshRateLimit: config.Duration{Duration: rateLimit},
		}},
		Issuer:      testIssuer,
		Audience:    testAudience,
		Leeway:      config.Duration{Duration: 5 * time.Second},
		TenantClaim: "tenant_id",
	}
}

// The JWKS is rotated mid-test: a new kid appears (picked up by the refresh
// on an unknown kid) and the old one disappears (refused after the refresh
// attempt).
func TestJWTJWKSRotation(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t,
		testJWK{"r1", jwkset.AlgRS256, &k.rsa.PublicKey},
		testJWK{"e1", jwkset.AlgES256, &k.ec.PublicKey},
		testJWK{"d1", jwkset.AlgEdDSA, k.ed.Public()},
		testJWK{"o1", jwkset.AlgHS256, k.hmac},
	)
	const rateLimit = 20 * time.Millisecond
	v := newVerifier(t, jwksConfig(srv.URL, rateLimit))

	rotate := func() {
		srv.set(t,
			testJWK{"r2", jwkset.AlgRS256, &k.rsa2.PublicKey},
			testJWK{"e1", jwkset.AlgES256, &k.ec.PublicKey},
			testJWK{"d1", jwkset.AlgEdDSA, k.ed.Public()},
		)
	}
	steps := []struct {
		name    string
		before  func()
		token   string
		wantErr string
	}{
		{name: "RS256 r1", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "r1")},
		{name: "ES256 e1", token: sign(t, jwt.SigningMethodES256, k.ec, claims(nil), "e1")},
		{name: "EdDSA d1", token: sign(t, jwt.SigningMethodEdDSA, k.ed, claims(nil), "d1")},
		{name: "RS256 without kid", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "")},
		{name: "HS256 with the set's oct key", token: sign(t, jwt.SigningMethodHS256, k.hmac, claims(nil), "o1"), wantErr: `algorithm "HS256" is not allowed`},
		{name: "RS256 naming the EC key's kid", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "e1"), wantErr: `no configured key accepts algorithm "RS256"`},
		{name: "r1 signature by another key", token: sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), "r1"), wantErr: "token signature is invalid"},
		{name: "new kid after rotation", before: rotate, token: sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), "r2")},
		{name: "removed kid", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "r1"), wantErr: `unknown key id "r1"`},
		{name: "never known kid", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "k9"), wantErr: `unknown key id "k9"`},
		{name: "non-string kid", token: func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims(nil))
			tok.Header["kid"] = 7
			s, _ := tok.SignedString(k.rsa)
			return s
		}(), wantErr: `"kid" header is not a string`},
		{name: "without kid after rotation", token: sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), "")},
		{name: "old key without kid after rotation", token: sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), ""), wantErr: "token signature is invalid"},
	}
	for _, st := range steps {
		// Sequential on purpose: the steps share the verifier and the server.
		if st.before != nil {
			st.before()
		}
		fetches := srv.fetches.Load()
		id, err := v.Verify(st.token, "alice")
		if st.wantErr == "" {
			if err != nil || id.Tenant != "acme" {
				t.Errorf("%s: Verify = %+v, %v", st.name, id, err)
			}
			continue
		}
		t.Run(st.name, func(t *testing.T) { checkRefusal(t, err, "alice", st.wantErr) })
		if strings.HasPrefix(st.wantErr, "unknown key id") && srv.fetches.Load() == fetches {
			t.Errorf("%s: refused without trying to refresh the key set", st.name)
		}
	}
}

// An unknown kid makes the verifier fetch the set again before it refuses,
// so a key published meanwhile is found; the fetches caused by a flood of
// made-up kids are shared and spaced by refresh_rate_limit, and a token with
// a newly published key still gets in; known kids never wait for a fetch.
func TestJWTJWKSUnknownKIDRefresh(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, testJWK{"r1", jwkset.AlgRS256, &k.rsa.PublicKey})
	const interval = 200 * time.Millisecond
	v := newVerifier(t, jwksConfig(srv.URL, interval))
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("initial fetches = %d, want 1", n)
	}

	_, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "k1"), "alice")
	checkRefusal(t, err, "alice", `unknown key id "k1"`)
	if n := srv.fetches.Load(); n != 2 {
		t.Fatalf("fetches after an unknown kid = %d, want 2", n)
	}

	// Right after that fetch, a new key is published and used at once.
	srv.set(t, testJWK{"r1", jwkset.AlgRS256, &k.rsa.PublicKey}, testJWK{"r2", jwkset.AlgRS256, &k.rsa2.PublicKey})
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), "r2"), "alice"); err != nil {
		t.Fatalf("key published right after a fetch: %v", err)
	}

	// A flood of made-up kids, and a key published in the middle of it.
	flood := sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), "bogus")
	before, start := srv.fetches.Load(), time.Now()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			_, err := v.Verify(flood, "alice")
			checkRefusal(t, err, "alice", `unknown key id "bogus"`)
		})
	}
	srv.set(t, testJWK{"r2", jwkset.AlgRS256, &k.rsa2.PublicKey}, testJWK{"r3", jwkset.AlgRS256, &k.rsa3.PublicKey})
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa3, claims(nil), "r3"), "alice"); err != nil {
		t.Errorf("key published during a flood of made-up kids: %v", err)
	}
	wg.Wait()
	fetches, elapsed := srv.fetches.Load()-before, time.Since(start)
	if limit := int64(elapsed/interval) + 1; fetches > limit {
		t.Errorf("%d fetches in %v, want at most %d (one per %v)", fetches, elapsed, limit, interval)
	}

	// Known kids (and tokens without one) never fetch.
	before = srv.fetches.Load()
	for _, tok := range []string{
		sign(t, jwt.SigningMethodRS256, k.rsa3, claims(nil), "r3"),
		sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), ""),
	} {
		if _, err := v.Verify(tok, "alice"); err != nil {
			t.Errorf("known key: %v", err)
		}
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), "r3"), "alice"); err == nil {
		t.Error("a known kid with a bad signature was accepted")
	}
	if n := srv.fetches.Load(); n != before {
		t.Errorf("%d fetches for known kids", n-before)
	}
}

// A static key that verifies a token with a kid no key set holds is enough:
// no fetch, no wait.
func TestJWTKIDVerifiedByStaticKeyDoesNotFetch(t *testing.T) {
	k := keys(t)
	srv := newJWKSServer(t, testJWK{"r1", jwkset.AlgRS256, &k.rsa.PublicKey})
	cfg := jwksConfig(srv.URL, config.MaxJWKSRefreshRateLimit)
	cfg.PublicKeys = []config.JWTKey{{File: writeFile(t, "rsa2.pem", publicPEM(t, &k.rsa2.PublicKey)), Algorithms: []string{"RS256"}}}
	v := newVerifier(t, cfg)
	for range 3 {
		if _, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa2, claims(nil), "pem-key"), "alice"); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("fetches = %d, want only the first", n)
	}
}

func TestNewJWTVerifierErrors(t *testing.T) {
	k := keys(t)
	rsaFile := writeFile(t, "rsa.pem", publicPEM(t, &k.rsa.PublicKey))
	der, err := x509.MarshalPKCS8PrivateKey(k.ec)
	if err != nil {
		t.Fatal(err)
	}
	privFile := writeFile(t, "priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	tests := []struct {
		name string
		cfg  config.JWT
		want string
	}{
		{"no key source", config.JWT{}, "needs at least one key source"},
		{"RS256 for the HMAC secret", config.JWT{HMACSecret: string(k.hmac), HMACAlgorithms: []string{"RS256"}}, `"RS256" is not one of HS256`},
		{"HS256 for a public key", config.JWT{PublicKeys: []config.JWTKey{{File: rsaFile, Algorithms: []string{"HS256"}}}}, `"HS256" is not one of RS256`},
		{"none for a public key", config.JWT{PublicKeys: []config.JWTKey{{File: rsaFile, Algorithms: []string{"none"}}}}, `"none" is not one of`},
		{"no algorithms", config.JWT{PublicKeys: []config.JWTKey{{File: rsaFile}}}, "must list the accepted algorithms"},
		{"ES256 for an RSA key", config.JWT{PublicKeys: []config.JWTKey{{File: rsaFile, Algorithms: []string{"ES256"}}}}, "holds a RSA key, which cannot verify ES256"},
		{"private key file", config.JWT{PublicKeys: []config.JWTKey{{File: privFile, Algorithms: []string{"ES256"}}}}, "holds a private key"},
		{"missing file", config.JWT{PublicKeys: []config.JWTKey{{File: rsaFile + ".nope", Algorithms: []string{"RS256"}}}}, "no such file"},
		{"HS256 for a JWKS", config.JWT{JWKS: []config.JWKSURL{{URL: "http://127.0.0.1:1/jwks", Algorithms: []string{"HS256"}}}}, `"HS256" is not one of RS256`},
		{"refresh_rate_limit too long", config.JWT{JWKS: []config.JWKSURL{{URL: "http://127.0.0.1:1/jwks", Algorithms: []string{"RS256"}, RefreshRateLimit: config.Duration{Duration: time.Minute}}}}, "refresh_rate_limit: 1m0s is longer than 30s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := NewJWTVerifier(context.Background(), &tt.cfg)
			if err == nil {
				v.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

// recordingConn records what the client side of a pipe reads.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	c.buf.Write(p[:n])
	c.mu.Unlock()
	return n, err
}

// askedCleartext reports whether the plaintext server-to-client bytes hold
// an AuthenticationCleartextPassword message.
func (c *recordingConn) askedCleartext(t *testing.T) bool {
	t.Helper()
	c.mu.Lock()
	b := bytes.Clone(c.buf.Bytes())
	c.mu.Unlock()
	for len(b) >= 5 {
		typ, n := b[0], int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || len(b) < 1+n {
			t.Fatalf("cannot parse server bytes %q", b)
		}
		body := b[5 : 1+n]
		if typ == 'R' && len(body) >= 4 && binary.BigEndian.Uint32(body) == pgproto3.AuthTypeCleartextPassword {
			return true
		}
		b = b[1+n:]
	}
	return false
}

func TestAuthenticateJWTWithPgconn(t *testing.T) {
	k := keys(t)
	cert := selfSigned(t)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	cfg := staticConfig(t)
	cfg.UserClaim = ""
	v := newVerifier(t, cfg)
	routes := &config.Config{Auth: config.Auth{Methods: []config.MethodRule{{Users: "analyst_*", Method: config.MethodJWT}}}}
	dir := testDirectory(t)
	strict := NewAuthenticator(dir, WithServerCertificate(cert.Leaf), WithJWT(v, routes.MethodFor, false))
	loopbackOK := NewAuthenticator(dir, WithServerCertificate(cert.Leaf), WithJWT(v, routes.MethodFor, true))

	token := sign(t, jwt.SigningMethodRS256, k.rsa, claims(nil), "")
	bad := sign(t, jwt.SigningMethodRS256, k.rsaOther, claims(nil), "")
	const plain = "host=pipe dbname=app sslmode=disable "
	const secure = "host=pipe dbname=app sslmode=require "
	tlsRequired := `JWT authentication for user "analyst_1" requires a TLS connection (sslmode=require)`
	tests := []struct {
		name       string
		a          *Authenticator
		conn       string
		tls        *tls.Config
		loopback   bool
		wantMethod string
		wantTenant string
		wantCode   string
		wantMsg    string // prefix
		wantAsked  bool   // plaintext only: whether the server asked for a cleartext password
	}{
		{name: "JWT over TLS", a: strict, conn: secure + "user=analyst_1 password=" + token, tls: serverTLS, wantMethod: "jwt", wantTenant: "acme"},
		{name: "bad JWT over TLS", a: strict, conn: secure + "user=analyst_1 password=" + bad, tls: serverTLS,
			wantCode: "28000", wantMsg: `JWT authentication failed for user "analyst_1": token signature is invalid`},
		{name: "JWT on plaintext", a: strict, conn: plain + "user=analyst_1 password=" + token, wantCode: "28000", wantMsg: tlsRequired},
		{name: "JWT on plaintext from loopback, not allowed", a: strict, conn: plain + "user=analyst_1 password=" + token, loopback: true, wantCode: "28000", wantMsg: tlsRequired},
		{name: "JWT on plaintext, loopback allowed, remote client", a: loopbackOK, conn: plain + "user=analyst_1 password=" + token, wantCode: "28000", wantMsg: tlsRequired},
		{name: "JWT on plaintext from loopback, allowed", a: loopbackOK, conn: plain + "user=analyst_1 password=" + token, loopback: true,
			wantMethod: "jwt", wantTenant: "acme", wantAsked: true},
		{name: "SCRAM user next to JWT, channel binding", a: strict, conn: secure + "channel_binding=require user=alice password=alice-pw", tls: serverTLS,
			wantMethod: "scram-sha-256", wantTenant: "acme"},
		{name: "SCRAM user on plaintext", a: strict, conn: plain + "user=bob password=bob-pw", wantMethod: "scram-sha-256", wantTenant: "globex"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var rec *recordingConn
			res, clientErr := connectFrom(t, tt.a, tt.conn, tt.tls, tt.loopback, func(c net.Conn) net.Conn {
				rec = &recordingConn{Conn: c}
				return rec
			})
			if tt.tls == nil && rec.askedCleartext(t) != tt.wantAsked {
				t.Errorf("server asked for a cleartext password: %v, want %v", !tt.wantAsked, tt.wantAsked)
			}
			if tt.wantCode == "" {
				if clientErr != nil || res.err != nil {
					t.Fatalf("client error %v, server error %v", clientErr, res.err)
				}
				if res.id.Tenant != tt.wantTenant || res.id.Method != tt.wantMethod {
					t.Errorf("Identity = %+v, want tenant %q method %q", res.id, tt.wantTenant, tt.wantMethod)
				}
				return
			}
			var pgErr *pgconn.PgError
			if !errors.As(clientErr, &pgErr) {
				t.Fatalf("client error %v is not a PgError", clientErr)
			}
			if pgErr.Severity != "FATAL" || pgErr.Code != tt.wantCode || !strings.HasPrefix(pgErr.Message, tt.wantMsg) {
				t.Errorf("client got %s %s %q, want FATAL %s %q", pgErr.Severity, pgErr.Code, pgErr.Message, tt.wantCode, tt.wantMsg)
			}
			if strings.Contains(pgErr.Error(), token) || strings.Contains(pgErr.Error(), bad) {
				t.Error("the error echoes the token")
			}
			if !isZero(res.id) {
				t.Errorf("Identity = %+v on failure", res.id)
			}
		})
	}
}

func TestAuthenticateJWTProtocol(t *testing.T) {
	v := newVerifier(t, staticConfig(t))
	methodFor := func(user string) string {
		if user == "ldap_user" {
			return "ldap"
		}
		return config.MethodJWT
	}
	a := NewAuthenticator(testDirectory(t), WithJWT(v, methodFor, false))
	tlsConn := ConnInfo{TLS: &tls.ConnectionState{}}

	t.Run("query instead of password", func(t *testing.T) {
		id, err := rawExchangeConn(t, a, "alice", tlsConn, func(fe *pgproto3.Frontend) {
			msg, err := fe.Receive()
			if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); err != nil || !ok {
				t.Errorf("got %T, %v; want AuthenticationCleartextPassword", msg, err)
			}
			fe.Send(&pgproto3.Query{String: "select 1"})
			_ = fe.Flush()
		})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "08P01" || pgErr.Message != "expected password response" || !isZero(id) {
			t.Errorf("got %v, %+v; want FATAL 08P01 expected password response", err, id)
		}
	})
	t.Run("hang-up instead of password", func(t *testing.T) {
		_, err := rawExchangeConn(t, a, "alice", tlsConn, func(fe *pgproto3.Frontend) { _, _ = fe.Receive() })
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) {
			t.Errorf("err = %v, want a connection error that is not a PgError", err)
		}
	})
	t.Run("unknown method fails closed", func(t *testing.T) {
		_, err := rawExchangeConn(t, a, "ldap_user", tlsConn, func(*pgproto3.Frontend) {})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Errorf("err = %v, want FATAL 28000", err)
		}
	})
	t.Run("JWT method without a verifier", func(t *testing.T) {
		b := NewAuthenticator(testDirectory(t), WithJWT(nil, methodFor, false))
		_, err := rawExchangeConn(t, b, "alice", tlsConn, func(*pgproto3.Frontend) {})
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" {
			t.Errorf("err = %v, want FATAL 28000", err)
		}
	})
}

func TestIsLoopback(t *testing.T) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	tests := []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 5}, true},
		{&net.TCPAddr{IP: net.ParseIP("127.1.2.3"), Port: 5}, true},
		{&net.TCPAddr{IP: net.ParseIP("::1"), Port: 5}, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 5}, true},
		{&net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 5}, false},
		{&net.TCPAddr{IP: net.ParseIP("::"), Port: 5}, false},
		{&net.UnixAddr{Name: "/run/pgtenant.sock", Net: "unix"}, true},
		{c1.RemoteAddr(), false},
		{nil, false},
	}
	for _, tt := range tests {
		if got := IsLoopback(tt.addr); got != tt.want {
			t.Errorf("IsLoopback(%v) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

// An expired token reads the same at login and when it ends a session: the
// same reason, code and hint.
func TestTokenExpiredReadsAlike(t *testing.T) {
	k := keys(t)
	v := newVerifier(t, staticConfig(t))
	_, err := v.Verify(sign(t, jwt.SigningMethodRS256, k.rsa, claims(map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}), ""), "alice")
	var login *pgconn.PgError
	if !errors.As(err, &login) {
		t.Fatalf("Verify: %v", err)
	}
	session := TokenExpired("alice")
	for _, e := range []*pgconn.PgError{login, session} {
		if e.Severity != "FATAL" || e.Code != "28000" || !strings.HasSuffix(e.Message, `for user "alice": token has expired`) || e.Hint != "Connect again with a new token." {
			t.Errorf("got %s %s %q hint %q", e.Severity, e.Code, e.Message, e.Hint)
		}
	}
	if session.Message != `terminating connection for user "alice": token has expired` {
		t.Errorf("mid-session message %q", session.Message)
	}
}

func TestCouldBeGuess(t *testing.T) {
	wrongPassword := fatal(codeInvalidPassword, `password authentication failed for user "alice"`, "")
	expired := &signedRefusal{fatal(codeInvalidAuthSpec, "expired", "")}
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"wrong password", wrongPassword, true},
		{"wrapped wrong password", fmt.Errorf("auth: %w", wrongPassword), true},
		{"correctly signed, expired", expired, false},
		{"wrapped correctly signed", fmt.Errorf("auth: %w", expired), false},
	}
	for _, tt := range tests {
		if got := CouldBeGuess(tt.err); got != tt.want {
			t.Errorf("%s: CouldBeGuess = %v, want %v", tt.name, got, tt.want)
		}
	}
}
