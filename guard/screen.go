package guard

// screen reports whether sql provably contains nothing the full check could
// refuse, so the parser can be skipped. It must never answer true for a
// statement the full check refuses (a fuzz test holds it to that).
//
// It works on words: maximal runs of ASCII letters, digits and underscores,
// compared in lower case, wherever they appear, in string constants,
// comments and quoted identifiers too. That makes it immune to lexing
// subtleties (standard_conforming_strings, dollar quoting, nested comments):
// any identifier PostgreSQL can read as, say, set_config is bounded by
// characters that are not word characters here either, so it shows up as
// that word. Unicode escapes (U&"...") can spell any name, so U& anywhere
// sends the statement to the parser. False alarms only cost a parse.
//
// pooled adds the words of the transaction-pool-mode refusals (and of
// DEALLOCATE ALL, which the verdict reports), for pooled guards.
func screen(sql []byte, pooled bool) bool {
	start := -1
	for i := 0; i <= len(sql); i++ {
		var c byte
		if i < len(sql) {
			c = sql[i]
		}
		if isWordByte(c) && i < len(sql) {
			if start < 0 {
				start = i
			}
			continue
		}
		if c == '&' && i > 0 && (sql[i-1] == 'u' || sql[i-1] == 'U') {
			return false
		}
		if start >= 0 {
			if w := sql[start:i]; dangerousWord(w) || pooled && pooledWord(w) {
				return false
			}
			start = -1
		}
	}
	return true
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

// screenWords are the words without which no refused construct can be
// written: SET/RESET/DISCARD, DO, function and role DDL, ALTER ... SET on
// databases and the system, extensions, LOAD, rules, pg_settings, two-phase
// commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED), the
// functions that change settings or run SQL from text, and the views and
// functions that show other sessions' statements.
var screenWords = map[string]bool{
	"set": true, "reset": true, "discard": true, "do": true,
	"function": true, "procedure": true, "routine": true,
	"role": true, "user": true, "group": true, "authorization": true,
	"grant": true, "revoke": true,
	"database": true, "system": true, "extension": true, "load": true,
	"rule": true, "pg_settings": true,
	"prepare": true, "prepared": true, // two-phase commit
	"set_config": true, "query_to_xml": true, "query_to_xml_and_xmlschema": true,
	"query_to_xmlschema": true, "ts_stat": true, "ts_rewrite": true,
	"loread": true, "lowrite": true, "pg_cancel_backend": true, "pg_terminate_backend": true,
	// Other sessions' statements, and what reads any table named in a string.
	"pg_stat_activity": true, "pg_stat_get_activity": true, "pg_stat_statements": true, "pg_stat_statements_info": true,
	"table_to_xml": true, "table_to_xmlschema": true, "table_to_xml_and_xmlschema": true,
	"schema_to_xml": true, "schema_to_xmlschema": true, "schema_to_xml_and_xmlschema": true,
	"database_to_xml": true, "database_to_xmlschema": true, "database_to_xml_and_xmlschema": true,
	"cursor_to_xml": true, "cursor_to_xmlschema": true,
	// Notification channels, which the relay scopes to the tenant.
	"listen": true, "unlisten": true, "notify": true, "pg_notify": true,
}

// pooledScreenWords are, for pooled guards, the further words without which
// no construct refused in transaction pool mode can be written: LISTEN,
// TEMP/TEMPORARY, WITH HOLD, PREPARE/EXECUTE/DEALLOCATE, and the views and functions
// listing the connection's statements and cursors (the table_to_xml family,
// which can read them by name, is in screenWords); and the words of
// DEALLOCATE ALL and DISCARD ALL, which set Verdict.DeallocatesAll ("discard"
// is in screenWords too; it is repeated so this set stands on its own).
// Session-level SET needs "set"; names in pg_temp and the advisory-lock
// functions are caught by prefix (pooledWord).
var pooledScreenWords = map[string]bool{
	"listen": true, "temp": true, "temporary": true, "hold": true,
	"prepare": true, "execute": true, "deallocate": true, "discard": true,
	"pg_prepared_statements": true, "pg_prepared_statement": true, "setseed": true,
	"pg_cursors": true, "pg_cursor": true,
}

// longestScreenWord bounds the words worth lowering.
const longestScreenWord = len("database_to_xml_and_xmlschema")

func dangerousWord(w []byte) bool {
	if len(w) >= 6 && lowerEquals(w[:6], "dblink") || len(w) >= 3 && lowerEquals(w[:3], "lo_") ||
		len(w) >= len(backendStatPrefix) && lowerEquals(w[:len(backendStatPrefix)], backendStatPrefix) {
		return true
	}
	if len(w) > longestScreenWord {
		return false
	}
	var buf [longestScreenWord]byte
	for i, c := range w {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return screenWords[string(buf[:len(w)])]
}

// backendStatPrefix starts the functions that show other backends' activity.
const backendStatPrefix = "pg_stat_get_backend_"

// pooledPrefixes are caught whatever follows them: pg_temp and pg_temp_<n>
// (and, harmlessly, longer words starting with pg_temp), and every
// advisory-lock function.
var pooledPrefixes = []string{"pg_temp", "pg_advisory", "pg_try_advisory"}

// longestPooledWord bounds the pooled words worth lowering.
const longestPooledWord = len("pg_prepared_statements")

// pooledInitial holds the lower-case first letters of pooled words and
// prefixes, so most words are dismissed by their first byte.
var pooledInitial = func() (first [256]bool) {
	for w := range pooledScreenWords {
		first[w[0]] = true
	}
	for _, p := range pooledPrefixes {
		first[p[0]] = true
	}
	return first
}()

// pooledWord is dangerousWord for pooledScreenWords, kept apart so that the
// screen of guards not in pool mode does no extra work per word.
func pooledWord(w []byte) bool {
	c := w[0] // the screen passes no empty word
	if c >= 'A' && c <= 'Z' {
		c += 'a' - 'A'
	}
	if !pooledInitial[c] {
		return false
	}
	// Before the length cut: pg_try_advisory_lock_shared is longer than it.
	for _, p := range pooledPrefixes {
		if hasLowerPrefix(w, p) {
			return true
		}
	}
	if len(w) > longestPooledWord {
		return false
	}
	var buf [longestPooledWord]byte
	for i, c := range w {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return pooledScreenWords[string(buf[:len(w)])]
}

func hasLowerPrefix(w []byte, prefix string) bool {
	return len(w) >= len(prefix) && lowerEquals(w[:len(prefix)], prefix)
}

func lowerEquals(w []byte, lower string) bool {
	for i, c := range w {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
