package proxy

import (
	"bytes"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Auditor receives the audit log (package audit implements it). Its methods
// are called from both sides of many sessions at once: they must be safe for
// concurrent use and must never block the relay.
type Auditor interface {
	// Sample reports whether the next statement of tenant is logged (the
	// tenant's sample rate). Refusals and failed logins are not sampled.
	Sample(tenant string) bool
	// Statement returns what the log shows of a statement's text: its
	// fingerprint and normalized text, never a literal value. The result is
	// shared and must not be changed; a repeated text costs a lookup.
	Statement(text []byte) *AuditStatement
	// Log queues an event. It never blocks: past its buffer it drops the
	// event and counts it.
	Log(e AuditEvent)
	// Dropped is how many events were dropped so far.
	Dropped() uint64
}

// AuditStatement is a statement as the audit log shows it.
type AuditStatement struct {
	Fingerprint string // pg_query's fingerprint (hex); "" when the text does not parse
	Normalized  string // the text with every literal replaced by $n; "" when it does not parse
}

// Audit event kinds.
const (
	AuditStatementRun = "statement"    // a statement answered by the upstream
	AuditRefusal      = "refusal"      // a statement the guard refused
	AuditLoginFailed  = "login_failed" // a client refused at login
)

// AuditEvent is one line of the audit log.
type AuditEvent struct {
	Kind      string
	Time      time.Time
	Tenant    string
	User      string
	Conn      uint64 // the conn id of the session's log lines
	Remote    string // failed logins only
	Statement *AuditStatement
	Protocol  string // "simple" (Query) or "extended" (Execute)
	Duration  time.Duration
	Rows      int64  // from CommandComplete
	SQLState  string // from ErrorResponse (the first one), "" when none
	Reason    string // refusals and failed logins: the error message
}

// unknownStatement stands for an Execute of a portal whose statement the
// relay did not see prepared (a SQL PREPARE bound at protocol level);
// refusedStatement for one the guard refused (logged as a refusal, and the
// server skips its Execute).
var (
	unknownStatement = &AuditStatement{}
	refusedStatement = &AuditStatement{}
)

// auditState is a relay's audit bookkeeping; nil when the audit log is off,
// so that the relay pays one nil check per message.
//
// The request side owns stmts, portals and tag; q (the statements sent and
// not yet answered, in the order sent) is shared with the reply side under mu.
type auditState struct {
	a      Auditor
	user   string
	conn   uint64
	tenant string

	stmts   map[string]*AuditStatement // prepared statements by name
	portals map[string]*AuditStatement // bound portals by name
	tag     uint64                     // the entry the next Query or Execute sent carries
	next    uint64

	mu sync.Mutex
	q  []auditEntry
	// failUnit and failCode: the first error of a unit that answered a
	// message of no entry (a Bind failing in the planner, a Parse): the
	// entry the server then skips failed with it.
	failUnit uint64
	failCode string
}

type auditEntry struct {
	id       uint64
	unit     uint64 // 0 until the message is sent
	st       *AuditStatement
	start    time.Time
	protocol string
	rows     int64
	code     string
}

// SetAuditor makes new sessions log their statements to a, and logins
// refused from now on; nil turns the audit log off for new sessions.
func (s *Server) SetAuditor(a Auditor) {
	old := s.auditor()
	if old != nil {
		s.auditDropBase.Add(old.Dropped())
	}
	if a == nil {
		s.audit.Store(nil)
		return
	}
	s.audit.Store(&a)
}

// Auditor returns the audit log new sessions use, or nil.
func (s *Server) Auditor() Auditor { return s.auditor() }

func (s *Server) auditor() Auditor {
	if a := s.audit.Load(); a != nil {
		return *a
	}
	return nil
}

// AuditDropped is how many audit events were dropped, over every auditor
// the server has had.
func (s *Server) AuditDropped() float64 {
	n := s.auditDropBase.Load()
	if a := s.auditor(); a != nil {
		n += a.Dropped()
	}
	return float64(n)
}

// auditLoginFailed logs a client refused at login.
func (s *Server) auditLoginFailed(conn uint64, st *startup, err error) {
	a := s.auditor()
	pgErr, ok := err.(*pgconn.PgError)
	if a == nil || !ok {
		return // a client that went away was not refused
	}
	a.Log(AuditEvent{Kind: AuditLoginFailed, Time: time.Now(), User: st.params["user"], Conn: conn,
		Remote: st.conn.RemoteAddr().String(), SQLState: pgErr.Code, Reason: pgErr.Message})
}

// startAudit gives a session's relay its audit state when the log is on.
func (r *relay) startAudit(a Auditor, user string, conn uint64) {
	if a == nil {
		return
	}
	r.audit = &auditState{a: a, user: user, conn: conn, tenant: r.tenant}
}

// auditRefused logs a statement the guard refused (never sampled).
func (r *relay) auditRefused(msg []byte, e *pgconn.PgError) {
	au := r.audit
	if au == nil {
		return
	}
	ev := AuditEvent{Kind: AuditRefusal, Time: time.Now(), Tenant: au.tenant, User: au.user, Conn: au.conn,
		Statement: unknownStatement, Protocol: "simple", SQLState: e.Code, Reason: e.Message}
	if text := statementText(msg); text != nil {
		ev.Statement = au.a.Statement(text)
	}
	if msg[0] == 'P' {
		ev.Protocol = "extended"
	}
	au.a.Log(ev)
}

// auditRequest follows, from a client message, the statements to log: the
// text of each Parse by statement name, each Bind's portal, and an entry for
// each Query and Execute that is sampled. msg is the whole message for a
// Query or Parse (the relay reads those whole when the log is on).
func (r *relay) auditRequest(typ byte, size int, msg []byte, refused bool) error {
	au := r.audit
	if typ == 'Q' || typ == 'E' {
		au.tag = 0 // an earlier one's, if it was never sent
	}
	switch typ {
	case 'Q':
		if !refused && au.a.Sample(au.tenant) {
			au.push(au.a.Statement(statementText(msg)), "simple")
		}
	case 'P':
		name, _, _ := splitName(msg[5:])
		if au.stmts == nil {
			au.stmts = map[string]*AuditStatement{}
		}
		if refused {
			au.stmts[string(name)] = refusedStatement
			return nil
		}
		au.stmts[string(name)] = au.a.Statement(statementText(msg))
	case 'B':
		head := r.in
		portal, rest, _ := splitName(head[5:])
		stmt, _, _ := splitName(rest)
		st := au.stmts[string(stmt)]
		if st == nil {
			st = unknownStatement
		}
		if au.portals == nil {
			au.portals = map[string]*AuditStatement{}
		}
		au.portals[string(portal)] = st
	case 'E':
		if !au.a.Sample(au.tenant) {
			return nil
		}
		head := r.in
		portal, _, _ := splitName(head[5:])
		st := au.portals[string(portal)]
		switch st {
		case nil:
			st = unknownStatement
		case refusedStatement:
			return nil
		}
		au.push(st, "extended")
	}
	return nil
}

// push queues an entry for the Query or Execute about to be sent.
func (au *auditState) push(st *AuditStatement, protocol string) {
	au.next++
	au.tag = au.next
	au.mu.Lock()
	au.q = append(au.q, auditEntry{id: au.next, st: st, start: time.Now(), protocol: protocol})
	au.mu.Unlock()
}

// tagSent returns the entry id a Query or Execute being sent in unit carries.
func (au *auditState) tagSent(typ byte, unit uint64) uint64 {
	if au.tag == 0 || typ != 'Q' && typ != 'E' {
		return 0
	}
	id := au.tag
	au.tag = 0
	au.mu.Lock()
	for i := len(au.q) - 1; i >= 0; i-- {
		if au.q[i].id == id {
			au.q[i].unit = unit
			break
		}
	}
	au.mu.Unlock()
	return id
}

// auditReply notes a reply to a logged statement (res.audit) or the end of
// a unit of the client's: rows from CommandComplete, the SQLSTATE of an
// ErrorResponse; an Execute is over at its CommandComplete, error, empty
// query or suspension, a Query at its ReadyForQuery.
func (r *relay) auditReply(msg []byte, res replyResult) {
	typ := msg[0]
	au := r.audit
	au.mu.Lock()
	defer au.mu.Unlock()
	if res.audit != 0 {
		i := au.find(res.audit)
		if i < 0 {
			return
		}
		e := &au.q[i]
		done := false
		switch typ {
		case 'C':
			e.rows += commandRows(msg)
			done = res.msgType == 'E'
		case 'E':
			if e.code == "" {
				e.code = errorCode(msg)
			}
			done = res.msgType == 'E'
		case 'I', 's':
			done = res.msgType == 'E'
		case 'Z':
			done = true
		}
		if done {
			au.logLocked(i)
		}
	}
	if res.audit == 0 && typ == 'E' && au.failUnit != res.unit {
		au.failUnit, au.failCode = res.unit, errorCode(msg)
	}
	if res.endsUnit {
		au.endUnitLocked(res.unit)
	}
}

// endUnitLocked settles the entries of the units up to unit, which has
// ended: the server skipped what is left of them after an error. The first
// one skipped after an error of no entry's (its Bind or Parse failed) is
// logged with that error; the rest never ran.
func (au *auditState) endUnitLocked(unit uint64) {
	if au.failUnit != 0 {
		for i := range au.q {
			if au.q[i].unit == au.failUnit {
				au.q[i].code = au.failCode
				au.logLocked(i)
				break
			}
		}
		au.failUnit, au.failCode = 0, ""
	}
	au.dropLocked(func(e *auditEntry) bool { return e.unit != 0 && e.unit <= unit })
}

// find returns the index of entry id, dropping the entries before it: sent
// earlier and not answered, the server skipped them.
func (au *auditState) find(id uint64) int {
	au.dropLocked(func(e *auditEntry) bool { return e.id < id })
	if len(au.q) > 0 && au.q[0].id == id {
		return 0
	}
	return -1
}

// logLocked logs entry i and removes it.
func (au *auditState) logLocked(i int) {
	e := au.q[i]
	au.a.Log(AuditEvent{Kind: AuditStatementRun, Time: e.start, Tenant: au.tenant, User: au.user, Conn: au.conn,
		Statement: e.st, Protocol: e.protocol, Duration: time.Since(e.start), Rows: e.rows, SQLState: e.code})
	au.q = append(au.q[:i], au.q[i+1:]...)
}

// dropLocked removes the entries at the head of the queue that drop says.
func (au *auditState) dropLocked(drop func(*auditEntry) bool) {
	n := 0
	for n < len(au.q) && drop(&au.q[n]) {
		n++
	}
	if n > 0 {
		au.q = append(au.q[:0], au.q[n:]...)
	}
}

// commandRows is the row count at the end of a CommandComplete's tag
// ("SELECT 5", "INSERT 0 3", "COPY 10"), or 0 for a tag without one.
func commandRows(msg []byte) int64 {
	if len(msg) < 6 {
		return 0
	}
	tag := msg[5:]
	if i := bytes.IndexByte(tag, 0); i >= 0 {
		tag = tag[:i]
	}
	sp := bytes.LastIndexByte(tag, ' ')
	if sp < 0 || sp == len(tag)-1 {
		return 0
	}
	var n int64
	for _, c := range tag[sp+1:] {
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + int64(c-'0')
	}
	return n
}
