// Package auth authenticates clients with SCRAM-SHA-256 and maps them to tenants.
package auth

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/xdg-go/scram"
)

const (
	verifierPrefix = "SCRAM-SHA-256$"

	// Same defaults as PostgreSQL (SCRAM_DEFAULT_SALT_LEN, scram_iterations).
	defaultSaltLen    = 16
	defaultIterations = 4096

	sha256Len = 32
)

// NewVerifier builds a PostgreSQL-format SCRAM-SHA-256 verifier for password
// with a random salt and 4096 iterations.
func NewVerifier(password string) (string, error) {
	salt := make([]byte, defaultSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("generating salt: %w", err)
	}
	creds, err := storedCredentials(password, salt, defaultIterations)
	if err != nil {
		return "", err
	}
	return formatVerifier(creds), nil
}

// storedCredentials derives the server-side keys for password.
func storedCredentials(password string, salt []byte, iters int) (scram.StoredCredentials, error) {
	client, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		// PostgreSQL falls back to the raw password when SASLprep refuses it, and
		// so do libpq and pgconn; do the same so such passwords still work.
		client, err = scram.SHA256.NewClientUnprepped("", password, "")
		if err != nil {
			return scram.StoredCredentials{}, fmt.Errorf("preparing SCRAM client: %w", err)
		}
	}
	creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: iters})
	if err != nil {
		return scram.StoredCredentials{}, fmt.Errorf("deriving SCRAM keys: %w", err)
	}
	return creds, nil
}

func formatVerifier(c scram.StoredCredentials) string {
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("%s%d:%s$%s:%s", verifierPrefix, c.Iters, enc([]byte(c.Salt)), enc(c.StoredKey), enc(c.ServerKey))
}

// IsVerifier reports whether s looks like a SCRAM-SHA-256 verifier rather than a plaintext password.
func IsVerifier(s string) bool {
	return strings.HasPrefix(s, verifierPrefix)
}

// ParseVerifier parses SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
// Errors never echo the verifier, since it allows offline password guessing.
func ParseVerifier(s string) (scram.StoredCredentials, error) {
	var zero scram.StoredCredentials
	if !IsVerifier(s) {
		return zero, errors.New("SCRAM verifier: must start with \"SCRAM-SHA-256$\"")
	}
	parts := strings.Split(strings.TrimPrefix(s, verifierPrefix), "$")
	if len(parts) != 2 {
		return zero, errors.New("SCRAM verifier: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	}
	iterStr, saltB64, ok := strings.Cut(parts[0], ":")
	if !ok {
		return zero, errors.New("SCRAM verifier: missing \":\" between iterations and salt")
	}
	storedB64, serverB64, ok := strings.Cut(parts[1], ":")
	if !ok {
		return zero, errors.New("SCRAM verifier: missing \":\" between StoredKey and ServerKey")
	}

	// Digits only: Atoi alone would accept a sign.
	if iterStr == "" || strings.Trim(iterStr, "0123456789") != "" {
		return zero, errors.New("SCRAM verifier: iteration count must be a positive decimal number")
	}
	iters, err := strconv.Atoi(iterStr)
	if err != nil || iters < 1 {
		return zero, errors.New("SCRAM verifier: iteration count must be a positive decimal number")
	}
	salt, err := base64.StdEncoding.Strict().DecodeString(saltB64)
	if err != nil || len(salt) == 0 {
		return zero, errors.New("SCRAM verifier: salt must be non-empty base64")
	}
	storedKey, err := decodeKey(storedB64)
	if err != nil {
		return zero, fmt.Errorf("SCRAM verifier: StoredKey %w", err)
	}
	serverKey, err := decodeKey(serverB64)
	if err != nil {
		return zero, fmt.Errorf("SCRAM verifier: ServerKey %w", err)
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  storedKey,
		ServerKey:  serverKey,
	}, nil
}

func decodeKey(s string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, errors.New("is not valid base64")
	}
	if len(b) != sha256Len {
		return nil, fmt.Errorf("must be %d bytes, got %d", sha256Len, len(b))
	}
	return b, nil
}
