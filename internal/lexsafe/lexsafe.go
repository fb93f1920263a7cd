// Package lexsafe says which session settings keep PostgreSQL's lexer in
// agreement with the guard's parser (pg_query, which reads UTF-8 with
// standard_conforming_strings on). With standard_conforming_strings off, or
// a client encoding whose multibyte characters can end in an ASCII
// backslash or quote (SJIS, BIG5, GBK, ...), the server and the guard would
// split the same bytes into different tokens, and SQL the guard sees inside a
// string literal could run.
package lexsafe

import "strings"

// unsafeEncodings are PostgreSQL's client-only encodings, and their aliases:
// their second bytes include ASCII, so a trailing byte can be a backslash or
// a quote. Every other encoding PostgreSQL supports is ASCII-safe.
var unsafeEncodings = map[string]bool{
	"sjis": true, "shiftjis": true, "mskanji": true, "win932": true, "windows932": true, "shiftjis2004": true,
	"big5": true, "win950": true, "windows950": true,
	"gbk": true, "win936": true, "windows936": true, "cp936": true,
	"gb18030": true,
	"uhc":     true, "win949": true, "windows949": true, "cp949": true,
	"johab": true,
}

// EncodingSafe reports whether a client_encoding value is safe.
func EncodingSafe(name string) bool {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	return !unsafeEncodings[b.String()]
}

// StandardStringsSafe reports whether a standard_conforming_strings value
// keeps backslashes literal in ordinary string constants.
func StandardStringsSafe(value string) bool {
	switch strings.ToLower(strings.TrimSpace(value)) {
	case "on", "true", "yes", "1", "t", "y", "tr", "tru", "ye":
		return true
	}
	return false
}

// Safe reports whether setting name may be given value. Settings other than
// the two that change lexing are always safe here.
func Safe(name, value string) bool {
	switch strings.ToLower(name) {
	case "client_encoding":
		return EncodingSafe(value)
	case "standard_conforming_strings":
		return StandardStringsSafe(value)
	case "backslash_quote":
		return false
	}
	return true
}
