package auth

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgtenant/pgtenant/config"
	"golang.org/x/time/rate"
)

// MethodJWT is the Identity.Method for a JWT presented as the password.
const MethodJWT = config.MethodJWT

const (
	// jwksHTTPTimeout bounds each JWKS fetch (the first one, the periodic
	// ones and the refresh on an unknown kid).
	jwksHTTPTimeout = 10 * time.Second
	// maxEchoLen bounds attacker-controlled text (alg, kid, iss, role) quoted
	// in error messages.
	maxEchoLen = 64
)

// JWTVerifier checks JSON Web Tokens presented as the password and turns
// them into an Identity. It is safe for concurrent use.
//
// Every key source carries its own algorithm allow-list, and a token is only
// ever verified with a key whose allow-list contains the token's alg: the
// HMAC secret only with HS*, a public key only with its asymmetric
// algorithms. So "alg":"none" and an HS256 token "signed" with the RSA public
// key as the HMAC secret cannot verify, by construction.
type JWTVerifier struct {
	cfg     *config.JWT
	sources []*keySource
	parser  *jwt.Parser
	now     func() time.Time

	ctx       context.Context // bounds JWKS refreshes; cancelled by Close
	cancel    context.CancelFunc
	transport *http.Transport // the JWKS fetches' own, so Close can drop its idle connections
}

// keySource is one configured key source with its algorithm allow-list.
type keySource struct {
	algs []string // allow-list
	keys []any    // static keys: []byte for HMAC, public keys otherwise
	jwks *jwksSet // a JWKS URL's keys instead
}

func (s *keySource) allows(alg string) bool { return slices.Contains(s.algs, alg) }

var (
	hmacAlgs   = []string{"HS256", "HS384", "HS512"}
	publicAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

// NewJWTVerifier loads the PEM public keys (RSA, ECDSA, Ed25519) and starts a
// cache per JWKS URL. Each cache is fetched once now, refreshed every
// RefreshInterval, and refreshed when a token names an unknown kid, at most
// once per RefreshRateLimit (see kidRefresher). A JWKS endpoint that cannot be fetched at start
// is logged (slog.Default) and retried on those occasions rather than failing
// start-up, so SCRAM users are not locked out by an identity provider outage.
//
// ctx bounds the background refreshes; Close stops them.
func NewJWTVerifier(ctx context.Context, cfg *config.JWT) (*JWTVerifier, error) {
	if cfg == nil {
		return nil, errors.New("jwt: no configuration")
	}
	c := *cfg // defaults are filled in on a copy
	if c.HMACSecret != "" && len(c.HMACAlgorithms) == 0 {
		c.HMACAlgorithms = []string{"HS256"}
	}
	if c.TenantClaim == "" {
		c.TenantClaim = "tenant_id"
	}

	v := &JWTVerifier{cfg: &c, now: time.Now}
	v.ctx, v.cancel = context.WithCancel(ctx)
	ok := false
	defer func() {
		if !ok {
			v.Close()
		}
	}()

	if c.HMACSecret != "" {
		if err := checkAlgs("jwt.hmac_algorithms", c.HMACAlgorithms, hmacAlgs); err != nil {
			return nil, err
		}
		v.sources = append(v.sources, &keySource{algs: c.HMACAlgorithms, keys: []any{[]byte(c.HMACSecret)}})
	}
	for i, k := range c.PublicKeys {
		name := fmt.Sprintf("jwt.public_keys[%d]", i)
		if err := checkAlgs(name+".algorithms", k.Algorithms, publicAlgs); err != nil {
			return nil, err
		}
		keys, err := loadPublicKeys(k.File)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		for _, key := range keys {
			for _, alg := range k.Algorithms {
				if !keyFitsAlg(key, alg) {
					return nil, fmt.Errorf("%s: %s holds a %s, which cannot verify %s", name, k.File, keyKind(key), alg)
				}
			}
		}
		v.sources = append(v.sources, &keySource{algs: k.Algorithms, keys: keys})
	}
	if len(c.JWKS) > 0 {
		v.transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	for i, j := range c.JWKS {
		name := fmt.Sprintf("jwt.jwks[%d]", i)
		if err := checkAlgs(name+".algorithms", j.Algorithms, publicAlgs); err != nil {
			return nil, err
		}
		interval := j.RefreshInterval.Duration
		if interval <= 0 {
			interval = time.Hour
		}
		limit := j.RefreshRateLimit.Duration
		if limit <= 0 {
			limit = config.DefaultJWKSRefreshRateLimit
		}
		if limit > config.MaxJWKSRefreshRateLimit {
			return nil, fmt.Errorf("%s.refresh_rate_limit: %s is longer than %s, which a login may wait for a new key", name, limit, config.MaxJWKSRefreshRateLimit)
		}
		url := j.URL
		kf, err := keyfunc.NewDefaultOverrideCtx(v.ctx, []string{url}, keyfunc.Override{
			Client:      &http.Client{Transport: v.transport},
			HTTPTimeout: jwksHTTPTimeout,
			// The storage's own limiter never holds back: a KeyRead that
			// misses fetches at once, bounded by this timeout. Only
			// kidRefresher asks it to, and spaces and shares the fetches.
			RateLimitWaitMax:  jwksHTTPTimeout,
			RefreshInterval:   interval,
			RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
			RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
				return func(ctx context.Context, err error) {
					if v.ctx.Err() == nil {
						slog.Default().WarnContext(ctx, "jwt: fetching JWKS failed", "url", url, "err", err)
					}
				}
			},
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		v.sources = append(v.sources, &keySource{algs: j.Algorithms, jwks: newJWKSSet(kf.Storage(), limit)})
	}
	if len(v.sources) == 0 {
		return nil, errors.New("jwt: needs at least one key source: hmac_secret, public_keys or jwks")
	}

	var union []string
	for _, s := range v.sources {
		for _, a := range s.algs {
			if !slices.Contains(union, a) {
				union = append(union, a)
			}
		}
	}
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(union), // first gate; the keyfunc enforces each key's own list
		jwt.WithJSONNumber(),        // numeric claims keep their exact JSON text
		jwt.WithLeeway(c.Leeway.Duration),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	}
	if c.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(c.Issuer))
	}
	if c.Audience != "" {
		opts = append(opts, jwt.WithAudience(c.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	ok = true
	return v, nil
}

// Close stops the JWKS refreshes and drops their idle connections. It is
// safe to call more than once.
func (v *JWTVerifier) Close() {
	v.cancel()
	if v.transport != nil {
		v.transport.CloseIdleConnections()
	}
}

func checkAlgs(field string, algs, permitted []string) error {
	if len(algs) == 0 {
		return fmt.Errorf("%s: must list the accepted algorithms", field)
	}
	for _, a := range algs {
		if !slices.Contains(permitted, a) {
			return fmt.Errorf("%s: %q is not one of %s", field, a, strings.Join(permitted, ", "))
		}
	}
	return nil
}

// loadPublicKeys reads every public key in a PEM file ("PUBLIC KEY",
// "RSA PUBLIC KEY" or a "CERTIFICATE"'s key). Private keys are refused.
func loadPublicKeys(file string) ([]any, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var keys []any
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var key any
		switch {
		case block.Type == "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case block.Type == "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case block.Type == "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		case strings.Contains(block.Type, "PRIVATE KEY"):
			return nil, fmt.Errorf("%s holds a private key; give pgtenant only the public key", file)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: parsing %s: %w", file, block.Type, err)
		}
		switch key.(type) {
		case *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey:
		default:
			return nil, fmt.Errorf("%s: unsupported key type %T (want RSA, ECDSA or Ed25519)", file, key)
		}
		keys = append(keys, key)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no PEM public key found", file)
	}
	return keys, nil
}

// keyFitsAlg says whether key is the right type for an asymmetric alg.
func keyFitsAlg(key any, alg string) bool {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch alg {
		case "ES256":
			return k.Curve == elliptic.P256()
		case "ES384":
			return k.Curve == elliptic.P384()
		case "ES512":
			return k.Curve == elliptic.P521()
		}
	case ed25519.PublicKey:
		return alg == "EdDSA"
	}
	return false
}

func keyKind(key any) string {
	switch k := key.(type) {
	case *rsa.PublicKey:
		return "RSA key"
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name + " key"
	case ed25519.PublicKey:
		return "Ed25519 key"
	}
	return fmt.Sprintf("%T", key)
}

const (
	// reasonTokenExpired is how an expired token is refused, at login and
	// when a session outlives its token alike.
	reasonTokenExpired = "token has expired"
	hintNewToken       = "Connect again with a new token."
)

// TokenExpired is the FATAL 28000 that ends a session of user once its
// token has expired, worded like the login refusal of an expired token.
func TokenExpired(user string) *pgconn.PgError {
	e := fatal(codeInvalidAuthSpec, fmt.Sprintf("terminating connection for user %q: %s", user, reasonTokenExpired), "")
	e.Hint = hintNewToken
	return e
}

// signedRefusal is the refusal of a token whose signature verified (it is
// expired, not yet valid, for another audience, ...): only the holder of a
// trusted key can have made it, so sending it is no guess.
type signedRefusal struct{ *pgconn.PgError }

func (e *signedRefusal) Unwrap() error { return e.PgError }

// CouldBeGuess reports whether a failed authentication could have been a
// guess at a credential (a wrong password, an unknown user, a forged or
// badly signed token), which the login throttle should count. The refusal of
// a correctly signed token is not: a client that gets a fresh token and
// retries at once must not be held back.
func CouldBeGuess(err error) bool {
	var s *signedRefusal
	return !errors.As(err, &s)
}

// Errors from the keyfunc, mapped to messages by Verify.
type unknownKIDError struct{ kid string }

func (e *unknownKIDError) Error() string { return fmt.Sprintf("unknown key id %s", quoteEcho(e.kid)) }

var (
	errNoKeyForAlg = errors.New("no configured key accepts the token's algorithm")
	errBadKID      = errors.New(`the "kid" header is not a string`)
)

// kidMiss is what keys found missing: a kid no key set (of those allowing
// the token's alg) holds, and those sets.
type kidMiss struct {
	kid  string
	sets []*jwksSet
}

// keys is the jwt.Keyfunc: it returns the keys that may verify token, only
// from sources whose allow-list contains the token's alg and, for JWKS keys,
// only keys of the right type whose own alg/use (if published) agree. With a
// kid, JWKS keys are looked up by it as last fetched, and miss is filled in
// when no set has it; the static keys, which have no kid, are tried as well.
// Without a kid every fitting key is tried.
func (v *JWTVerifier) keys(token *jwt.Token, miss *kidMiss) (any, error) {
	alg := token.Method.Alg()
	kid, hasKID := "", false
	if raw, present := token.Header["kid"]; present {
		s, isString := raw.(string)
		if !isString {
			return nil, errBadKID
		}
		kid, hasKID = s, true
	}

	var keys []jwt.VerificationKey
	var lacking []*jwksSet
	jwksConsulted, kidFound := false, false
	for _, s := range v.sources {
		if !s.allows(alg) {
			continue
		}
		if s.jwks == nil {
			for _, k := range s.keys {
				keys = append(keys, k)
			}
			continue
		}
		jwksConsulted = true
		var jwks []jwkset.JWK
		if hasKID {
			if jwks = s.jwks.withKID(v.ctx, kid); len(jwks) == 0 {
				lacking = append(lacking, s.jwks)
				continue
			}
			kidFound = true
		} else if all, err := s.jwks.store.KeyReadAll(v.ctx); err == nil {
			jwks = all
		}
		for _, jwk := range jwks {
			if key, ok := jwkKey(jwk, alg); ok {
				keys = append(keys, key)
			}
		}
	}
	if hasKID && jwksConsulted && !kidFound {
		*miss = kidMiss{kid: kid, sets: lacking}
	}
	if len(keys) == 0 {
		if miss.kid != "" {
			return nil, &unknownKIDError{kid}
		}
		return nil, errNoKeyForAlg
	}
	// The HMAC secret is only ever returned for HS* and public keys only for
	// their own algorithms; check once more so no future change can mix them.
	for _, k := range keys {
		if _, isSecret := k.([]byte); isSecret != strings.HasPrefix(alg, "HS") {
			return nil, errNoKeyForAlg
		}
	}
	if len(keys) == 1 {
		return keys[0], nil
	}
	return jwt.VerificationKeySet{Keys: keys}, nil
}

// jwkKey returns a JWKS key usable for alg: a public key of the fitting type
// whose published "alg" (if any) is alg and whose "use" (if any) is "sig".
// Symmetric ("oct") keys from a JWKS are never used.
func jwkKey(jwk jwkset.JWK, alg string) (any, bool) {
	m := jwk.Marshal()
	if (m.ALG != "" && m.ALG.String() != alg) || (m.USE != "" && m.USE != jwkset.UseSig) {
		return nil, false
	}
	key := jwk.Key()
	if pk, ok := key.(interface{ Public() crypto.PublicKey }); ok {
		key = pk.Public()
	}
	if !keyFitsAlg(key, alg) {
		return nil, false
	}
	return key, true
}

// Verify checks token for the login user and returns its Identity. The
// claims give the tenant (TenantClaim), the settings (Settings,
// ClaimsSetting, sorted by name with the claims setting last), the role
// (RoleClaim, checked against AllowedRoles) and the expiry (exp, required: a
// session may hold no longer than its token).
//
// A setting whose claim is missing (or null) is set to "", so a value from an
// earlier transaction or session can never survive into this one.
//
// Failures are a *pgconn.PgError, FATAL 28000, naming the reason; the token
// itself is never logged or returned.
func (v *JWTVerifier) Verify(token, user string) (Identity, error) {
	signed := false // once true, a refusal is not a guess (see CouldBeGuess)
	fail := func(format string, args ...any) (Identity, error) {
		reason := fmt.Sprintf(format, args...)
		e := fatal(codeInvalidAuthSpec, fmt.Sprintf("JWT authentication failed for user %q: %s", user, reason), "")
		if reason == reasonTokenExpired {
			e.Hint = hintNewToken
		}
		if signed {
			return Identity{}, &signedRefusal{e}
		}
		return Identity{}, e
	}
	if token == "" {
		return fail("no token was sent as the password")
	}

	parsed, claims, miss, err := v.parse(token)
	var kidErr *unknownKIDError
	if miss.kid != "" && (errors.As(err, &kidErr) || errors.Is(err, jwt.ErrTokenSignatureInvalid)) {
		// No key verified it and its kid is in no key set: perhaps the
		// identity provider has published a new key since the last fetch.
		v.refetch(miss.sets)
		parsed, claims, miss, err = v.parse(token)
	}
	if err != nil {
		if miss.kid != "" && errors.Is(err, jwt.ErrTokenSignatureInvalid) {
			// The static keys were tried too and did not fit either: the kid
			// is the better explanation.
			err = &unknownKIDError{miss.kid}
		}
		// jwt checks the claims only once the signature has verified.
		signed = errors.Is(err, jwt.ErrTokenInvalidClaims)
		return fail("%s", v.reason(parsed, claims, err))
	}
	signed = true

	now := v.now()
	exp, err := claims.GetExpirationTime()
	if err != nil || exp == nil {
		return fail("token has no expiry (exp) claim; a session may hold no longer than its token")
	}
	if v.cfg.MaxAge.Duration > 0 {
		iat, err := claims.GetIssuedAt()
		if err != nil || iat == nil {
			return fail("token has no issued-at (iat) claim, which max_age requires")
		}
		if age := now.Sub(iat.Time); age > v.cfg.MaxAge.Duration+v.cfg.Leeway.Duration {
			return fail("token is too old (issued %s ago, max_age is %s)", age.Round(time.Second), v.cfg.MaxAge.Duration)
		}
	}

	if c := v.cfg.UserClaim; c != "" {
		val, found := claimAt(claims, c)
		if !found {
			return fail("token has no %s claim", quoteEcho(c))
		}
		s, isString := val.(string)
		if !isString || s != user {
			return fail("token claim %s does not match the user name", quoteEcho(c))
		}
	}

	id := Identity{User: user, Method: MethodJWT, Expires: exp.Time}

	val, found := claimAt(claims, v.cfg.TenantClaim)
	if !found || val == nil {
		return fail("token has no %s claim", quoteEcho(v.cfg.TenantClaim))
	}
	tenant, isString := val.(string)
	if !isString {
		return fail("tenant claim must be a string; %s is %s", quoteEcho(v.cfg.TenantClaim), jsonKind(val))
	}
	if tenant == "" {
		return fail("tenant claim %s is empty", quoteEcho(v.cfg.TenantClaim))
	}
	if strings.IndexByte(tenant, 0) >= 0 {
		return fail("tenant claim %s contains a NUL byte", quoteEcho(v.cfg.TenantClaim))
	}
	id.Tenant = tenant

	if c := v.cfg.RoleClaim; c != "" {
		val, found := claimAt(claims, c)
		if !found || val == nil {
			return fail("token has no %s claim", quoteEcho(c))
		}
		role, isString := val.(string)
		if !isString {
			return fail("role claim must be a string; %s is %s", quoteEcho(c), jsonKind(val))
		}
		if !slices.Contains(v.cfg.AllowedRoles, role) {
			return fail("role %s is not allowed", quoteEcho(role))
		}
		id.Role = role
	}

	if c := v.cfg.ReadOnlyClaim; c != "" {
		val, found := claimAt(claims, c)
		ro, isBool := val.(bool)
		if found && val != nil && !isBool {
			return fail("read-only claim must be a boolean; %s is %s", quoteEcho(c), jsonKind(val))
		}
		id.ReadOnly = ro
	}
	for _, name := range slices.Sorted(maps.Keys(v.cfg.LimitClaims)) {
		val, found := claimAt(claims, v.cfg.LimitClaims[name])
		if !found || val == nil {
			continue // the tenant's configured value stands
		}
		ms, err := limitMillis(val)
		if err != nil {
			return fail("claim %s for %s: %v", quoteEcho(v.cfg.LimitClaims[name]), name, err)
		}
		id.Limits = append(id.Limits, Setting{Name: name, Value: strconv.FormatInt(ms, 10)})
	}

	names := make([]string, 0, len(v.cfg.Settings))
	for name := range v.cfg.Settings {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		value := ""
		if val, found := claimAt(claims, v.cfg.Settings[name]); found {
			if value, err = claimText(val); err != nil {
				return fail("claim %s for setting %s: %v", quoteEcho(v.cfg.Settings[name]), name, err)
			}
		}
		if strings.IndexByte(value, 0) >= 0 {
			return fail("claim %s for setting %s contains a NUL byte", quoteEcho(v.cfg.Settings[name]), name)
		}
		id.Settings = append(id.Settings, Setting{Name: name, Value: value})
	}
	if name := v.cfg.ClaimsSetting; name != "" {
		all, err := compactJSON(map[string]any(claims))
		if err != nil {
			return fail("encoding the claims: %v", err)
		}
		id.Settings = append(id.Settings, Setting{Name: name, Value: all})
	}
	return id, nil
}

// parse verifies token with the keys as they are, and says which kid, if
// any, was missing from the key sets.
func (v *JWTVerifier) parse(token string) (*jwt.Token, jwt.MapClaims, kidMiss, error) {
	claims := jwt.MapClaims{}
	var miss kidMiss
	parsed, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		return v.keys(t, &miss)
	})
	return parsed, claims, miss, err
}

// refetch waits until each of sets has been fetched again, all at once.
func (v *JWTVerifier) refetch(sets []*jwksSet) {
	var wg sync.WaitGroup
	for _, s := range sets {
		wg.Go(func() { _ = s.refresh.await(v.ctx) }) // an error: Close was called
	}
	wg.Wait()
}

// reason turns a parse/verification error into the message's reason. Claim
// values are only looked at once the signature has been verified (jwt
// validates claims after the signature), and only a bounded, quoted excerpt
// of them is echoed.
func (v *JWTVerifier) reason(token *jwt.Token, claims jwt.MapClaims, err error) string {
	alg := ""
	if token != nil {
		alg, _ = token.Header["alg"].(string)
	}
	var kidErr *unknownKIDError
	switch {
	case errors.As(err, &kidErr):
		return kidErr.Error()
	case errors.Is(err, errBadKID):
		return errBadKID.Error()
	case errors.Is(err, errNoKeyForAlg):
		return fmt.Sprintf("no configured key accepts algorithm %s", quoteEcho(alg))
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "token is malformed"
	case token != nil && token.Method == nil && alg != "":
		// An algorithm jwt does not know (or "none" is not registered).
		return fmt.Sprintf("algorithm %s is not allowed", quoteEcho(alg))
	case errors.Is(err, jwt.ErrTokenUnverifiable) && alg == "":
		return `token header has no "alg"`
	case errors.Is(err, jwt.ErrTokenSignatureInvalid) && token != nil && token.Method != nil && !v.algAllowed(alg):
		return fmt.Sprintf("algorithm %s is not allowed", quoteEcho(alg))
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "token signature is invalid"
	case errors.Is(err, jwt.ErrTokenInvalidClaims):
		// The signature is valid; say which claim check failed, in the
		// order a reader would check them.
		switch {
		case errors.Is(err, jwt.ErrInvalidType):
			return "token has a registered claim (exp, nbf, iat, iss or aud) of the wrong type"
		case missing(claims, "exp"):
			return "token has no expiry (exp) claim; a session may hold no longer than its token"
		case errors.Is(err, jwt.ErrTokenExpired):
			return reasonTokenExpired
		case errors.Is(err, jwt.ErrTokenNotValidYet):
			return "token is not valid yet"
		case errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
			return "token is issued in the future"
		case v.cfg.Issuer != "" && missing(claims, "iss"):
			return "token has no issuer (iss) claim"
		case errors.Is(err, jwt.ErrTokenInvalidIssuer):
			iss, _ := claims["iss"].(string)
			return fmt.Sprintf("issuer %s is not accepted", quoteEcho(iss))
		case v.cfg.Audience != "" && missing(claims, "aud"):
			return "token has no audience (aud) claim"
		case errors.Is(err, jwt.ErrTokenInvalidAudience):
			return fmt.Sprintf("audience does not include %s", quoteEcho(v.cfg.Audience))
		}
		return "token claims are invalid"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "token cannot be verified"
	}
	return "token is invalid"
}

func (v *JWTVerifier) algAllowed(alg string) bool {
	for _, s := range v.sources {
		if s.allows(alg) {
			return true
		}
	}
	return false
}

func missing(claims jwt.MapClaims, name string) bool {
	val, ok := claims[name]
	return !ok || val == nil
}

// claimAt finds a claim by its exact top-level name ("tenant_id",
// "https://example.com/tenant_id") or else by a dotted path into nested
// objects ("org.id").
func claimAt(claims map[string]any, path string) (any, bool) {
	if val, ok := claims[path]; ok {
		return val, true
	}
	if !strings.Contains(path, ".") {
		return nil, false
	}
	var cur any = claims
	for part := range strings.SplitSeq(path, ".") {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = obj[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// claimText renders a claim as a setting value: a string as is, a number or a
// boolean as its JSON text, an object or array as compact JSON, null as "".
func claimText(val any) (string, error) {
	switch x := val.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case json.Number:
		return x.String(), nil
	case bool:
		if x {
			return "true", nil
		}
		return "false", nil
	}
	return compactJSON(val)
}

func compactJSON(val any) (string, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(val); err != nil {
		return "", err
	}
	return strings.TrimSuffix(buf.String(), "\n"), nil
}

func jsonKind(val any) string {
	switch val.(type) {
	case json.Number, float64:
		return "a number"
	case bool:
		return "a boolean"
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case nil:
		return "null"
	}
	return fmt.Sprintf("a %T", val)
}

// quoteEcho quotes attacker-controlled text for an error message, cut short.
func quoteEcho(s string) string {
	if len(s) > maxEchoLen {
		s = s[:maxEchoLen] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// limitMillis reads a limit claim: a number of milliseconds, or a duration
// string ("30s"). 0 means no limit, as in PostgreSQL.
func limitMillis(val any) (int64, error) {
	var ms float64
	switch v := val.(type) {
	case float64:
		ms = v
	case json.Number:
		f, err := v.Float64()
		if err != nil {
			return 0, err
		}
		ms = f
	case string:
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, errors.New("not a duration such as \"30s\"")
		}
		ms = float64(d.Milliseconds())
	default:
		return 0, fmt.Errorf("must be a number of milliseconds or a duration string, not %s", jsonKind(val))
	}
	if ms < 0 || ms > 1<<31-1 || ms != math.Trunc(ms) {
		return 0, errors.New("must be a whole number of milliseconds from 0 to 2147483647")
	}
	return int64(ms), nil
}
