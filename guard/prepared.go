package guard

import (
	"strings"

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
		if tokenName(sql, nt) != name {
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
		name := tokenName(sql, nt)
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
// Unicode-escaped identifier (U&"...") is not decoded: it matches nothing.
func tokenName(sql string, t *pg_query.ScanToken) string {
	text := sql[t.Start:t.End]
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
