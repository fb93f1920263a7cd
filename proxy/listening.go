package proxy

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Which channels a transaction-mode client listens on (notifyhub.go).
//
// The client's LISTEN and UNLISTEN run on the pooled connection it holds,
// as in PostgreSQL, so that they take effect exactly when PostgreSQL says
// (at commit, not in a block that rolls back, not past a savepoint rolled
// back to). Before the first of them in a transaction, pgtenant listens
// there on what the client already listens on, and on a marker; behind the
// transaction the readback lists the connection's channels, and unlistens
// them all. With the marker among them, that list is the client's new set;
// without it, the transaction rolled back and nothing changed (unless it had
// an UNLISTEN * or DISCARD ALL, which end the marker too: those are taken as
// committed). The hub then
// listens for the client on exactly that set. Notifications arriving on
// pooled connections are dropped: the hub is the only way they reach a
// transaction-mode client.

// listenState is the request side's record of its client's channels.
type listenState struct {
	hub       *notifyHub
	committed []string // scoped channel names the client listens on
	tracking  bool     // a LISTEN or UNLISTEN was sent: read the channels back
	allSeen   bool     // an UNLISTEN * or DISCARD ALL was sent (it ends the marker too)
	mirrored  bool     // the committed set is on the held connection in this transaction
	delivery  bool     // the delivery goroutine runs
}

// listenName names pgtenant's own LISTEN statement and portal upstream.
const listenName = "pgtenant_listen"

// beforeListening prepares the held connection and the hub for a message
// that may change the client's channels (a Query, or the Bind of such a
// statement): the hub listens on the channels it LISTENs on first, and
// the connection gets the client's set and the marker, inside the unit.
// mirror is false where that cannot be (inside a failed block, or behind
// messages the server may be skipping): the readback then finds no marker.
func (r *relay) beforeListening(cc *channelChange, mirror mirrorMode) error {
	ls := &r.listen
	if ls.hub == nil {
		ls.hub = r.pool.notifyHub()
		r.listened.Store(true) // the session cannot move to another pool now (retire.go)
	}
	// Ahead of PostgreSQL's answer: nothing sent once a LISTEN commits may
	// be missed, nothing sent once an UNLISTEN commits delivered. The
	// readback settles what a rollback undid.
	if cc.all || len(cc.unlistens) > 0 {
		ls.hub.remove(r, cc.unlistens, cc.all)
	}
	if len(cc.listens) > 0 {
		r.startDelivery()
		if err := ls.hub.add(r, cc.listens); err != nil {
			return fatalf(codeConnectionFailure, "pgtenant could not listen for this session: %v", err)
		}
	}
	r.noteSettingsChange() // the connection is reset before anyone else holds it, unless read back
	ls.tracking = true
	ls.allSeen = ls.allSeen || cc.all
	r.carrying().touched = true
	r.holdForReadback()
	if mirror == mirrorNone || ls.mirrored {
		return nil
	}
	ls.mirrored = true
	if mirror == mirrorOwn {
		if err := r.beginUnit(); err != nil {
			return err
		}
	}
	st := r.prepared()
	var buf []byte
	for _, ch := range append([]string{hubMarker}, ls.committed...) {
		buf = mustEncode(buf, &pgproto3.Parse{Name: listenName, Query: "LISTEN " + quoteIdent(ch)})
		st.record(replyEntry{seq: r.seq, action: replyHide})
		buf = mustEncode(buf, &pgproto3.Bind{DestinationPortal: listenName, PreparedStatement: listenName})
		buf = mustEncode(buf, &pgproto3.Execute{Portal: listenName})
		buf = appendClose(buf, 'P', listenName)
		st.record(replyEntry{seq: r.seq, action: replyHide})
		buf = appendClose(buf, 'S', listenName)
		st.record(replyEntry{seq: r.seq, action: replyHide})
	}
	if mirror == mirrorOwn {
		return r.sendMsgs(append(buf, syncMessage...), fromPrepare)
	}
	return r.sendMsgs(buf, fromPrepareInline)
}

// mirrorMode is how the client's channels go onto the held connection.
type mirrorMode uint8

const (
	mirrorNone   mirrorMode = iota // not at all: the channels stay as they are
	mirrorOwn                      // in a round trip of pgtenant's own, ahead of the unit
	mirrorInline                   // inside the client's group, ahead of its message
)

// beforeListeningQuery is beforeListening for a Query: the channels go
// onto the connection in a round trip of their own (outside a block they
// are committed there, whatever the client's transaction does; inside one
// they are part of it), except where they cannot: inside a failed block,
// or behind extended-protocol messages with no Sync yet.
func (r *relay) beforeListeningQuery(cc *channelChange) error {
	mode := mirrorNone
	if !r.inGroup && !r.listen.mirrored {
		if r.ledger.pending.Load() > 0 {
			if err := r.waitDrained(); err != nil {
				return err
			}
		}
		if byte(r.txStatus.Load()) != 'E' && !r.ledger.skipsNext() {
			mode = mirrorOwn
		}
	}
	return r.beforeListening(cc, mode)
}

// channelChange is how a statement may change the client's channels:
// scoped names.
type channelChange struct {
	listens, unlistens []string
	all                bool // UNLISTEN *, DISCARD ALL
}

// channelChange is that of the message being relayed, nil if none (or not
// in transaction mode).
func (r *relay) channelChange() *channelChange {
	if !r.listening || !r.up.viaHub() || r.notifyScope == "" {
		return nil
	}
	cc := &channelChange{all: r.unlistensAll}
	for _, c := range r.channels {
		switch {
		case c.Listen:
			cc.listens = append(cc.listens, r.notifyScope+c.Name)
		case c.Unlisten:
			cc.unlistens = append(cc.unlistens, r.notifyScope+c.Name)
		}
	}
	return cc
}

// readbackChannelsSQL lists the held connection's channels in the readback.
const readbackChannelsSQL = " UNION ALL SELECT '" + readbackChanTag + "' OPERATOR(pg_catalog.||) c, ''" +
	" FROM pg_catalog.pg_listening_channels() AS c"

// readbackChanTag starts the name of a readback row that is a channel.
const readbackChanTag = "chan "

// unlistenMessages end a readback that lists channels: the connection
// listens on nothing once the client's set is known.
var unlistenMessages = func() []byte {
	var buf []byte
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: listenName, Query: "UNLISTEN *"},
		&pgproto3.Bind{DestinationPortal: listenName, PreparedStatement: listenName},
		&pgproto3.Execute{Portal: listenName},
		&pgproto3.Close{ObjectType: 'P', Name: listenName},
		&pgproto3.Close{ObjectType: 'S', Name: listenName},
	} {
		buf = mustEncode(buf, m)
	}
	return buf
}()

// takeChannels settles the client's channels from a readback that listed
// them (request side): with the marker, the list is the new set.
func (r *relay) takeChannels(found []string) error {
	ls := &r.listen
	all := ls.allSeen
	ls.tracking, ls.mirrored, ls.allSeen = false, false, false
	// UNLISTEN * and DISCARD ALL end the marker too: taken as committed.
	if slices.Contains(found, hubMarker) || all {
		ls.committed = ls.committed[:0]
		for _, ch := range found {
			if strings.HasPrefix(ch, r.notifyScope) {
				ls.committed = append(ls.committed, ch)
			}
		}
	}
	if err := ls.hub.set(r, ls.committed); err != nil {
		return fatalf(codeConnectionFailure, "pgtenant could not listen for this session: %v", err)
	}
	return nil
}

// startDelivery starts the goroutine that writes the hub's notifications
// to the client between its transactions.
func (r *relay) startDelivery() {
	if r.listen.delivery {
		return
	}
	r.listen.delivery = true
	r.notes = newNoteBox()
	go r.deliverNotes(r.notes)
}

// noteWriteTimeout is how long a notification may take to reach the
// client: longer, and the client is not reading.
const noteWriteTimeout = 5 * time.Second

// deliverNotes writes queued notifications whenever the client holds no
// connection (between transactions, as PostgreSQL sends them); the end of
// a lease pokes it.
func (r *relay) deliverNotes(b *noteBox) {
	for {
		select {
		case <-b.signal:
		case <-b.done:
			return
		}
		r.leaseMu.Lock()
		if r.attached && (r.writing || r.ledger.pending.Load() != 0 || byte(r.txStatus.Load()) != 'I') {
			// In a transaction, or replies on their way: PostgreSQL sends
			// notifications between transactions. The lease's end pokes again.
			r.leaseMu.Unlock()
			continue
		}
		msgs, failure := b.take()
		err := r.writeNotes(msgs, failure)
		r.leaseMu.Unlock()
		if err != nil || failure != nil {
			// The session ends: its client reads nothing more.
			r.endForNotes()
			return
		}
	}
}

// writeNotes writes msgs to the client, then failure if any (leaseMu held,
// nothing outstanding). It writes to the connection itself, whole messages
// per write: the client writer is the reply side's (empty between
// transactions), and a pinned client's reply side may still pass on a
// notice meanwhile.
func (r *relay) writeNotes(msgs [][]byte, failure *pgconn.PgError) error {
	if failure != nil {
		buf, _ := errorResponse(failure).Encode(nil)
		msgs = append(msgs, buf)
	}
	if len(msgs) == 0 {
		return nil
	}
	_ = r.client.SetWriteDeadline(time.Now().Add(noteWriteTimeout))
	defer func() { _ = r.client.SetWriteDeadline(time.Time{}) }()
	const chunk = 64 << 10
	var buf []byte
	for i, m := range msgs {
		buf = append(buf, m...)
		if len(buf) >= chunk || i == len(msgs)-1 {
			if _, err := r.client.Write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
	}
	return nil
}

// endForNotes ends the session of a client that does not take its
// notifications: its request side sees the connection close. A parked
// client has no request side to see it: unpark gives it one, and takes
// its descriptor out of the parker's set before the close (a closed
// descriptor leaves the set without a wake-up, and the session would stay
// until the server closes).
func (r *relay) endForNotes() {
	if r.parker != nil {
		r.parker.unpark(r)
	}
	_ = r.client.Close()
}

// stopListening ends the client's subscriptions when its session ends.
func (r *relay) stopListening() {
	if r.listen.hub != nil {
		r.listen.hub.leave(r)
	}
	if r.notes != nil {
		close(r.notes.done)
	}
}

// maxListenChannels bounds the channels a transaction-mode client listens
// on: the hub listens for every client of the pool on one backend, which
// PostgreSQL makes pay for each channel on every LISTEN.
const maxListenChannels = 1000

// checkListening refuses, in transaction mode, a LISTEN the hub cannot
// serve: past maxListenChannels, or from a client whose client_encoding is
// not UTF8 (the hub's connection speaks UTF8, and would listen on other
// bytes than the client's channel).
func (r *relay) checkListening() *pgconn.PgError {
	listens := 0
	for _, c := range r.channels {
		if c.Listen {
			listens++
		}
	}
	if listens == 0 {
		return nil
	}
	if enc, _ := r.clientEncoding.Load().(string); enc != "" && !strings.EqualFold(enc, "UTF8") {
		return &pgconn.PgError{Severity: severityError, Code: codeFeatureNotSupported,
			Message: "LISTEN needs client_encoding UTF8 in transaction pool mode",
			Detail:  "pgtenant listens for transaction-mode clients on a connection of its own, which speaks UTF8.",
			Hint:    "Use client_encoding UTF8, or pool_mode: session for this client."}
	}
	if len(r.listen.committed)+listens > maxListenChannels {
		return &pgconn.PgError{Severity: severityError, Code: codeProgramLimitExceeded,
			Message: fmt.Sprintf("pgtenant listens on at most %d channels per session in transaction pool mode", maxListenChannels),
			Hint:    "Listen on fewer channels (a channel per kind of event, with the id in the payload), or pool_mode: session for this client."}
	}
	return nil
}
