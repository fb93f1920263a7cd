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
func screen(sql []byte) bool {
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
			if dangerousWord(sql[start:i]) {
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
// databases and the system, extensions, LOAD, rules, pg_settings, and the
// functions that change settings or run SQL from text.
var screenWords = map[string]bool{
	"set": true, "reset": true, "discard": true, "do": true,
	"function": true, "procedure": true, "routine": true,
	"role": true, "user": true, "group": true, "authorization": true,
	"grant": true, "revoke": true,
	"database": true, "system": true, "extension": true, "load": true,
	"rule": true, "pg_settings": true,
	"set_config": true, "query_to_xml": true, "query_to_xml_and_xmlschema": true,
	"query_to_xmlschema": true, "ts_stat": true, "ts_rewrite": true,
}

// longestScreenWord bounds the words worth lowering.
const longestScreenWord = len("query_to_xml_and_xmlschema")

func dangerousWord(w []byte) bool {
	if len(w) >= 6 && lowerEquals(w[:6], "dblink") {
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
