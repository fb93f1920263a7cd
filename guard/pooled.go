package guard

// Transaction pool mode. A pooled session's upstream connection serves other
// clients, of other tenants, between that session's transactions. Whatever a
// statement leaves on the connection beyond its transaction would leak into,
// or get in the way of, whoever gets the connection next. Session settings
// the relay carries per client; holdable cursors, temporary tables and
// session advisory locks pin the connection to the client (Verdict.Pins)
// until they are gone; SQL prepared statements the relay carries
// (prepared.go); temporary objects named through pg_temp and what can read
// other clients' state off the connection a pooled guard refuses.
//
// These checks only ever add a refusal and never stop the walk: the general
// checks still see every node, and their refusals take precedence (full
// reports c.err before c.pooledErr).

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// cursorOptHold is PostgreSQL's CURSOR_OPT_HOLD (nodes/parsenodes.h), the bit
// DECLARE ... WITH HOLD sets in DeclareCursorStmt.options.
const cursorOptHold = 0x0020

const tempHint = "Create temporary tables with ON COMMIT DROP, or use a session-mode connection."

// sessionAdvisoryLocks are the advisory-lock functions whose locks outlive
// the transaction. The _xact_ forms and the unlock functions are harmless.
var sessionAdvisoryLocks = map[string]bool{
	"pg_advisory_lock":            true,
	"pg_advisory_lock_shared":     true,
	"pg_try_advisory_lock":        true,
	"pg_try_advisory_lock_shared": true,
}

// connectionViews list what is on the shared connection, other clients'
// entries included: the views and the functions behind them.
var connectionViews = map[string]string{
	"pg_prepared_statements": "statements",
	"pg_prepared_statement":  "statements",
	"pg_cursors":             "cursors",
	"pg_cursor":              "cursors",
}

// Reasons a statement pins its client's pooled connection (Verdict.Pins):
// what it leaves on the connection outlives the transaction, so the
// connection stays the client's until that is gone.
const (
	PinCursor       = "WITH HOLD cursor"
	PinTempTable    = "temporary table"
	PinAdvisoryLock = "session advisory lock"
	PinPrepared     = "SQL prepared statement"
)

func (c *checker) pin(reason string) {
	if c.pins == "" {
		c.pins = reason
	}
}

func (c *checker) notSupported(msg, hint string) {
	if c.pooledErr == nil {
		c.pooledErr = &pgconn.PgError{Severity: "ERROR", Code: CodeNotSupported, Message: msg, Hint: hint}
	}
}

func (c *checker) connectionView(name string) {
	if what, ok := connectionViews[name]; ok && c.pooledErr == nil {
		c.pooledErr = refused(fmt.Sprintf("permission denied: %s shows other clients' %s in transaction pool mode", name, what), "")
	}
}

// visitPooled adds the transaction-pool-mode refusals for node m.
func (c *checker) visitPooled(m protoreflect.Message) {
	switch n := m.Interface().(type) {
	case *pg_query.A_Const:
		// Data, not names: SELECT 'pg_temp' is fine.
		return
	case *pg_query.String:
		name := strings.ToLower(n.Sval)
		if sessionAdvisoryLocks[name] {
			c.pin(PinAdvisoryLock)
		}
		// The table_to_xml family, which could read those views by name,
		// is refused in both modes (crossTenantFunction).
		c.connectionView(name)
		if name == "setseed" {
			c.notSupported("setseed is not supported in transaction pool mode",
				"The seed would stay with the shared connection and decide the next client's random() values.")
		}
	case *pg_query.VariableSetStmt:
		c.pooledSet(n)
	case *pg_query.CreateStmt:
		// Its table cannot outlive the transaction.
		if n.Oncommit == pg_query.OnCommitAction_ONCOMMIT_DROP {
			c.dropsOnCommit = n.Relation
		}
	case *pg_query.IntoClause:
		// CREATE TEMP TABLE t ON COMMIT DROP AS SELECT ...
		if n.OnCommit == pg_query.OnCommitAction_ONCOMMIT_DROP {
			c.dropsOnCommit = n.Rel
		}
	case *pg_query.RangeVar:
		c.connectionView(strings.ToLower(n.Relname))
		if n == c.dropsOnCommit {
			break
		}
		if n.Relpersistence == "t" {
			c.pin(PinTempTable)
		}
		if isPgTemp(n.Schemaname) {
			c.notSupported("the pg_temp schema is not supported in transaction pool mode", tempHint)
		}
	case *pg_query.DeclareCursorStmt:
		if n.Options&cursorOptHold != 0 {
			c.pin(PinCursor)
		}
	case *pg_query.PrepareStmt:
		// The statement lives on the connection: carried per client when it
		// is a lone PREPARE in a simple Query, else it pins the connection
		// until deallocated (full decides, prepared.go).
		c.prepare = n.Name
		if strings.HasPrefix(strings.ToLower(n.Name), "pgtenant_") {
			c.pooledErr = refused(fmt.Sprintf("permission denied: prepared statement names starting with pgtenant_ are pgtenant's (%q)", n.Name), "")
		}
	case *pg_query.ExecuteStmt:
		// Client names of protocol-level statements never reach the
		// server, so EXECUTE reaches the client's own SQL-prepared ones,
		// or pgtenant's (its context statements, the protocol statements
		// of whoever holds the connection): those never.
		if strings.HasPrefix(strings.ToLower(n.Name), "pgtenant_") {
			c.pooledErr = refused(fmt.Sprintf("permission denied: prepared statement %q is pgtenant's", n.Name), "")
		}
		c.executes = append(c.executes, n.Name)
	case *pg_query.DeallocateStmt:
		// pg_query 6 marks DEALLOCATE ALL with isall; older trees left the
		// name empty, and a real name cannot be empty.
		// DEALLOCATE name closes a statement the client prepared at
		// protocol level (psycopg 3 evicts from its cache so): the relay
		// sends it under the statement's upstream name.
		if n.Isall || n.Name == "" {
			c.deallocatesAll = true
		} else {
			c.deallocate = n.Name
		}
	case *pg_query.DiscardStmt:
		if n.Target == pg_query.DiscardMode_DISCARD_ALL {
			c.deallocatesAll, c.changesSettings = true, true
		}
	}
	c.pgTempNames(m)
}

// pooledSet follows SETs whose effect outlives the transaction. pgtenant
// carries them as the client's own settings (applied whenever it holds a
// connection, reset before anyone else holds it), so they are allowed, and
// reported as changing settings: the relay then reads the client's settings
// back when the transaction is over.
func (c *checker) pooledSet(n *pg_query.VariableSetStmt) {
	if strings.EqualFold(n.Name, "seed") {
		// Like setseed(): in any form, and RESET ALL leaves it alone.
		c.notSupported("SET seed is not supported in transaction pool mode",
			"The seed would stay with the shared connection and decide the next client's random() values.")
		return
	}
	switch n.Kind {
	case pg_query.VariableSetKind_VAR_RESET, pg_query.VariableSetKind_VAR_RESET_ALL:
		c.changesSettings = true
	case pg_query.VariableSetKind_VAR_SET_VALUE, pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_SET_CURRENT:
		if n.IsLocal {
			break
		}
		if strings.EqualFold(n.Name, "idle_session_timeout") {
			c.notSupported("SET idle_session_timeout is not supported in transaction pool mode",
				"The server would apply it to the shared connection while it sits idle in the pool, not to this client; use pgtenant's limits.idle_timeout.")
			return
		}
		c.changesSettings = true
		if strings.Contains(n.Name, ".") {
			c.customSettings = append(c.customSettings, strings.ToLower(n.Name))
		}
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		// SET TRANSACTION and SET TRANSACTION SNAPSHOT end with the
		// transaction; SET SESSION CHARACTERISTICS sets the session's
		// default_transaction_* (unless LOCAL, which makes it transaction-scoped).
		if n.Name == "SESSION CHARACTERISTICS" && !n.IsLocal {
			c.changesSettings = true
		}
	}
	// With pg_temp first in search_path (or only preceded by schemas that do
	// not exist), CREATE TABLE t creates a temporary table. Where pg_temp
	// stands cannot be judged from the text alone, so any mention is refused.
	if strings.EqualFold(n.Name, "search_path") && searchPathNamesPgTemp(n.Args) {
		c.notSupported("a search_path naming pg_temp is not supported in transaction pool mode",
			"Leave pg_temp out of search_path; create temporary tables with ON COMMIT DROP.")
	}
}

// searchPathNamesPgTemp reports whether a SET search_path value lists a
// temporary schema. The server splits each string on commas, so a single
// string may name several schemas.
func searchPathNamesPgTemp(args []*pg_query.Node) bool {
	for _, a := range args {
		for _, part := range strings.Split(a.GetAConst().GetSval().GetSval(), ",") {
			if isPgTemp(strings.Trim(part, " \t\n\r\f\v\"")) {
				return true
			}
		}
	}
	return false
}

// pgTempNames refuses a qualified name list in pg_temp, [pg_temp, name] or
// [catalog, pg_temp, name]: CREATE DOMAIN pg_temp.d, CREATE TYPE pg_temp.t,
// pg_temp.f(). A list of one element is a plain name, and enum labels are
// data, so neither counts.
func (c *checker) pgTempNames(m protoreflect.Message) {
	_, isEnum := m.Interface().(*pg_query.CreateEnumStmt)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if !fd.IsList() || fd.Kind() != protoreflect.MessageKind || isEnum && fd.Name() == "vals" {
			return true
		}
		list := v.List()
		if list.Len() >= 2 && isPgTempString(list.Get(0)) || list.Len() >= 3 && isPgTempString(list.Get(1)) {
			c.notSupported("the pg_temp schema is not supported in transaction pool mode", tempHint)
			return false
		}
		return true
	})
}

func isPgTempString(v protoreflect.Value) bool {
	n, ok := v.Message().Interface().(*pg_query.Node)
	return ok && isPgTemp(n.GetString_().GetSval())
}

// isPgTemp reports whether a schema name is the session's temporary schema,
// by its alias pg_temp or its real name pg_temp_<n>. Any case is accepted:
// refusing a quoted "PG_TEMP" too is harmless.
func isPgTemp(schema string) bool {
	s := strings.ToLower(schema)
	return s == "pg_temp" || strings.HasPrefix(s, "pg_temp_")
}
