package guard

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Read-only sessions (Policy.ReadOnly): pgtenant asserts
// default_transaction_read_only = on with the context, and the guard
// refuses every way a client could make a transaction read-write: SET (any
// scope) or RESET of default_transaction_read_only and
// transaction_read_only (Policy.ReadOnly adds both to the protected
// settings), and READ WRITE as a transaction mode: BEGIN / START
// TRANSACTION READ WRITE, SET TRANSACTION READ WRITE, SET SESSION
// CHARACTERISTICS AS TRANSACTION READ WRITE. PostgreSQL lets any role
// switch a transaction to read-write before its first query, so the
// setting alone would not hold.

// readOnlySettings are protected for read-only sessions.
var readOnlySettings = []string{"default_transaction_read_only", "transaction_read_only"}

const readOnlyHint = "This user is read-only through pgtenant."

// visitReadOnly refuses a READ WRITE transaction mode wherever the parser
// puts one: it is a DefElem transaction_read_only whose value is false.
func (c *checker) visitReadOnly(m protoreflect.Message) {
	d, ok := m.Interface().(*pg_query.DefElem)
	if !ok || d.Defname != "transaction_read_only" {
		return
	}
	if ac := d.Arg.GetAConst(); ac != nil && ac.GetIval() != nil && ac.GetIval().Ival == 1 {
		return // READ ONLY
	}
	c.refuse("permission denied to start a read-write transaction", readOnlyHint)
}

// readOnlyScreen reports whether a read-only guard may skip the parser for
// sql: besides the screen's words, READ WRITE needs "write".
func readOnlyScreen(sql []byte) bool {
	start := -1
	for i := 0; i <= len(sql); i++ {
		if i < len(sql) && isWordByte(sql[i]) {
			if start < 0 {
				start = i
			}
			continue
		}
		if start >= 0 {
			if w := sql[start:i]; len(w) == len("write") && lowerEquals(w, "write") {
				return false
			}
			start = -1
		}
	}
	return true
}
