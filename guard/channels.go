package guard

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Notification channels are per tenant. Every tenant's sessions share the
// database role, and PostgreSQL's channels are global to the database: A's
// LISTEN jobs would hear B's NOTIFY jobs. The relay scopes each channel name
// the client writes with a prefix of its tenant's on the way upstream, and
// takes the prefix off the notifications it relays (dropping those of other
// scopes). The guard says where the names stand: the name of a LISTEN,
// UNLISTEN or NOTIFY (an identifier), and the first argument of
// pg_notify() (an expression, prefixed by concatenation).

// Channel is a notification channel name in a statement text.
type Channel struct {
	Start, End int    // byte offsets: the identifier's token, or pg_notify's first argument
	Name       string // the identifier as PostgreSQL reads it; "" for an expression
	Listen     bool   // named by a LISTEN
	Unlisten   bool   // named by an UNLISTEN
}

// Expr reports whether the channel is pg_notify's argument, not an identifier.
func (c Channel) Expr() bool { return c.Name == "" }

// channelStatements are the statements that name a channel after their
// keyword; UNLISTEN * names none.
var channelStatements = map[pg_query.Token]bool{
	pg_query.Token_LISTEN: true, pg_query.Token_UNLISTEN: true, pg_query.Token_NOTIFY: true,
}

// visitChannels notes the channels node m names.
func (c *checker) visitChannels(m protoreflect.Message) {
	switch n := m.Interface().(type) {
	case *pg_query.ListenStmt:
		c.channelNames++
		c.listening = true
	case *pg_query.UnlistenStmt:
		if n.Conditionname != "" {
			c.channelNames++
		}
		c.listening = true
		c.unlistensAll = c.unlistensAll || n.Conditionname == ""
	case *pg_query.DiscardStmt:
		if n.Target == pg_query.DiscardMode_DISCARD_ALL {
			c.listening, c.unlistensAll = true, true
		}
	case *pg_query.NotifyStmt:
		c.channelNames++
	case *pg_query.String:
		// Any mention of the name, the calls' own included: a statement
		// that stores one (CREATE OPERATOR ... (function = pg_notify), an
		// aggregate, a cast) would call it later, unscoped (full).
		if n.Sval == "pg_notify" {
			c.notifyNames++
		}
	case *pg_query.FuncCall:
		if !isPgNotify(n.Funcname) {
			return
		}
		if len(n.Args) != 2 || n.Args[0].GetNamedArgExpr() != nil || n.AggStar || n.FuncVariadic {
			// Not a call PostgreSQL runs (pg_notify takes two text
			// arguments, unnamed): nothing to scope, and nothing to guess.
			c.refuse("pgtenant cannot scope this pg_notify call to the tenant", "Call pg_notify(channel, payload) with two plain arguments.")
			return
		}
		c.notifyArgs = append(c.notifyArgs, int(n.Location))
	}
}

// isPgNotify reports whether a function name is pg_notify: unqualified, in
// pg_catalog, or as database.pg_catalog.pg_notify (PostgreSQL accepts a
// database name in front when it is the current database, and refuses any
// other: either way the call is scoped, never relayed unscoped).
func isPgNotify(names []*pg_query.Node) bool {
	switch len(names) {
	case 1:
		return names[0].GetString_().GetSval() == "pg_notify"
	case 2, 3:
		n := len(names)
		return names[n-2].GetString_().GetSval() == "pg_catalog" && names[n-1].GetString_().GetSval() == "pg_notify"
	}
	return false
}

// runsNow reports whether a statement runs its expressions now, rather than
// storing them in the database (a view, a default, a constraint) where they
// would later run for whichever tenant reads them, in the writer's scope.
// EXPLAIN is what it runs (EXPLAIN ANALYZE CREATE MATERIALIZED VIEW creates
// one).
func runsNow(stmt *pg_query.Node) bool {
	switch n := stmt.Node.(type) {
	case *pg_query.Node_ExplainStmt:
		return n.ExplainStmt.Query != nil && runsNow(n.ExplainStmt.Query)
	case *pg_query.Node_SelectStmt, *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt,
		*pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt,
		*pg_query.Node_PrepareStmt, *pg_query.Node_DeclareCursorStmt, *pg_query.Node_CopyStmt:
		return true
	case *pg_query.Node_CreateTableAsStmt:
		// A materialized view runs its query again on every REFRESH.
		return n.CreateTableAsStmt.Objtype != pg_query.ObjectType_OBJECT_MATVIEW
	}
	return false
}

// findChannels locates the channels of sql: names counts the identifiers
// the parse tree has, notifyCalls where the pg_notify calls start. A name
// that cannot be placed is refused: unscoped, it would reach other tenants.
func findChannels(sql string, names int, notifyCalls []int) ([]Channel, *pgconn.PgError) {
	toks, ok := scanTokens(sql)
	if !ok {
		return nil, refused("permission denied: pgtenant cannot scope this statement's notification channels", "")
	}
	var out []Channel
	start := true // the token starts a statement
	for i, t := range toks {
		isStart := start
		start = t.Token == pg_query.Token_ASCII_59
		if !isStart || !channelStatements[t.Token] || i+1 >= len(toks) || toks[i+1].Token == pg_query.Token_ASCII_42 {
			continue
		}
		nt := toks[i+1]
		name := tokenName(sql, nt)
		if name == "" {
			return nil, refused("permission denied: pgtenant cannot scope this notification channel name", "Write channel names as plain or double-quoted identifiers.")
		}
		out = append(out, Channel{Start: int(nt.Start), End: int(nt.End), Name: truncateIdentifier(name), Listen: t.Token == pg_query.Token_LISTEN, Unlisten: t.Token == pg_query.Token_UNLISTEN})
	}
	if len(out) != names {
		return nil, refused("permission denied: pgtenant cannot scope this statement's notification channels", "")
	}
	for _, loc := range notifyCalls {
		start, end, ok := firstArgument(toks, loc)
		if !ok {
			return nil, refused("permission denied: pgtenant cannot scope this pg_notify call to the tenant", "")
		}
		out = append(out, Channel{Start: start, End: end})
	}
	return out, nil
}

// firstArgument finds the first argument of the function call whose name
// starts at byte call: from the token after the call's "(" to the first
// comma outside parentheses and brackets.
func firstArgument(toks []*pg_query.ScanToken, call int) (start, end int, ok bool) {
	i := 0
	for i < len(toks) && int(toks[i].Start) < call {
		i++
	}
	for i < len(toks) && toks[i].Token != pg_query.Token_ASCII_40 {
		i++
	}
	if i+1 >= len(toks) {
		return 0, 0, false
	}
	start = int(toks[i+1].Start)
	depth := 0
	for _, t := range toks[i+1:] {
		switch t.Token {
		case pg_query.Token_ASCII_40, pg_query.Token_ASCII_91:
			depth++
		case pg_query.Token_ASCII_41, pg_query.Token_ASCII_93:
			depth--
			if depth < 0 {
				return 0, 0, false
			}
		case pg_query.Token_ASCII_44:
			if depth == 0 {
				return start, int(t.Start), true
			}
		}
	}
	return 0, 0, false
}

// truncateIdentifier cuts a name to PostgreSQL's 63 bytes, at a character
// boundary, as its lexer does (with a notice) before a LISTEN sees it.
func truncateIdentifier(name string) string {
	const maxIdentifier = 63
	if len(name) <= maxIdentifier {
		return name
	}
	n := maxIdentifier
	for n > 0 && name[n]&0xC0 == 0x80 {
		n--
	}
	return name[:n]
}

// ChannelTooLong is the error for a channel name that does not fit
// PostgreSQL's 63 bytes with the tenant's prefix.
func ChannelTooLong(name string, max int) *pgconn.PgError {
	return &pgconn.PgError{Severity: "ERROR", Code: "22023",
		Message: fmt.Sprintf("channel name %q is too long through pgtenant", name),
		Detail:  fmt.Sprintf("pgtenant scopes channel names to the tenant; they may be at most %d bytes.", max),
		Hint:    "Use a shorter channel name."}
}
