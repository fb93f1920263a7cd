package audit

import (
	"strings"
	"sync"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgtenant/pgtenant/proxy"
)

// Cache bounds: a text longer than maxCachedText is worked out every time
// (it is rarely repeated, and would make the cache's memory unbounded).
const (
	DefaultCacheEntries = 4096
	maxCachedText       = 8 << 10
)

// unparsed is what the log shows of a statement pg_query cannot parse: no
// text (it may hold anything), only the marker.
var unparsed = &proxy.AuditStatement{}

// describe returns the fingerprint and normalized text of a statement.
// pg_query's Normalize replaces the constants it knows of with $n; what it
// leaves (constants in some utility statements: EXECUTE p(42), COMMENT ...
// IS '...', DEFAULT 99) and comments are masked here from its own lexer, so
// that no literal value reaches the log.
func describe(text string) *proxy.AuditStatement {
	fp, err := pg_query.Fingerprint(text)
	if err != nil {
		return unparsed
	}
	norm, err := pg_query.Normalize(text)
	if err != nil {
		return unparsed
	}
	norm, ok := maskLiterals(norm)
	if !ok {
		return unparsed
	}
	return &proxy.AuditStatement{Fingerprint: fp, Normalized: norm}
}

// maskLiterals replaces every constant left in sql with "?" and drops
// comments. ok is false when sql does not scan.
func maskLiterals(sql string) (string, bool) {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return "", false
	}
	var b strings.Builder
	last := 0
	for _, tok := range res.Tokens {
		var with string
		switch tok.Token {
		case pg_query.Token_SCONST, pg_query.Token_USCONST, pg_query.Token_BCONST, pg_query.Token_XCONST,
			pg_query.Token_ICONST, pg_query.Token_FCONST:
			with = "?"
		case pg_query.Token_SQL_COMMENT, pg_query.Token_C_COMMENT:
			with = ""
		default:
			continue
		}
		if b.Len() == 0 {
			b.Grow(len(sql))
		}
		b.WriteString(sql[last:tok.Start])
		b.WriteString(with)
		last = int(tok.End)
	}
	if last == 0 {
		return sql, true
	}
	b.WriteString(sql[last:])
	return strings.TrimSpace(b.String()), true
}

// cache maps statement texts to what the log shows of them, up to a number
// of entries; past it an arbitrary entry makes room (prepared statements and
// pooled applications repeat a small set of texts, so any bound well above
// that set keeps the hit rate).
type cache struct {
	mu  sync.RWMutex
	m   map[string]*proxy.AuditStatement
	max int
}

func newCache(max int) *cache {
	if max <= 0 {
		max = DefaultCacheEntries
	}
	return &cache{m: make(map[string]*proxy.AuditStatement), max: max}
}

// get returns what the log shows of text, working it out on a miss.
func (c *cache) get(text []byte) *proxy.AuditStatement {
	c.mu.RLock()
	st, ok := c.m[string(text)] // no allocation for the lookup
	c.mu.RUnlock()
	if ok {
		return st
	}
	s := string(text)
	st = describe(s)
	if len(s) > maxCachedText {
		return st
	}
	c.mu.Lock()
	if len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[s] = st
	c.mu.Unlock()
	return st
}
