package proxy

import (
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/lexsafe"
)

// forwardableParams are the startup parameters that cannot affect tenant
// isolation or identity. They are forwarded to the upstream as session
// defaults; anything else is refused rather than silently dropped, so that a
// client never believes a setting took effect when it did not.
var forwardableParams = map[string]bool{
	"application_name":                    true,
	"client_encoding":                     true,
	"datestyle":                           true,
	"intervalstyle":                       true,
	"timezone":                            true,
	"extra_float_digits":                  true,
	"search_path":                         true,
	"bytea_output":                        true,
	"client_min_messages":                 true,
	"lc_messages":                         true,
	"lc_monetary":                         true,
	"lc_numeric":                          true,
	"lc_time":                             true,
	"standard_conforming_strings":         true,
	"statement_timeout":                   true,
	"lock_timeout":                        true,
	"idle_in_transaction_session_timeout": true,
	"default_transaction_isolation":       true,
	"default_transaction_read_only":       true,
	"default_transaction_deferrable":      true,
	"work_mem":                            true,
	"jit":                                 true,
	"plan_cache_mode":                     true,
	"geqo":                                true,
	"default_text_search_config":          true,
}

// identityParams can change whose rows a session sees; never from a client.
var identityParams = map[string]bool{
	"role":                  true,
	"session_authorization": true,
	"row_security":          true,
}

// startupPolicy decides which client startup parameters reach the upstream.
type startupPolicy struct {
	tenantSetting string // e.g. app.tenant_id
	tenantPrefix  string // e.g. app.
	// limits are the limit settings pgtenant asserts (statement_timeout...):
	// a client may not set them at startup either.
	limits map[string]bool
}

// protect makes the policy refuse the limit settings names.
func (p startupPolicy) protect(names []string) startupPolicy {
	p.limits = make(map[string]bool, len(names))
	for _, n := range names {
		p.limits[n] = true
	}
	return p
}

func newStartupPolicy(tenantSetting string) startupPolicy {
	prefix := tenantSetting
	if i := strings.IndexByte(tenantSetting, '.'); i >= 0 {
		prefix = tenantSetting[:i+1]
	}
	return startupPolicy{tenantSetting: strings.ToLower(tenantSetting), tenantPrefix: strings.ToLower(prefix)}
}

// upstreamParams returns the parameters to send upstream, or a FATAL 42501
// naming the first parameter the client may not set. user and database are
// handled by the caller; options is expanded into its -c settings.
func (p startupPolicy) upstreamParams(params map[string]string) (map[string]string, *pgconn.PgError) {
	out := make(map[string]string, len(params))
	for name, value := range params {
		// As PostgreSQL: these keys are exact; anything else is a setting.
		switch name {
		case "user", "database":
			continue
		case "options":
			settings, err := splitOptions(value)
			if err != nil {
				return nil, err
			}
			for _, s := range settings {
				if err := p.check(s.name, s.value); err != nil {
					return nil, err
				}
				out[asciiLower(s.name)] = s.value
			}
			continue
		}
		if err := p.check(name, value); err != nil {
			return nil, err
		}
		// Setting names are case-insensitive: one spelling, so that later
		// checks (search_path in transaction mode) see every way to write it.
		out[asciiLower(name)] = value
	}
	return out, nil
}

func (p startupPolicy) check(name, value string) *pgconn.PgError {
	lower := asciiLower(name) // PostgreSQL folds setting names in ASCII only
	if lower == p.tenantSetting || strings.HasPrefix(lower, p.tenantPrefix) || identityParams[lower] {
		return &pgconn.PgError{
			Severity: severityFatal,
			Code:     codeInsufficientPrivilege,
			Message:  `permission denied to set parameter "` + name + `"`,
			Detail:   "pgtenant sets the tenant context and identity itself; a client may not set them at startup.",
		}
	}
	if p.limits[lower] {
		return &pgconn.PgError{
			Severity: severityFatal,
			Code:     codeInsufficientPrivilege,
			Message:  `permission denied to set parameter "` + name + `"`,
			Detail:   "pgtenant asserts this limit for the tenant; a client may not set it.",
		}
	}
	if !lexsafe.Safe(lower, value) {
		return &pgconn.PgError{
			Severity: severityFatal,
			Code:     codeInsufficientPrivilege,
			Message:  `startup parameter "` + name + `" value "` + value + `" is not allowed through pgtenant`,
			Detail:   "pgtenant's statement guard reads SQL as UTF-8-compatible text with standard_conforming_strings on.",
		}
	}
	if !forwardableParams[lower] {
		return &pgconn.PgError{
			Severity: severityFatal,
			Code:     codeInsufficientPrivilege,
			Message:  `startup parameter "` + name + `" is not allowed through pgtenant`,
			Hint:     "Set it with SET after connecting, or ask the operator to allow it.",
		}
	}
	return nil
}

// splitOptions parses the startup "options" parameter the way PostgreSQL's
// pg_split_opts does: whitespace separates arguments, a backslash escapes the
// next character. Only -c name=value, -cname=value and --name=value are
// accepted; other backend switches are refused.
func splitOptions(options string) ([]setting, *pgconn.PgError) {
	var args []string
	var cur strings.Builder
	inArg, escaped := false, false
	for _, r := range options {
		switch {
		case escaped:
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped, inArg = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}

	var out []setting
	for i := 0; i < len(args); i++ {
		arg := args[i]
		var kv string
		switch {
		case arg == "-c":
			if i+1 >= len(args) {
				return nil, optionsError(arg)
			}
			i++
			kv = args[i]
		case strings.HasPrefix(arg, "-c"):
			kv = arg[2:]
		case strings.HasPrefix(arg, "--"):
			kv = arg[2:]
			if eq := strings.IndexByte(kv, '='); eq > 0 {
				// PostgreSQL turns dashes in --name into underscores.
				kv = strings.ReplaceAll(kv[:eq], "-", "_") + kv[eq:]
			}
		default:
			return nil, optionsError(arg)
		}
		eq := strings.IndexByte(kv, '=')
		if eq <= 0 {
			return nil, optionsError(arg)
		}
		out = append(out, setting{name: kv[:eq], value: kv[eq+1:]})
	}
	return out, nil
}

func optionsError(arg string) *pgconn.PgError {
	return &pgconn.PgError{
		Severity: severityFatal,
		Code:     codeInsufficientPrivilege,
		Message:  `startup option "` + arg + `" is not allowed through pgtenant`,
		Hint:     "Only -c name=value settings are accepted in options.",
	}
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
