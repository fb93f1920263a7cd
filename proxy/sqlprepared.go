package proxy

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/pgtenant/pgtenant/guard"
)

// SQL prepared statements in transaction mode (guard/prepared.go). A lone
// PREPARE in a simple Query goes upstream under a name of pgtenant's, new
// for every PREPARE, and the client's name maps to it as a protocol-level
// statement's does (statements.byName). The server says what it made of
// it, the parameter types, in the readback behind the unit (carried.go);
// from then on the statement is a Parse like any other, prepared again on
// whichever connection the client holds. Until then the lease is held, so
// the statement is where the client runs it.
//
// The names in the texts that run them (EXECUTE, in a Query or a Parse) are
// rewritten to the upstream ones; a Query's statements are prepared ahead,
// in a round trip of pgtenant's own, where the connection lacks them, a
// Parse's when its statement is bound or described.

// sqlStmtCount numbers the PREPAREs of every client: each gets its own
// upstream name.
var sqlStmtCount atomic.Uint64

// stmtTypes is a carried PREPARE's parameter types as read back: the
// upstream name and the type OIDs, space-separated.
type stmtTypes struct {
	server, oids string
}

// readbackStmtTag starts the name of a readback row that answers for a
// PREPARE: no setting name has a space.
const readbackStmtTag = "stmt "

// carrySQLStatements adds the edits that rename, in a Query or Parse, the
// client's SQL prepared statements that the text prepares or runs, registers
// a new PREPARE (returned: its text is known once every edit is), and
// prepares ahead what a Query runs.
func (r *relay) carrySQLStatements(typ byte, edits []textEdit) ([]textEdit, *clientStmt, error) {
	st := r.prepared()
	var runs []*clientStmt
	var added *clientStmt
	st.mu.Lock()
	for _, e := range r.executes {
		if cs := st.byName[e.Name]; cs != nil {
			edits = append(edits, textEdit{e.Start, e.End, quoteIdent(cs.server)})
			runs = append(runs, cs)
		}
	}
	if p := r.prepare; p != nil && typ == 'P' {
		// A Parse of PREPARE prepares nothing yet: each Bind of it that
		// runs registers the statement (makeAtBind), under this name.
		server := serverStmtName(r.pctx.key, strconv.AppendUint([]byte("sql "), sqlStmtCount.Add(1), 10))
		added = &clientStmt{client: p.Name, server: server, pins: p.Pins}
		edits = append(edits, textEdit{p.Start, p.End, quoteIdent(server)})
	} else if p != nil {
		if cs := st.byName[p.Name]; cs != nil {
			// PostgreSQL refuses to redefine a statement (42P05): let it,
			// under the upstream name (the error names the client's).
			edits = append(edits, textEdit{p.Start, p.End, quoteIdent(cs.server)})
			runs = append(runs, cs)
		} else {
			server := serverStmtName(r.pctx.key, strconv.AppendUint([]byte("sql "), sqlStmtCount.Add(1), 10))
			added = &clientStmt{client: p.Name, server: server, pins: p.Pins}
			edits = append(edits, textEdit{p.Start, p.End, quoteIdent(server)})
		}
	}
	st.mu.Unlock()
	if r.prepare == nil && len(runs) == 0 {
		return edits, nil, nil
	}
	if added != nil {
		if err := st.overLimit(0, r.maxPrepared); err != nil {
			return nil, nil, err
		}
	}
	if typ == 'P' {
		r.stmtExecutes = runs // prepared ahead when the statement is bound
		r.stmtMakes = added
		return edits, added, nil
	}
	if err := r.prepareAhead(runs); err != nil {
		return nil, nil, err
	}
	if added != nil {
		r.registerMade(added)
	}
	return edits, added, nil
}

// prepareAhead prepares, ahead of the client's Query, the carried
// statements it runs that the held connection lacks: in a round trip of
// pgtenant's own, whose replies are hidden (if that fails, the client's
// statement fails as PostgreSQL would have it fail, or says the statement
// does not exist); inside a group, whose Sync that round trip would
// preempt, ahead of the Query without a Sync.
func (r *relay) prepareAhead(stmts []*clientStmt) error {
	var missing []*clientStmt
	for _, cs := range stmts {
		if cs.parse != nil && !slices.Contains(missing, cs) && !r.sc.touch(cs.server) {
			missing = append(missing, cs)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	own := !r.inGroup && !r.ledger.skipsNext()
	if own {
		if err := r.beginUnit(); err != nil {
			return err
		}
	}
	st := r.prepared()
	var buf []byte
	for _, cs := range missing {
		buf = appendClose(buf, 'S', cs.server)
		st.record(replyEntry{seq: r.seq, action: replyHide, kind: effectServerRemove, server: cs.server})
		buf = append(buf, cs.parse...)
		st.record(replyEntry{seq: r.seq, action: replyHide, kind: effectServerAdd, server: cs.server})
	}
	o := fromPrepareInline
	if own {
		buf, o = append(buf, syncMessage...), fromPrepare
	}
	return r.sendMsgs(buf, o)
}

// ensureRuns prepares inline the carried statements a Parse's text runs.
func (r *relay) ensureRuns(runs []*clientStmt, seq uint64) error {
	for _, cs := range runs {
		if err := r.ensurePrepared(cs, seq); err != nil {
			return err
		}
	}
	return nil
}

// readbackStmtsSQL reads back the parameter types of the PREPAREs given:
// a row for each the server has (one that failed, or was skipped, has none).
func readbackStmtsSQL(prepares []*clientStmt) string {
	if len(prepares) == 0 {
		return ""
	}
	names := make([]string, len(prepares))
	for i, cs := range prepares {
		names[i] = quoteLiteral(cs.server)
	}
	return " UNION ALL SELECT '" + readbackStmtTag + "' OPERATOR(pg_catalog.||) name," +
		" pg_catalog.array_to_string(parameter_types::pg_catalog.oid[], ' ')" +
		" FROM pg_catalog.pg_prepared_statements WHERE name OPERATOR(pg_catalog.=) ANY (ARRAY[" +
		strings.Join(names, ", ") + "]::pg_catalog.text[])"
}

// resolvePrepares settles the PREPAREs read back (request side): a statement
// the server has is a Parse from now on; one it has not never was.
func (r *relay) resolvePrepares(found []stmtTypes) {
	st := r.prepared()
	st.mu.Lock()
	defer st.mu.Unlock()
	c := r.carrying()
	for _, cs := range c.prepares {
		i := slices.IndexFunc(found, func(f stmtTypes) bool { return f.server == cs.server })
		if i < 0 {
			if st.byName[cs.client] == cs {
				st.remove(cs.client)
			}
			continue
		}
		rest := append([]byte(cs.inner), 0)
		oids := strings.Fields(found[i].oids)
		rest = binary.BigEndian.AppendUint16(rest, uint16(len(oids)))
		for _, o := range oids {
			n, _ := strconv.ParseUint(o, 10, 32)
			rest = binary.BigEndian.AppendUint32(rest, uint32(n))
		}
		cs.parse = appendParse(nil, cs.server, rest)
		st.grew(cs)
	}
	clear(c.prepares)
	c.prepares = c.prepares[:0]
}

// runsPin is what running the carried statements named pins, if anything.
func (st *statements) runsPin(names []guard.NameAt) string {
	if len(names) == 0 {
		return ""
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, n := range names {
		if cs := st.byName[n.Name]; cs != nil && cs.pins != "" {
			return cs.pins
		}
	}
	return ""
}

// makeAtBind registers, at the Bind of a Parse of PREPARE (tmpl), the
// statement it makes when it runs, as a PREPARE in a Query does: read back
// behind the unit; a Bind that fails, or whose Execute does, leaves
// nothing. A name the client has is replaced (PostgreSQL would refuse it
// with 42P05; the upstream, under a new name, does not).
func (r *relay) makeAtBind(tmpl *clientStmt) {
	r.registerMade(&clientStmt{client: tmpl.client, server: tmpl.server, inner: tmpl.inner, pins: tmpl.pins})
}

// registerMade gives the client's name to a statement its PREPARE makes on
// the held connection: its parameter types are read back behind the unit.
func (r *relay) registerMade(cs *clientStmt) {
	st := r.prepared()
	st.mu.Lock()
	st.put(cs.client, cs)
	st.mu.Unlock()
	r.sc.touch(cs.server)
	c := r.carrying()
	c.prepares = append(c.prepares, cs)
	c.touched = true
	r.holdForReadback()
}
