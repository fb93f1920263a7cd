package proxy

import (
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// The assertion uses a named statement and portal so that it never disturbs
// the client's unnamed statement or a portal the client left open. Both are
// closed explicitly: inside a transaction block a finished portal would
// otherwise live on until the block ends.
const assertName = "pgtenant_assert"

// contextStmtPrefix names the statements a pooled connection keeps prepared
// for its settled holder's context settings (serverConn.settled), one per
// setting: pgtenant_ctx0, pgtenant_ctx1... Client statement names never
// reach the upstream as such (statements.go), so clients cannot touch them.
const contextStmtPrefix = "pgtenant_ctx"

// assertion holds the pre-encoded messages that assert one tenant context, so
// that asserting costs a buffer copy and no allocation.
//
// Each setting is a session-level SET rather than SELECT set_config(..., false):
// the two are equivalent, but SET takes no snapshot, so a client's following
// "SET TRANSACTION ISOLATION LEVEL" (or BEGIN ISOLATION LEVEL) in the same
// transaction still works.
type assertion struct {
	// statements is the assertion as one simple-query string at session
	// level (sessionStatements), for the round trip at session start.
	statements string
	// inline is, per setting, Parse, Bind, Execute, Close, Close without Sync.
	// Sent ahead of a client's messages, it runs in the same implicit
	// transaction: if it fails, the server skips the client's messages up to
	// the next Sync.
	inline []byte
	// standalone is inline plus Sync, for statements that must not run after
	// an unsynced Execute (VACUUM, CREATE DATABASE, ...): those get the
	// assertion as a round trip of its own first.
	standalone []byte
	// replies are the backend message types inline produces, in order:
	// per setting ParseComplete, BindComplete, CommandComplete, CloseComplete x2.
	replies []byte
	// local: some settings are SET LOCAL (context_scope: transaction).
	local bool
}

// newPreparedAssertion asserts settings through statements prepared on the
// connection beforehand (prepare, sent once per connection and context): per
// transaction only Bind, Execute and Close of the portal, which spares the
// server parsing the SET each time.
func newPreparedAssertion(settings []setting) (a assertion, prepare []byte) {
	for i, st := range settings {
		a.local = a.local || st.local
		stmt := contextStmtPrefix + strconv.Itoa(i)
		for _, m := range []pgproto3.FrontendMessage{
			&pgproto3.Close{ObjectType: 'S', Name: stmt},
			&pgproto3.Parse{Name: stmt, Query: setStatement(st)},
		} {
			prepare = mustEncode(prepare, m)
		}
		for _, m := range []pgproto3.FrontendMessage{
			&pgproto3.Bind{DestinationPortal: assertName, PreparedStatement: stmt},
			&pgproto3.Execute{Portal: assertName},
			&pgproto3.Close{ObjectType: 'P', Name: assertName},
		} {
			a.inline = mustEncode(a.inline, m)
		}
		a.replies = append(a.replies, '2', 'C', '3')
	}
	a.statements = sessionStatements(settings)
	return a, prepare
}

// mustEncode appends m, a message built from static parts, to buf.
func mustEncode(buf []byte, m pgproto3.FrontendMessage) []byte {
	buf, err := m.Encode(buf)
	if err != nil {
		panic(err) // static messages; cannot fail
	}
	return buf
}

// setting is one name and value the assertion sets. A local setting
// (context_scope: transaction) is set with SET LOCAL in every transaction,
// and is empty at session level (sessionStatements).
type setting struct {
	name, value string
	local       bool
}

// setStatement is the statement that sets one setting in a transaction.
func setStatement(st setting) string {
	if st.local {
		// Like SET, SET LOCAL takes no snapshot (set_config would, and a
		// client's BEGIN ISOLATION LEVEL behind it would then fail). In an
		// implicit transaction PostgreSQL warns that it "can only be used
		// in transaction blocks" but applies it: the reply side hides the
		// warning (see reply).
		return "SET LOCAL" + sessionSetStatement(st)[len("SET"):]
	}
	return sessionSetStatement(st)
}

// sessionSetStatement is the session-level SET of one setting.
func sessionSetStatement(st setting) string {
	if listSettings[asciiLower(st.name)] {
		// SET search_path TO 'a, b' would name one schema "a, b": a list
		// setting takes its elements one by one.
		if names, ok := splitIdentifierList(st.value); ok {
			for i, n := range names {
				names[i] = `"` + strings.ReplaceAll(n, `"`, `""`) + `"`
			}
			return "SET " + quoteSettingName(st.name) + " TO " + strings.Join(names, ", ")
		}
	}
	return "SET " + quoteSettingName(st.name) + " TO " + quoteLiteral(st.value)
}

// quoteSettingName quotes each part of a custom (dotted) setting name: a
// client's may be named "user.id", whose first part is a reserved word. The
// parser joins the parts with dots again, and setting names are
// case-insensitive. PostgreSQL's own names are plain identifiers.
func quoteSettingName(name string) string {
	if !strings.Contains(name, ".") {
		return name
	}
	parts := strings.Split(name, ".")
	for i, p := range parts {
		parts[i] = `"` + strings.ReplaceAll(p, `"`, `""`) + `"`
	}
	return strings.Join(parts, ".")
}

// listSettings hold lists of identifiers (GUC_LIST_QUOTE in PostgreSQL).
var listSettings = map[string]bool{
	"search_path":               true,
	"temp_tablespaces":          true,
	"local_preload_libraries":   true,
	"session_preload_libraries": true,
}

// splitIdentifierList splits a list setting's value as PostgreSQL's
// SplitIdentifierString does: comma-separated identifiers, double-quoted
// ones with "" for a quote, the others folded to lower case. It reports
// false for an empty list or one the server would reject.
func splitIdentifierList(value string) ([]string, bool) {
	var names []string
	isSpace := func(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' }
	i := 0
	for {
		for i < len(value) && isSpace(value[i]) {
			i++
		}
		var name strings.Builder
		if i < len(value) && value[i] == '"' {
			for i++; ; i++ {
				if i >= len(value) {
					return nil, false // unterminated
				}
				if value[i] == '"' {
					if i+1 < len(value) && value[i+1] == '"' {
						i++
					} else {
						i++
						break
					}
				}
				name.WriteByte(value[i])
			}
		} else {
			for ; i < len(value) && value[i] != ',' && !isSpace(value[i]); i++ {
				name.WriteByte(value[i])
			}
			n := asciiLower(name.String())
			name.Reset()
			name.WriteString(n)
		}
		if name.Len() == 0 {
			return nil, false
		}
		names = append(names, name.String())
		for i < len(value) && isSpace(value[i]) {
			i++
		}
		if i == len(value) {
			return names, true
		}
		if value[i] != ',' {
			return nil, false
		}
		i++
	}
}

// setStatements is settings as one simple-query string, as asserted in a
// transaction: it names a context (poolContext.key) but runs only in
// assertions.
func setStatements(settings []setting) string {
	stmts := make([]string, len(settings))
	for i, st := range settings {
		stmts[i] = setStatement(st)
	}
	return strings.Join(stmts, "; ")
}

// sessionStatements is what a connection commits at session level for
// settings: each local setting emptied, so that between transactions the
// connection holds no tenant (a previous holder's least of all), the
// others set.
func sessionStatements(settings []setting) string {
	stmts := make([]string, len(settings))
	for i, st := range settings {
		if st.local {
			st.value = ""
		}
		stmts[i] = sessionSetStatement(st)
	}
	return strings.Join(stmts, "; ")
}

func newAssertion(settings []setting) assertion {
	var a assertion
	for _, st := range settings {
		a.local = a.local || st.local
		stmt := setStatement(st)
		msgs := []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: assertName, Query: stmt},
			&pgproto3.Bind{DestinationPortal: assertName, PreparedStatement: assertName},
			&pgproto3.Execute{Portal: assertName},
			&pgproto3.Close{ObjectType: 'P', Name: assertName},
			&pgproto3.Close{ObjectType: 'S', Name: assertName},
		}
		for _, m := range msgs {
			var err error
			if a.inline, err = m.Encode(a.inline); err != nil {
				panic(err) // static messages; cannot fail
			}
		}
		a.replies = append(a.replies, '1', '2', 'C', '3', '3')
	}
	a.statements = sessionStatements(settings)
	var err error
	if a.standalone, err = (&pgproto3.Sync{}).Encode(append([]byte(nil), a.inline...)); err != nil {
		panic(err)
	}
	return a
}

// quoteLiteral quotes s as an SQL string literal that reads the same whatever
// standard_conforming_strings is set to (the client can change it).
func quoteLiteral(s string) string {
	escaped := strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return "E'" + strings.ReplaceAll(escaped, `\`, `\\`) + "'"
	}
	return "'" + escaped + "'"
}
