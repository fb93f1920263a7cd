package guard

import (
	"bytes"
	"strconv"
	"strings"
	"unicode"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// SQL prepared statements in transaction pool mode. A lone PREPARE in a
// simple Query is carried by the relay like a protocol-level statement:
// prepared upstream under a name of pgtenant's, prepared again on whichever
// connection the client holds when it runs it. The relay renames the
// statement in the texts that name it (PREPARE, EXECUTE), so the guard
// reports where each name stands. Elsewhere (a Parse, a Query of several
// statements) PREPARE pins the connection.

// NameAt is a prepared statement's name in a text and where it stands.
type NameAt struct {
	Name       string // as PostgreSQL reads it: folded to lower case unless quoted
	Start, End int    // byte offsets of its token
}

// Prepare is a lone PREPARE in a simple Query (Verdict.Prepare).
type Prepare struct {
	NameAt
	// Inner is the text of the statement prepared, without the PREPARE
	// head and parameter types; it starts at byte InnerStart.
	Inner      string
	InnerStart int
	// Pins is what running the statement pins, as the Verdict of its text
	// would say. (What PREPARE takes cannot change settings: no SET, and
	// set_config is refused.)
	Pins string
}

// lonePrepare finds the name and inner statement of the PREPARE that is sql.
func lonePrepare(sql, name string) (*Prepare, bool) {
	toks, ok := scanTokens(sql)
	if !ok {
		return nil, false
	}
	for i := 0; i+1 < len(toks); i++ {
		if toks[i].Token != pg_query.Token_PREPARE {
			continue
		}
		nt := toks[i+1]
		if truncateIdentifier(tokenName(sql, nt)) != name {
			return nil, false
		}
		p := &Prepare{NameAt: NameAt{Name: name, Start: int(nt.Start), End: int(nt.End)}}
		depth := 0
		for j := i + 2; j < len(toks); j++ {
			switch toks[j].Token {
			case pg_query.Token_ASCII_40:
				depth++
			case pg_query.Token_ASCII_41:
				depth--
			case pg_query.Token_AS:
				if depth != 0 {
					continue
				}
				end := len(sql)
				for _, t := range toks[j+1:] {
					if t.Token == pg_query.Token_ASCII_59 {
						end = int(t.Start)
						break
					}
				}
				inner := sql[toks[j].End:end]
				p.Inner = strings.TrimSpace(inner)
				p.InnerStart = int(toks[j].End) + strings.Index(inner, p.Inner)
				return p, p.Inner != ""
			}
		}
		return nil, false
	}
	return nil, false
}

// executedNames finds where the names of the EXECUTE statements in sql
// (names, from its parse tree) stand: the token after the EXECUTE keyword,
// followed by "(", ";", WITH (CREATE TABLE AS EXECUTE) or the end. Other
// EXECUTEs (GRANT EXECUTE, EXECUTE FUNCTION in a trigger) are followed by
// something else.
func executedNames(sql string, names []string) []NameAt {
	toks, ok := scanTokens(sql)
	if !ok {
		return nil
	}
	var out []NameAt
	for i := 0; i+1 < len(toks); i++ {
		if toks[i].Token != pg_query.Token_EXECUTE {
			continue
		}
		nt := toks[i+1]
		if i+2 < len(toks) {
			switch toks[i+2].Token {
			case pg_query.Token_ASCII_40, pg_query.Token_ASCII_59, pg_query.Token_WITH:
			default:
				continue
			}
		}
		name := truncateIdentifier(tokenName(sql, nt))
		for _, n := range names {
			if n == name {
				out = append(out, NameAt{Name: name, Start: int(nt.Start), End: int(nt.End)})
				break
			}
		}
	}
	return out
}

// scanTokens lexes sql, comments left out.
func scanTokens(sql string) ([]*pg_query.ScanToken, bool) {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return nil, false
	}
	toks := res.Tokens[:0:0]
	for _, t := range res.Tokens {
		if t.Token != pg_query.Token_SQL_COMMENT && t.Token != pg_query.Token_C_COMMENT {
			toks = append(toks, t)
		}
	}
	return toks, true
}

// tokenName is the name an identifier or keyword token stands for: quoted,
// its text unquoted; else folded to lower case as PostgreSQL folds ASCII. A
// Unicode-escaped identifier (U&"...") is decoded with the default escape
// character; one followed by UESCAPE is not (it matches nothing).
func tokenName(sql string, t *pg_query.ScanToken) string {
	text := sql[t.Start:t.End]
	if t.Token == pg_query.Token_UIDENT {
		if len(text) < 4 || !strings.EqualFold(text[:2], "u&") || text[2] != '"' || text[len(text)-1] != '"' ||
			strings.Contains(strings.ToUpper(sql[t.End:min(len(sql), int(t.End)+20)]), "UESCAPE") {
			return ""
		}
		return decodeUnicodeEscapes(strings.ReplaceAll(text[3:len(text)-1], `""`, `"`))
	}
	if len(text) >= 2 && text[0] == '"' && text[len(text)-1] == '"' {
		return strings.ReplaceAll(text[1:len(text)-1], `""`, `"`)
	}
	if t.Token != pg_query.Token_IDENT && t.KeywordKind == pg_query.KeywordKind_NO_KEYWORD {
		return ""
	}
	return asciiLower(text)
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// transactionEnds are the statements that end a transaction.
var transactionEnds = map[pg_query.Token]bool{
	pg_query.Token_COMMIT: true, pg_query.Token_END_P: true, pg_query.Token_ABORT_P: true,
	pg_query.Token_ROLLBACK: true, pg_query.Token_PREPARE: true,
}

// Transactions counts the transactions a simple Query may run: one, and
// one more after each statement that ends a transaction with statements
// following it (COMMIT, END, ABORT, ROLLBACK but ROLLBACK TO, PREPARE
// TRANSACTION). A text it cannot lex counts as one.
func Transactions(sql []byte) int {
	if bytes.IndexByte(bytes.TrimRight(sql, "; \t\r\n\f\v"), ';') < 0 {
		return 1 // one statement: not worth lexing (most Queries)
	}
	toks, ok := scanTokens(string(sql))
	if !ok {
		return 1
	}
	n, start := 1, true
	for i, t := range toks {
		isStart := start
		start = t.Token == pg_query.Token_ASCII_59
		if !isStart || !transactionEnds[t.Token] {
			continue
		}
		next := pg_query.Token_ASCII_59
		if i+1 < len(toks) {
			next = toks[i+1].Token
		}
		switch {
		case t.Token == pg_query.Token_ROLLBACK && next == pg_query.Token_TO:
			continue // to a savepoint
		case t.Token == pg_query.Token_PREPARE && next != pg_query.Token_TRANSACTION:
			continue // a prepared statement
		}
		// Anything after it runs in a transaction of its own.
		for _, rest := range toks[i+1:] {
			if rest.Token != pg_query.Token_ASCII_59 {
				n++
				break
			}
		}
	}
	return n
}

// decodeUnicodeEscapes decodes \XXXX, \+XXXXXX and \\ as PostgreSQL does in
// U&"..." with the default escape character; "" when malformed.
func decodeUnicodeEscapes(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		n := 4
		switch {
		case i+1 < len(s) && s[i+1] == '\\':
			b.WriteByte('\\')
			i++
			continue
		case i+1 < len(s) && s[i+1] == '+':
			n = 6
			i++
		}
		if i+1+n > len(s) {
			return ""
		}
		v, err := strconv.ParseUint(s[i+1:i+1+n], 16, 32)
		if err != nil || v == 0 || v > unicode.MaxRune {
			return ""
		}
		b.WriteRune(rune(v))
		i += n
	}
	return b.String()
}
