package proxy

// This file holds the lexical screens the relay uses to choose how to assert
// the tenant ahead of a statement. They are not a security check (that is the
// guard's job): a wrong answer costs a round trip or a refused VACUUM, never
// the tenant context (with context_scope: transaction, a statement asserted
// in a round trip of its own runs with no context: refused, fail closed).

// pipelineSafeKeywords start statements that behave the same after an
// unsynced Execute as on their own. Statements outside this list (VACUUM,
// CREATE DATABASE, CREATE INDEX CONCURRENTLY, CALL with COMMIT inside, ...)
// refuse to run "within a pipeline", so they get a standalone assertion.
var pipelineSafeKeywords = map[string]bool{
	"select": true, "insert": true, "update": true, "delete": true,
	"with": true, "values": true, "table": true, "merge": true,
	"begin": true, "start": true, "show": true, "explain": true,
	"copy": true, "prepare": true, "execute": true, "deallocate": true,
	"listen": true, "notify": true, "unlisten": true,
	"fetch": true, "move": true, "close": true,
}

// localSafeKeywords start more statements that run after an unsynced
// Execute, asserted inline when the context is transaction-scoped: a
// standalone assertion would not reach their transaction, and they (a DO
// block, "SET ...; SELECT ...") may read the tenant's rows.
var localSafeKeywords = map[string]bool{"set": true, "reset": true, "do": true}

// pipelineSafe reports whether the statement text may follow the inline
// assertion; local, the assertion is transaction-scoped. An unknown or
// unreadable start answers false.
func pipelineSafe(text []byte, local bool) bool {
	i := skipSpaceAndComments(text, 0)
	if i == len(text) || text[i] == '(' || text[i] == ';' {
		return true // empty, or a parenthesised SELECT
	}
	var buf [keywordMax]byte
	word, _ := keyword(text, i, &buf)
	// No allocation: the compiler looks up without converting.
	return pipelineSafeKeywords[string(word)] || local && localSafeKeywords[string(word)]
}

// isTransactionEnd reports whether text is exactly one statement that ends or
// rewinds a transaction block (COMMIT, ROLLBACK, ROLLBACK TO SAVEPOINT,
// RELEASE, ...). Such a statement reads no rows and runs no user code, so when
// a pipelining client sends it the relay need not assert ahead of it; asserting
// would fail if the block had already failed and turn the ROLLBACK into an error.
// AND CHAIN and PREPARED forms are excluded.
func isTransactionEnd(text []byte) bool {
	var buf [keywordMax]byte
	// The first word decides for nearly every statement, with no allocation
	// (every Parse is asked: trackStatements).
	first, _ := keyword(text, skipSpaceAndComments(text, 0), &buf)
	switch string(first) {
	case "commit", "end", "abort", "rollback", "release":
	default:
		return false
	}
	var words []string
	i := 0
	for {
		i = skipSpaceAndComments(text, i)
		if i >= len(text) {
			break
		}
		if text[i] == ';' {
			i++
			if skipSpaceAndComments(text, i) != len(text) {
				return false
			}
			break
		}
		kw, next := keyword(text, i, &buf)
		word := string(kw)
		if word == "" {
			ident, n := quotedIdent(text, i)
			if n == i {
				return false
			}
			word, next = ident, n
		}
		words = append(words, word)
		i = next
		if len(words) > 5 {
			return false
		}
	}
	if len(words) == 0 {
		return false
	}
	optional := func(k int, w ...string) int {
		if k < len(words) {
			for _, x := range w {
				if words[k] == x {
					return k + 1
				}
			}
		}
		return k
	}
	switch words[0] {
	case "commit", "end", "abort":
		return optional(1, "work", "transaction") == len(words)
	case "rollback":
		k := optional(1, "work", "transaction")
		if k == len(words) {
			return true
		}
		if words[k] != "to" {
			return false
		}
		k = optional(k+1, "savepoint")
		return k == len(words)-1
	case "release":
		k := optional(1, "savepoint")
		return k == len(words)-1
	}
	return false
}

// skipSpaceAndComments returns the index of the first byte at or after i that
// is not whitespace or inside a comment. Block comments nest, as in PostgreSQL.
func skipSpaceAndComments(s []byte, i int) int {
	for i < len(s) {
		switch c := s[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			depth := 0
			for i < len(s) {
				if s[i] == '/' && i+1 < len(s) && s[i+1] == '*' {
					depth++
					i += 2
				} else if s[i] == '*' && i+1 < len(s) && s[i+1] == '/' {
					depth--
					i += 2
					if depth == 0 {
						break
					}
				} else {
					i++
				}
			}
			if depth != 0 {
				return len(s)
			}
		default:
			return i
		}
	}
	return i
}

// keywordMax is longer than any keyword the screens look for.
const keywordMax = 24

// keyword reads an unquoted identifier at i into buf, lower-cased, and
// returns it, or nothing when none starts there or it is too long to be a
// keyword. Keywords are ASCII, so a non-ASCII start gives nothing.
func keyword(s []byte, i int, buf *[keywordMax]byte) ([]byte, int) {
	start := i
	n := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		case c >= 'a' && c <= 'z', c == '_':
		case (c >= '0' && c <= '9' || c == '$') && i > start:
		default:
			goto done
		}
		if n == len(buf) {
			return nil, start // longer than any keyword we look for
		}
		buf[n] = c
		n++
		i++
	}
done:
	return buf[:n], i
}

// quotedIdent reads a double-quoted identifier without embedded quotes.
func quotedIdent(s []byte, i int) (string, int) {
	if i >= len(s) || s[i] != '"' {
		return "", i
	}
	for j := i + 1; j < len(s); j++ {
		if s[j] == '"' {
			if j+1 < len(s) && s[j+1] == '"' {
				return "", i
			}
			return string(s[i+1 : j]), j + 1
		}
	}
	return "", i
}
