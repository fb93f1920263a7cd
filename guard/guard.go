// Package guard refuses SQL that could change a session's tenant context or
// the identity it rests on. Every statement text a client sends goes through
// Check: a lexical screen proves most statements harmless without parsing;
// everything else is parsed with PostgreSQL's own parser (pg_query_go) and its
// whole tree is inspected, nested statements included.
package guard

import (
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/pgtenant/pgtenant/internal/lexsafe"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// SQLSTATEs of refusals. A refusal looks like PostgreSQL's own
// insufficient_privilege error; an unparsable statement gets the parser's
// syntax_error; what transaction pool mode cannot support gets
// feature_not_supported.
const (
	CodeRefused      = "42501"
	CodeSyntaxError  = "42601"
	CodeNotSupported = "0A000"
)

// Policy says what is protected.
type Policy struct {
	// TenantSetting is the setting pgtenant asserts, e.g. "app.tenant_id".
	// Every setting under its prefix ("app.") is protected too.
	TenantSetting string
	// ExtraSettings are more protected settings (e.g. derived from claims).
	ExtraSettings []string
	// Pooled is set for sessions in transaction pool mode: their upstream
	// connections are shared with other clients one transaction at a time,
	// so statements that leave session-level state behind are refused too.
	Pooled bool
	// ReadOnly is set for read-only sessions: nothing may turn
	// default_transaction_read_only off or start a read-write transaction
	// (readonly.go).
	ReadOnly bool
}

// Verdict is the guard's answer for one message's SQL.
type Verdict struct {
	// Err is non-nil when the SQL must not reach the upstream.
	Err *pgconn.PgError
	// ResetsContext is set for a lone RESET ALL or DISCARD ALL: allowed, but
	// the tenant context must be asserted again before the next statement.
	ResetsContext bool
	// DeallocatesAll is set, by pooled guards only, when an allowed text
	// contains DEALLOCATE ALL or DISCARD ALL: afterwards the upstream
	// connection holds no prepared statements, whoever prepared them.
	DeallocatesAll bool
	// ChangesSettings is set, by pooled guards only, when an allowed text
	// may reset session-level settings (RESET, RESET ALL, DISCARD ALL): the
	// connection's committed settings are then no longer the ones pgtenant
	// applied for its holder.
	ChangesSettings bool
	// Deallocate is the statement a pooled guard's allowed text, a lone
	// DEALLOCATE name, deallocates: the relay names it upstream as it does
	// the client's protocol-level statements.
	Deallocate string
	// Pins is set, by pooled guards only, when an allowed text leaves state
	// on the connection that outlives the transaction (Pin* reasons): the
	// relay keeps the connection for this client until it is gone.
	Pins string
	// CustomSettings are the custom (dotted) names an allowed text sets at
	// session level, by pooled guards only: the server's pg_settings does
	// not list them, so the relay reads them back by name.
	CustomSettings []string
	// Prepare is set, by pooled guards only, for a simple Query that is a
	// lone PREPARE: the relay carries the statement (prepared.go).
	Prepare *Prepare
	// Executes are, by pooled guards only, the names the text's EXECUTE
	// statements run, where they stand: the relay renames the ones it
	// carries.
	Executes []NameAt
	// Channels are the notification channels the text names, where they
	// stand: the relay scopes them to the tenant (channels.go).
	Channels []Channel
	// Listening is set when the text may change which channels the session
	// listens on (LISTEN, UNLISTEN, DISCARD ALL); UnlistensAll when it may
	// end them all (UNLISTEN *, DISCARD ALL).
	Listening, UnlistensAll bool
}

// Guard checks statement texts against a Policy. It is safe for concurrent use.
type Guard struct {
	prefix   string          // lower-case prefix of the tenant setting, with the dot
	settings map[string]bool // lower-case protected setting names
	pooled   bool            // Policy.Pooled
	readOnly bool            // Policy.ReadOnly

	mu    sync.Mutex
	cache map[string]Verdict // verdicts of full checks of prepared statements
}

// cacheLimit bounds the prepared-statement cache; it is cleared when full.
const cacheLimit = 4096

// New builds a guard for p.
func New(p Policy) *Guard {
	g := &Guard{settings: map[string]bool{}, cache: map[string]Verdict{}, pooled: p.Pooled, readOnly: p.ReadOnly}
	name := strings.ToLower(p.TenantSetting)
	g.settings[name] = true
	if i := strings.IndexByte(name, '.'); i >= 0 {
		g.prefix = name[:i+1]
	}
	for _, s := range p.ExtraSettings {
		if s != "" {
			g.settings[strings.ToLower(s)] = true
		}
	}
	// The identity a session rests on.
	for _, s := range []string{"role", "session_authorization", "row_security"} {
		g.settings[s] = true
	}
	if p.ReadOnly {
		for _, s := range readOnlySettings {
			g.settings[s] = true
		}
	}
	return g
}

// CheckQuery checks the text of a simple Query message.
func (g *Guard) CheckQuery(sql []byte) Verdict {
	if screen(sql, g.pooled) && (!g.readOnly || readOnlyScreen(sql)) {
		return Verdict{}
	}
	return g.full(string(sql), true)
}

// CheckParse checks the text of a Parse message. Verdicts are cached by text,
// since drivers prepare the same statements on every connection.
func (g *Guard) CheckParse(sql []byte) Verdict {
	if screen(sql, g.pooled) && (!g.readOnly || readOnlyScreen(sql)) {
		return Verdict{}
	}
	g.mu.Lock()
	v, ok := g.cache[string(sql)]
	g.mu.Unlock()
	if ok {
		return v
	}
	text := string(sql)
	v = g.full(text, false)
	g.mu.Lock()
	if len(g.cache) >= cacheLimit {
		clear(g.cache)
	}
	g.cache[text] = v
	g.mu.Unlock()
	return v
}

// CheckFunctionCall checks a FunctionCall message, which names a function by
// OID and so bypasses any text check: none is relayed. (libpq and JDBC use
// it for large objects, which pgtenant refuses anyway: they have no
// row-level security.)
func (g *Guard) CheckFunctionCall(oid uint32) *pgconn.PgError {
	return refused(fmt.Sprintf("permission denied: pgtenant does not relay FunctionCall messages (function %d)", oid),
		"Call functions from SQL.")
}

func refused(msg, hint string) *pgconn.PgError {
	return &pgconn.PgError{Severity: "ERROR", Code: CodeRefused, Message: msg, Hint: hint}
}

// full parses sql and inspects every node of every statement.
func (g *Guard) full(sql string, simple bool) Verdict {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		msg := err.Error()
		return Verdict{Err: &pgconn.PgError{Severity: "ERROR", Code: CodeSyntaxError, Message: msg,
			Detail: "pgtenant refuses statements it cannot parse."}}
	}
	var v Verdict
	var executes []string
	channelNames, notifyArgs := 0, []int(nil)
	// The first pool-mode refusal is held back until every statement has
	// passed the other checks, so a refusal for security reasons wins.
	var pooledErr *pgconn.PgError
	for i, raw := range tree.Stmts {
		if raw.Stmt == nil {
			continue
		}
		c := checker{g: g}
		walk(raw.Stmt.ProtoReflect(), c.visit)
		if c.err != nil {
			return Verdict{Err: c.err}
		}
		if c.resets {
			// Drivers' reset strings end with it (asyncpg: SELECT
			// pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL).
			if !simple || i != len(tree.Stmts)-1 {
				return Verdict{Err: refused(fmt.Sprintf("permission denied: %s must be the last statement of a simple query through pgtenant", c.resetName),
					"pgtenant re-asserts the tenant context right after it; that is only possible when nothing else runs in between.")}
			}
			v.ResetsContext = true
		}
		if pooledErr == nil {
			pooledErr = c.pooledErr
		}
		executes = append(executes, c.executes...)
		channelNames += c.channelNames
		v.Listening = v.Listening || c.listening
		v.UnlistensAll = v.UnlistensAll || c.unlistensAll
		notifyArgs = append(notifyArgs, c.notifyArgs...)
		if (len(c.notifyArgs) > 0 || c.notifyNames > 0) && !runsNow(raw.Stmt) {
			return Verdict{Err: refused("permission denied: pg_notify may not be stored in the database through pgtenant",
				"Its channel is scoped to the tenant that writes it, not to whoever runs it later: call pg_notify from the statements that notify.")}
		}
		if c.prepare != "" {
			if p, ok := lonePrepare(sql, c.prepare); ok && len(tree.Stmts) == 1 {
				// Carried: PREPARE itself leaves nothing the relay does not
				// follow; running the statement does what its text does.
				p.Pins = c.pins
				v.Prepare = p
				continue
			}
			c.pins = PinPrepared
		}
		v.DeallocatesAll = v.DeallocatesAll || c.deallocatesAll
		v.ChangesSettings = v.ChangesSettings || c.changesSettings
		v.CustomSettings = append(v.CustomSettings, c.customSettings...)
		if v.Pins == "" {
			v.Pins = c.pins
		}
		if c.deallocate != "" {
			if len(tree.Stmts) != 1 && pooledErr == nil {
				pooledErr = &pgconn.PgError{Severity: "ERROR", Code: CodeNotSupported,
					Message: "DEALLOCATE of a single statement must be sent alone in transaction pool mode",
					Hint:    "Send DEALLOCATE name as a statement of its own, or close the statement with a protocol-level Close."}
			}
			v.Deallocate = c.deallocate
		}
	}
	if pooledErr != nil {
		return Verdict{Err: pooledErr}
	}
	if len(executes) > 0 {
		v.Executes = executedNames(sql, executes)
	}
	if channelNames > 0 || len(notifyArgs) > 0 {
		var err *pgconn.PgError
		if v.Channels, err = findChannels(sql, channelNames, notifyArgs); err != nil {
			return Verdict{Err: err}
		}
	}
	return v
}

// walk visits m and, while visit returns true, all messages below it.
func walk(m protoreflect.Message, visit func(protoreflect.Message) bool) {
	if !visit(m) {
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind {
			return true
		}
		if fd.IsList() {
			list := v.List()
			for i := 0; i < list.Len(); i++ {
				walk(list.Get(i).Message(), visit)
			}
			return true
		}
		walk(v.Message(), visit)
		return true
	})
}

type checker struct {
	g         *Guard
	err       *pgconn.PgError
	resets    bool
	resetName string

	// Transaction pool mode (see pooled.go).
	pooledErr       *pgconn.PgError
	deallocatesAll  bool
	changesSettings bool
	customSettings  []string
	deallocate      string
	pins            string
	prepare         string   // the name a PREPARE prepares
	executes        []string // the names EXECUTE statements run

	// Notification channels (channels.go).
	listening     bool               // LISTEN, UNLISTEN or DISCARD ALL
	unlistensAll  bool               // UNLISTEN * or DISCARD ALL
	channelNames  int                // identifiers naming one
	notifyArgs    []int              // pg_notify's first arguments' locations
	notifyNames   int                // names pg_notify (calls or not)
	dropsOnCommit *pg_query.RangeVar // the temporary table an ON COMMIT DROP creates
}

func (c *checker) refuse(msg, hint string) bool {
	if c.err == nil {
		c.err = refused(msg, hint)
	}
	return false
}

const settingHint = "pgtenant sets the tenant context itself; it cannot be changed from SQL."

func (c *checker) visit(m protoreflect.Message) bool {
	if c.err != nil {
		return false
	}
	if c.g.pooled {
		c.visitPooled(m)
	}
	c.visitChannels(m)
	if c.g.readOnly {
		c.visitReadOnly(m)
	}
	switch n := m.Interface().(type) {
	case *pg_query.A_Const:
		// A string constant is data, not a name: 'set_config' is harmless.
		return false
	case *pg_query.String:
		// Names of functions, operators' support functions, columns... A
		// function that sets settings or runs SQL from text is refused
		// wherever its name appears, qualified or not.
		if name := strings.ToLower(n.Sval); isDangerousFunction(name) {
			return c.refuse(fmt.Sprintf("permission denied for function %s", name),
				"pgtenant does not relay calls that change settings or run SQL from text.")
		} else if why := crossTenantFunction(name); why != "" {
			return c.refuse(fmt.Sprintf("permission denied for function %s", name), why)
		}
	case *pg_query.RangeVar:
		if name := strings.ToLower(n.Relname); activityViews[name] {
			return c.refuse(fmt.Sprintf("permission denied for view %s", name), activityHint)
		}
	case *pg_query.VariableSetStmt:
		return c.variableSet(n)
	case *pg_query.DiscardStmt:
		if n.Target == pg_query.DiscardMode_DISCARD_ALL {
			c.resets, c.resetName = true, "DISCARD ALL"
		}
	case *pg_query.DoStmt:
		return c.refuse("permission denied: DO blocks are not allowed through pgtenant", "")
	case *pg_query.TransactionStmt:
		switch n.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE, pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			// A prepared transaction belongs to the role, not the session,
			// and pg_prepared_xacts shows every identifier.
			return c.refuse("permission denied: two-phase commit (PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED) is not allowed through pgtenant",
				"Every tenant's sessions run as the same database role: any of them could commit or roll back another tenant's prepared transaction.")
		}
	case *pg_query.CreateFunctionStmt:
		kind := "FUNCTION"
		if n.IsProcedure {
			kind = "PROCEDURE"
		}
		return c.refuse("permission denied: CREATE "+kind+" is not allowed through pgtenant",
			"Functions can change settings; create them as the schema owner, not through pgtenant.")
	case *pg_query.AlterFunctionStmt:
		return c.refuse("permission denied: ALTER FUNCTION/PROCEDURE is not allowed through pgtenant", "")
	case *pg_query.AlterRoleSetStmt:
		return c.refuse("permission denied: ALTER ROLE ... SET is not allowed through pgtenant", "")
	case *pg_query.AlterDatabaseSetStmt:
		return c.refuse("permission denied: ALTER DATABASE ... SET is not allowed through pgtenant", "")
	case *pg_query.AlterSystemStmt:
		return c.refuse("permission denied: ALTER SYSTEM is not allowed through pgtenant", "")
	case *pg_query.AlterRoleStmt, *pg_query.CreateRoleStmt, *pg_query.DropRoleStmt, *pg_query.GrantRoleStmt:
		return c.refuse("permission denied: role management is not allowed through pgtenant", "")
	case *pg_query.LoadStmt:
		return c.refuse("permission denied: LOAD is not allowed through pgtenant", "")
	case *pg_query.CreateExtensionStmt, *pg_query.AlterExtensionStmt, *pg_query.AlterExtensionContentsStmt:
		return c.refuse("permission denied: extension management is not allowed through pgtenant", "")
	case *pg_query.InsertStmt:
		return c.settingsWrite(n.Relation)
	case *pg_query.UpdateStmt:
		return c.settingsWrite(n.Relation)
	case *pg_query.DeleteStmt:
		return c.settingsWrite(n.Relation)
	case *pg_query.MergeStmt:
		return c.settingsWrite(n.Relation)
	case *pg_query.ViewStmt, *pg_query.RuleStmt:
		// A view or rule over pg_settings is a way to write it later.
		found := false
		walk(m, func(m protoreflect.Message) bool {
			if rv, ok := m.Interface().(*pg_query.RangeVar); ok && strings.EqualFold(rv.Relname, "pg_settings") {
				found = true
			}
			return !found
		})
		if found {
			return c.refuse("permission denied: views and rules over pg_settings are not allowed through pgtenant", "")
		}
	}
	return true
}

func (c *checker) variableSet(n *pg_query.VariableSetStmt) bool {
	if n.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
		c.resets, c.resetName = true, "RESET ALL"
		return true
	}
	name := strings.ToLower(n.Name)
	if n.Kind == pg_query.VariableSetKind_VAR_SET_VALUE && !lexsafe.Safe(name, setValue(n)) {
		return c.refuse(fmt.Sprintf("permission denied to set parameter %q to %q through pgtenant", n.Name, setValue(n)),
			"The statement guard reads SQL with standard_conforming_strings on and an ASCII-safe client encoding; the server must too.")
	}
	if c.g.settings[name] || (c.g.prefix != "" && strings.HasPrefix(name, c.g.prefix)) {
		verb := "set"
		if n.Kind == pg_query.VariableSetKind_VAR_RESET {
			verb = "reset"
		}
		return c.refuse(fmt.Sprintf("permission denied to %s parameter %q", verb, n.Name), settingHint)
	}
	return true
}

// setValue returns the first value of a SET as text ("" when it is not a
// constant, which lexsafe then judges by itself).
func setValue(n *pg_query.VariableSetStmt) string {
	if len(n.Args) == 0 {
		return ""
	}
	ac := n.Args[0].GetAConst()
	if ac == nil {
		return ""
	}
	switch v := ac.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.Sval
	case *pg_query.A_Const_Ival:
		return fmt.Sprint(v.Ival.Ival)
	case *pg_query.A_Const_Boolval:
		if v.Boolval.Boolval {
			return "on"
		}
		return "off"
	}
	return ""
}

func (c *checker) settingsWrite(rv *pg_query.RangeVar) bool {
	if rv != nil && strings.EqualFold(rv.Relname, "pg_settings") {
		return c.refuse("permission denied: writing pg_settings is not allowed through pgtenant", settingHint)
	}
	return true
}

// dangerousFunctions change settings or run SQL given as text, which the
// guard could not inspect.
var dangerousFunctions = map[string]bool{
	"set_config":                 true,
	"query_to_xml":               true,
	"query_to_xml_and_xmlschema": true,
	"query_to_xmlschema":         true,
	"ts_stat":                    true,
	"ts_rewrite":                 true,
}

func isDangerousFunction(name string) bool {
	return dangerousFunctions[name] || strings.HasPrefix(name, "dblink")
}

// crossTenantFunction says why a function reaches across tenants when all
// of them share one database role: large objects have no row-level
// security (every tenant owns every one), and any backend of the role can
// be signalled.
func crossTenantFunction(name string) string {
	switch {
	case strings.HasPrefix(name, "lo_") || name == "loread" || name == "lowrite":
		return "Large objects have no row-level security: through pgtenant every tenant would own every large object. Store the data in a table with a tenant_id column."
	case name == "pg_cancel_backend" || name == "pg_terminate_backend":
		return "Every tenant's sessions run as the same database role; signalling them would reach other tenants' queries."
	case activityViews[name] || strings.HasPrefix(name, "pg_stat_get_backend_") || name == "pg_stat_get_activity":
		return activityHint
	case tableReaders[name]:
		// They read any table named in a string: pg_stat_activity too.
		return "It reads any table or view named in a string, pg_stat_activity included; query the tables themselves."
	}
	return ""
}

// tableReaders read any table or view named in a string (a regclass):
// pg_stat_activity, and in transaction mode the views of the shared
// connection (pg_prepared_statements, pg_cursors).
var tableReaders = map[string]bool{
	"table_to_xml": true, "table_to_xmlschema": true, "table_to_xml_and_xmlschema": true,
	"schema_to_xml": true, "schema_to_xmlschema": true, "schema_to_xml_and_xmlschema": true,
	"database_to_xml": true, "database_to_xmlschema": true, "database_to_xml_and_xmlschema": true,
	"cursor_to_xml": true, "cursor_to_xmlschema": true,
}

// activityViews show other sessions' statements (with their literal
// values), which in one database role means other tenants' (the functions
// behind them: crossTenantFunction).
var activityViews = map[string]bool{
	"pg_stat_activity":        true,
	"pg_stat_statements":      true, // the extension's view and function
	"pg_stat_statements_info": true,
}

const activityHint = "Every tenant's sessions run as the same database role, which sees the others' statements; the operator's view of sessions is pgtenant status or the admin endpoint."
