package proxy

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/lexsafe"
)

// Session settings in transaction mode. A client's SET, RESET, SET TIME
// ZONE, SET SESSION CHARACTERISTICS... run on the pooled connection it holds,
// as in PostgreSQL, and become part of the client's own settings, like its
// startup parameters: asserted whenever it holds a connection, reset before
// anyone else holds it.
//
// Which settings the client ends up with is PostgreSQL's to say, not the
// relay's to guess (a SET in a block that rolls back, in a savepoint, a
// RESET): after a unit that may have changed them, the relay reads them
// back on the same connection, with a statement of its own behind the
// client's (hidden replies). Read outside a transaction block, the values
// are what the client committed; inside one, the next unit reads again. The
// request side takes the answer before it starts the next unit, so the
// next transaction is asserted with the new settings.
//
// Until its settings are read back, the connection is marked changedKey:
// it is reset before anyone holds it next, even a client with the same
// settings.

// carrying returns the relay's carryState, making it at the first change
// to carry (request side).
func (r *relay) carrying() *carryState {
	if r.carry == nil {
		r.carry = new(carryState)
	}
	return r.carry
}

// carryTouched says the client's settings are to be read back.
func (r *relay) carryTouched() bool { return r.carry != nil && r.carry.touched }

// carryState is the relay's record of its client's settings changes.
type carryState struct {
	// Request side.
	touched bool     // a unit that may change settings was sent; read back after every unit until one finds the client idle
	due     bool     // the unit just relayed ends: read back behind it
	sent    bool     // a readback is outstanding: take its answer before the next unit
	custom  []string // custom (dotted) names the client has set, which pg_settings does not list
	msgs    []byte   // the readback messages for custom
	pinMsgs []byte   // the same, counting what keeps the connection pinned
	// prepares are the client's PREPAREs whose parameter types are to be
	// read back (sqlprepared.go); asked, those the readback outstanding asks for.
	prepares      []*clientStmt
	asked         int
	askedChannels bool // the readback outstanding lists channels

	// Reply side while it reads a readback's rows.
	rows    []setting
	failed  bool
	pinLeft string // the pin state count read back ("" if not asked)
	stmts   []stmtTypes
	chans   []string

	// Handed from the reply side to the request side: answered is set last.
	answered atomic.Bool
	next     *poolContext // the context of the client's new settings, nil if unchanged (leaseMu)
	idle     bool         // the readback ran outside a transaction block (leaseMu)
	found    []stmtTypes  // the PREPAREs it found, when idle (leaseMu)
	channels []string     // the channels it listed, when idle (leaseMu)
}

// readbackName names the readback's statement and portal upstream.
const readbackName = "pgtenant_readback"

// readbackSQL lists the settings set at session level on the connection:
// those pg_settings knows, and the custom names given (which it does not).
// Every name is qualified: the client's search_path may put a schema of
// its own, with a pg_settings table or an = operator, before pg_catalog.
func readbackSQL(custom []string, pinned bool) string {
	sql := "SELECT pg_catalog.lower(name), pg_catalog.current_setting(name) FROM pg_catalog.pg_settings" +
		" WHERE source OPERATOR(pg_catalog.=) 'session'"
	if pinned {
		sql += pinStateSQL
	}
	if len(custom) == 0 {
		return sql
	}
	quoted := make([]string, len(custom))
	for i, name := range custom {
		quoted[i] = quoteLiteral(name)
	}
	return sql + " UNION ALL SELECT n, v FROM (SELECT n, pg_catalog.current_setting(n, true) AS v" +
		" FROM pg_catalog.unnest(ARRAY[" + strings.Join(quoted, ", ") + "]::pg_catalog.text[]) AS n) AS c" +
		" WHERE v OPERATOR(pg_catalog.<>) ''"
}

// readbackMessages is the readback as extended-protocol messages: a Query
// would drop the client's unnamed statement.
func readbackMessages(custom []string, pinned bool, stmts string) []byte {
	return readbackMessagesWith(custom, pinned, stmts, false)
}

// readbackMessagesWith is readbackMessages, listing the connection's
// channels, then unlistening them, when channels (listening.go).
func readbackMessagesWith(custom []string, pinned bool, stmts string, channels bool) []byte {
	if channels {
		stmts += readbackChannelsSQL
	}
	var buf []byte
	for _, m := range []pgproto3.FrontendMessage{
		// Whatever an earlier readback that failed left under the names.
		&pgproto3.Close{ObjectType: 'P', Name: readbackName},
		&pgproto3.Close{ObjectType: 'S', Name: readbackName},
		&pgproto3.Parse{Name: readbackName, Query: readbackSQL(custom, pinned) + stmts},
		&pgproto3.Bind{DestinationPortal: readbackName, PreparedStatement: readbackName},
		&pgproto3.Execute{Portal: readbackName},
		&pgproto3.Close{ObjectType: 'P', Name: readbackName},
		&pgproto3.Close{ObjectType: 'S', Name: readbackName},
	} {
		buf = mustEncode(buf, m)
	}
	if channels {
		buf = append(buf, unlistenMessages...)
	}
	return mustEncode(buf, &pgproto3.Sync{})
}

var plainReadback = readbackMessages(nil, false, "")

// maxCustomSettings bounds the custom names read back per client.
const maxCustomSettings = 64

// noteSettingsChange follows a message sent on the held connection that may
// change the client's session settings.
func (r *relay) noteSettingsChange() {
	r.sc.settled = ""
	r.sc.dirtyKey = changedKey
	r.carrying().touched = true
}

// noteCustomSettings records the custom names a statement the client sent
// sets: the readback asks for them by name. Past maxCustomSettings the
// statement is refused: a setting not read back could not be reset for
// the next client with the same settings.
func (r *relay) noteCustomSettings(custom []string) *pgconn.PgError {
	for _, name := range custom {
		c := r.carrying()
		if slices.Contains(c.custom, name) {
			continue
		}
		if len(c.custom) >= maxCustomSettings {
			return &pgconn.PgError{Severity: severityError, Code: codeProgramLimitExceeded,
				Message: "pgtenant carries at most " + strconv.Itoa(maxCustomSettings) + " custom settings per session in transaction pool mode",
				Hint:    "Use fewer distinct custom setting names, or pool_mode: session for this client."}
		}
		c.custom = append(c.custom, name)
		c.msgs, c.pinMsgs = nil, nil
	}
	return nil
}

// holdForReadback keeps the lease on the held connection past its next idle
// ReadyForQuery, until the client's settings are read back there.
func (r *relay) holdForReadback() {
	r.leaseMu.Lock()
	r.holdLease = true
	r.leaseMu.Unlock()
}

// readBack reads the client's settings back on the held connection once
// everything it sent is answered and it is outside a transaction block:
// then the values are final, and the readback cannot fail the client's
// transaction. Not while the server waits for the client (COPY FROM STDIN,
// a group without a Sync yet) or inside a block: a later unit's end, or
// the moment the client goes quiet, reads back instead (and until then the
// connection stays marked changed, and the lease held).
func (r *relay) readBack() error {
	if r.carry == nil || r.carry.sent {
		return nil
	}
	// Between messages the request side may have no writer: take the held
	// connection's again (the hold keeps it this client's).
	r.leaseMu.Lock()
	held := r.sc != nil
	if held && !r.writing {
		r.takeWriterLocked()
	}
	r.leaseMu.Unlock()
	if !held {
		return nil
	}
	if err := r.await(untilAnswered); err != nil {
		return err
	}
	if r.ledger.pending.Load() > 0 || byte(r.txStatus.Load()) != 'I' || r.ledger.skipsNext() {
		// Not final yet; or the server skips up to a Sync the client has
		// not sent (an error in its group): a Sync of pgtenant's would end
		// that early.
		return nil
	}
	msgs := plainReadback
	switch {
	case len(r.carry.prepares) > 0 || r.listen.tracking:
		msgs = readbackMessagesWith(r.carry.custom, r.pinned.Load(), readbackStmtsSQL(r.carry.prepares), r.listen.tracking)
	case r.pinned.Load():
		if r.carry.pinMsgs == nil {
			r.carry.pinMsgs = readbackMessages(r.carry.custom, true, "")
		}
		msgs = r.carry.pinMsgs
	case len(r.carry.custom) > 0:
		if r.carry.msgs == nil {
			r.carry.msgs = readbackMessages(r.carry.custom, false, "")
		}
		msgs = r.carry.msgs
	}
	if err := r.beginUnit(); err != nil {
		return err
	}
	r.carry.sent = true
	r.carry.asked = len(r.carry.prepares)
	r.carry.askedChannels = r.listen.tracking
	return r.sendMsgs(msgs, fromReadback)
}

// takeReadback waits for the readback outstanding, if any, and takes the
// client's settings from it: the next unit is asserted with them.
func (r *relay) takeReadback() error {
	c := r.carry
	if c == nil || !c.sent {
		return nil
	}
	if err := r.await(untilReadback); err != nil {
		return err
	}
	c.sent = false
	c.answered.Store(false)
	r.leaseMu.Lock()
	next, idle, pinned, found, channels := c.next, c.idle, r.pin != "", c.found, c.channels
	c.next, c.found, c.channels = nil, nil, nil
	r.leaseMu.Unlock()
	if idle && c.asked > 0 {
		r.resolvePrepares(found)
	}
	if idle && c.askedChannels {
		c.askedChannels = false
		if err := r.takeChannels(channels); err != nil {
			return err
		}
	}
	if idle && !pinned && !r.listen.tracking {
		c.touched = false
	}
	if next != nil {
		r.pool.dropContext(r.pctx.key)
		r.pctx, r.assertion = next, &next.assertion
	}
	return nil
}

// readbackRow takes one row of a readback, msg (reply side).
func (r *relay) readbackRow(msg []byte) {
	switch name, value, ok := twoTextColumns(msg[5:]); {
	case ok && name == "":
		r.carry.pinLeft = value
	case ok && strings.HasPrefix(name, readbackChanTag):
		r.carry.chans = append(r.carry.chans, name[len(readbackChanTag):])
	case ok && strings.HasPrefix(name, readbackStmtTag):
		r.carry.stmts = append(r.carry.stmts, stmtTypes{server: name[len(readbackStmtTag):], oids: value})
	case ok:
		r.carry.rows = append(r.carry.rows, setting{name: name, value: value})
	}
}

// twoTextColumns decodes a DataRow body of two non-null columns.
func twoTextColumns(body []byte) (string, string, bool) {
	if len(body) < 2 || binary.BigEndian.Uint16(body) != 2 {
		return "", "", false
	}
	body = body[2:]
	var cols [2]string
	for i := range cols {
		if len(body) < 4 {
			return "", "", false
		}
		n := int32(binary.BigEndian.Uint32(body))
		body = body[4:]
		if n < 0 || int(n) > len(body) {
			return "", "", false
		}
		cols[i], body = string(body[:n]), body[n:]
	}
	return cols[0], cols[1], true
}

// readbackAnswered ends a readback at its ReadyForQuery (reply side,
// leaseMu held, the connection still this client's).
func (r *relay) readbackAnswered(status byte) {
	c := r.carry
	defer func() {
		c.rows, c.failed, c.pinLeft, c.stmts, c.chans = c.rows[:0], false, "", nil, nil
		c.answered.Store(true)
	}()
	c.idle = status == 'I' && !c.failed
	if status == 'I' {
		r.holdLease = false // read back, or failed to: the lease may end
	}
	if !c.idle {
		return // failed (the connection stays marked changed)
	}
	if c.pinLeft == "0" {
		r.unpinLocked() // nothing left that needs this connection
	}
	c.found, c.channels = c.stmts, c.chans
	settings, own := r.settingsFrom(c.rows)
	key := setStatements(settings)
	// What the client committed is now exactly the connection's.
	r.rsc.dirtyKey = key
	if key == r.pctx.key {
		return
	}
	if c.next != nil {
		r.pool.dropContext(c.next.key)
	}
	c.next = r.pool.takeContext(settings, own)
}

// settingsFrom is the client's settings after a readback: its startup
// parameters, overridden by the session-level values read back, in name
// order, then the tenant context. A startup parameter the client RESET is
// not among the values read back: it is back to its startup value, as in
// PostgreSQL. own counts the client's own settings.
func (r *relay) settingsFrom(rows []setting) (settings []setting, own int) {
	settings = make([]setting, 0, len(r.startup)+len(rows)+len(r.context))
	settings = append(settings, r.startup...)
	for _, row := range rows {
		// The guard lets no client set a value its lexing cannot follow
		// (standard_conforming_strings off, an unsafe client_encoding);
		// the assertion must not set one either.
		if !r.carries(row.name) || !lexsafe.Safe(row.name, row.value) {
			continue
		}
		if i := slices.IndexFunc(settings, func(s setting) bool { return s.name == row.name }); i >= 0 {
			settings[i].value = row.value
		} else {
			settings = append(settings, row)
		}
	}
	slices.SortFunc(settings, func(a, b setting) int { return strings.Compare(a.name, b.name) })
	own = len(settings)
	return append(settings, r.context...), own
}

// carries reports whether a setting read back is the client's own to
// carry: not the tenant context or the identity, which pgtenant asserts.
func (r *relay) carries(name string) bool {
	if identityParams[name] || r.carryRules.isProtected(name) {
		return false
	}
	for _, st := range r.context {
		if strings.EqualFold(st.name, name) {
			return false
		}
	}
	return true
}

// carryRules are the names no client's settings may carry, shared by the
// sessions of a runtime.
type carryRules struct {
	protected map[string]bool // lower-case
	prefix    string          // the tenant setting's prefix, e.g. "app."
}

func newCarryRules(protected []string, policy startupPolicy) *carryRules {
	cr := &carryRules{protected: map[string]bool{}, prefix: policy.tenantPrefix}
	for _, name := range protected {
		cr.protected[asciiLower(name)] = true
	}
	return cr
}

func (cr *carryRules) isProtected(name string) bool {
	return cr.protected[name] || cr.prefix != "" && strings.HasPrefix(name, cr.prefix)
}

// resetAllAssertion is what the relay asserts behind a RESET ALL or
// DISCARD ALL: in PostgreSQL the session goes back to its startup values,
// so the client's carried settings go too (the readback behind it then
// finds only those).
func (r *relay) resetAllAssertion() []byte {
	if len(r.startup)+len(r.context) == 0 { // session mode too: it carries none
		return r.assertion.standalone
	}
	settings := append(slices.Clone(r.startup), r.context...)
	if setStatements(settings) == r.pctx.key {
		return r.assertion.standalone
	}
	return newAssertion(settings).standalone
}
