// Package signedctx makes the tenant context unforgeable from SQL, as defence
// in depth behind the guard: pgtenant sets, next to the tenant id, an
// HMAC-SHA256 of it under a key the client never sees, and policies call a
// SECURITY DEFINER function that returns the tenant only when the MAC
// verifies against the key stored in a table the tenant role cannot read.
package signedctx

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
)

// MinKeyLen is the shortest accepted key, in bytes (the HMAC-SHA256 block
// size would be 64; 32 is the hash size and plenty).
const MinKeyLen = 32

// ParseKey decodes a hex-encoded key.
func ParseKey(s string) ([]byte, error) {
	key, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("signing key must be hex-encoded: %w", err)
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("signing key is %d bytes; use at least %d (e.g. `openssl rand -hex 32`)", len(key), MinKeyLen)
	}
	return key, nil
}

// Sign returns the hex HMAC-SHA256 of the tenant id under key, the value
// pgtenant asserts in the signature setting.
func Sign(key []byte, tenant string) string {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(tenant))
	return hex.EncodeToString(mac.Sum(nil))
}

// SQL returns the script an administrator runs once, as the owner of the
// tables, to install the verifying function for role. Policies then use
// (SELECT pgtenant.current_tenant()) instead of current_setting(...)::uuid;
// the sub-select makes PostgreSQL evaluate it once per query, not per row.
func SQL(role string, key []byte, tenantSetting, signatureSetting string) string {
	return fmt.Sprintf(`-- pgtenant signed context: run once as the table owner (or a superuser).
BEGIN;
CREATE SCHEMA IF NOT EXISTS pgtenant;
REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC;
-- pgcrypto provides hmac(); it lives in the pgtenant schema so the function
-- below can pin its search_path.
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA pgtenant;

-- The key: readable by the function's owner only, never by the tenant role.
CREATE TABLE IF NOT EXISTS pgtenant.signing_key (key bytea NOT NULL);
REVOKE ALL ON pgtenant.signing_key FROM PUBLIC;
DELETE FROM pgtenant.signing_key;
INSERT INTO pgtenant.signing_key VALUES (decode('%s', 'hex'));

-- The tenant, only when pgtenant signed it; NULL (no rows) otherwise.
CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS uuid
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tenant text := current_setting(%s, true);
    signature text := current_setting(%s, true);
    k bytea;
BEGIN
    IF coalesce(tenant, '') = '' OR coalesce(signature, '') = '' THEN
        RETURN NULL;
    END IF;
    SELECT key INTO k FROM pgtenant.signing_key;
    IF k IS NULL OR encode(pgtenant.hmac(convert_to(tenant, 'UTF8'), k, 'sha256'), 'hex') <> signature THEN
        RETURN NULL;
    END IF;
    RETURN tenant::uuid;
END
$fn$;
REVOKE ALL ON FUNCTION pgtenant.current_tenant() FROM PUBLIC;
GRANT USAGE ON SCHEMA pgtenant TO %s;
GRANT EXECUTE ON FUNCTION pgtenant.current_tenant() TO %s;
COMMIT;

-- Then, for each table:
--   ALTER POLICY tenant_isolation ON projects
--     USING (tenant_id = (SELECT pgtenant.current_tenant()));
`, hex.EncodeToString(key), quoteLiteral(tenantSetting), quoteLiteral(signatureSetting), quoteIdent(role), quoteIdent(role))
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
