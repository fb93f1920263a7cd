package proxy

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Notifications in transaction mode. A client that LISTENs holds no pooled
// connection for it: the pool's hub listens, on one upstream connection of
// its own, on every channel some client of the pool listens on (channels are
// scoped per tenant: channels.go), and hands each notification to the
// clients subscribed to its channel, in the order the server sent them.
// Each client has a bounded queue: a client that does not read them is
// disconnected, and nobody else waits for it.
//
// Which channels a client listens on is PostgreSQL's to say (a LISTEN in a
// block that rolls back, a savepoint, UNLISTEN *, DISCARD ALL): see
// listening.go. The hub subscribes a client to a channel before the client's
// LISTEN goes upstream, so nothing sent after that LISTEN commits is missed.

// hubMarker is not a channel of any client's (every client's channel starts
// with its tenant's scope).
const hubMarker = "pgtenant:mirror"

// notifyHub is a pool's listening connection. mu guards every field.
type notifyHub struct {
	dial func(context.Context) (*serverConn, error)
	ctx  context.Context // done when the pool closes

	mu      sync.Mutex
	sc      *serverConn                // nil until needed, and after a loss
	subs    map[string]map[*relay]bool // scoped channel → its clients
	byRelay map[*relay]map[string]bool // and each client's channels
	waiting []chan error               // commands sent, in order, awaiting ReadyForQuery
	cmdErr  error                      // the error of the command being answered
}

func newNotifyHub(ctx context.Context, dial func(context.Context) (*serverConn, error)) *notifyHub {
	return &notifyHub{dial: dial, ctx: ctx, subs: map[string]map[*relay]bool{}, byRelay: map[*relay]map[string]bool{}}
}

// hubTimeout bounds a LISTEN on the hub's connection.
const hubTimeout = 10 * time.Second

// set subscribes r to exactly channels (scoped names), and waits until the
// hub listens on each.
func (h *notifyHub) set(r *relay, channels []string) error {
	want := make(map[string]bool, len(channels))
	for _, ch := range channels {
		want[ch] = true
	}
	h.mu.Lock()
	var listen, unlisten []string
	for ch := range h.byRelay[r] {
		if want[ch] {
			continue
		}
		rs := h.subs[ch]
		delete(rs, r)
		if len(rs) == 0 {
			delete(h.subs, ch)
			unlisten = append(unlisten, ch)
		}
	}
	for ch := range want {
		rs := h.subs[ch]
		if rs == nil {
			rs = map[*relay]bool{}
			h.subs[ch] = rs
			listen = append(listen, ch)
		}
		rs[r] = true
	}
	if len(want) == 0 {
		delete(h.byRelay, r)
	} else {
		h.byRelay[r] = want
	}
	wait, err := h.sendLocked(listen, unlisten)
	h.mu.Unlock()
	if err != nil || wait == nil {
		return err
	}
	select {
	case err := <-wait:
		return err
	case <-time.After(hubTimeout):
		return errors.New("no answer from the upstream within 10s")
	case <-h.ctx.Done():
		return errPoolClosed
	}
}

// add subscribes r to channels too, and waits until the hub listens on them.
func (h *notifyHub) add(r *relay, channels []string) error {
	return h.set(r, append(h.channelsOf(r), channels...))
}

// channelsOf lists the channels r is subscribed to.
func (h *notifyHub) channelsOf(r *relay) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.byRelay[r]))
	for ch := range h.byRelay[r] {
		out = append(out, ch)
	}
	return out
}

// remove unsubscribes r from channels, or from all of them; it does not
// wait.
func (h *notifyHub) remove(r *relay, channels []string, all bool) {
	keep := []string{}
	if !all {
		for _, ch := range h.channelsOf(r) {
			if !slices.Contains(channels, ch) {
				keep = append(keep, ch)
			}
		}
	}
	_ = h.set(r, keep) // only UNLISTENs: nothing to wait for
}

// leave unsubscribes r from everything.
func (h *notifyHub) leave(r *relay) { _ = h.set(r, nil) }

// sendLocked sends the LISTENs and UNLISTENs as one Query, dialling first if
// need be. It returns where the answer to the LISTENs comes, nil when
// nothing waits for one.
func (h *notifyHub) sendLocked(listen, unlisten []string) (chan error, error) {
	if len(listen) == 0 && len(unlisten) == 0 {
		return nil, nil
	}
	if h.sc == nil {
		if len(listen) == 0 {
			return nil, nil // a lost connection listens on nothing
		}
		ctx, cancel := context.WithTimeout(h.ctx, hubTimeout)
		sc, err := h.dial(ctx)
		cancel()
		if err != nil {
			h.dropListenersLocked(listen)
			return nil, err
		}
		h.sc = sc
		go h.read(sc)
	}
	var sql strings.Builder
	for _, ch := range listen {
		sql.WriteString("LISTEN " + quoteIdent(ch) + ";")
	}
	for _, ch := range unlisten {
		sql.WriteString("UNLISTEN " + quoteIdent(ch) + ";")
	}
	wait := make(chan error, 1)
	h.waiting = append(h.waiting, wait)
	// Bounded: the write holds mu, which every LISTEN of the pool and the
	// hub's reader need. A connection that takes no write is lost: closing
	// it makes the reader end its clients' sessions (lost).
	sc := h.sc
	_ = sc.conn.SetWriteDeadline(time.Now().Add(hubTimeout))
	_, err := sc.w.Write(encodeQuery(sql.String()))
	if err == nil {
		err = sc.w.Flush()
	}
	if err != nil {
		sc.conn.Close()
		return nil, err
	}
	if len(listen) == 0 {
		return nil, nil
	}
	return wait, nil
}

// dropListenersLocked forgets the subscriptions to channels a failed
// LISTEN was for.
func (h *notifyHub) dropListenersLocked(channels []string) {
	for _, ch := range channels {
		for r := range h.subs[ch] {
			delete(h.byRelay[r], ch)
		}
		delete(h.subs, ch)
	}
}

// read is the hub connection's reader: notifications to their clients,
// answers to the commands sent.
func (h *notifyHub) read(sc *serverConn) {
	for {
		typ, size, err := readHeader(sc.r)
		if err == nil {
			var msg []byte
			if msg, err = readMessage(sc.r, size); err == nil {
				h.handle(typ, msg)
				continue
			}
		}
		h.lost(sc, err)
		return
	}
}

func (h *notifyHub) handle(typ byte, msg []byte) {
	switch typ {
	case 'A':
		h.deliver(msg)
	case 'E':
		h.mu.Lock()
		if h.cmdErr == nil {
			h.cmdErr = decodeError(msg)
		}
		h.mu.Unlock()
	case 'Z':
		h.mu.Lock()
		if len(h.waiting) > 0 {
			h.waiting[0] <- h.cmdErr
			h.waiting = h.waiting[1:]
		}
		h.cmdErr = nil
		h.mu.Unlock()
	}
}

// deliver queues a notification for the clients of its channel, under the
// channel name they use.
func (h *notifyHub) deliver(msg []byte) {
	_, channel, _, ok := notificationChannel(msg)
	if !ok {
		return
	}
	h.mu.Lock()
	rs := h.subs[string(channel)]
	targets := make([]*relay, 0, len(rs))
	for r := range rs {
		targets = append(targets, r)
	}
	h.mu.Unlock()
	if len(targets) == 0 {
		return
	}
	// A channel's clients are of one tenant: one scope, one message for all.
	out := unscoped(msg, targets[0].notifyScope)
	if out == nil {
		return
	}
	for _, r := range targets {
		r.notes.offer(out)
	}
}

// lost ends the hub's connection: its clients would miss notifications
// without knowing, so their sessions end, as if their backend had gone.
func (h *notifyHub) lost(sc *serverConn, err error) {
	sc.conn.Close()
	h.mu.Lock()
	if h.sc == sc {
		h.sc = nil
	}
	for _, w := range h.waiting {
		w <- errUpstreamLost
	}
	h.waiting, h.cmdErr = nil, nil
	subs := h.subs
	h.subs, h.byRelay = map[string]map[*relay]bool{}, map[*relay]map[string]bool{}
	h.mu.Unlock()
	if h.ctx.Err() != nil {
		return // the pool is closing
	}
	ended := map[*relay]bool{}
	for _, rs := range subs {
		for r := range rs {
			if !ended[r] {
				ended[r] = true
				r.notes.fail(fatalf(codeConnectionFailure, "pgtenant: the connection listening for this session's notifications was lost"))
			}
		}
	}
}

// listeners counts the clients subscribed to some channel.
func (h *notifyHub) listeners() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byRelay)
}

// close ends the hub's connection (the pool is closing).
func (h *notifyHub) close() {
	h.mu.Lock()
	sc := h.sc
	h.sc = nil
	h.mu.Unlock()
	if sc != nil {
		sc.conn.Close()
	}
}

// Notification queues.

// A client's queue holds a transaction's burst (a notification's bytes are
// shared by all its clients, so the bound is on the backlog, not per
// client); a client further behind than that, or that takes longer than
// noteWriteTimeout to take one write, is not reading.
const (
	maxQueuedNotes     = 1 << 18
	maxQueuedNoteBytes = 64 << 20
)

// noteBox is a client's queue of notifications. mu guards it.
type noteBox struct {
	mu     sync.Mutex
	queue  [][]byte
	bytes  int
	err    *pgconn.PgError // the session is to end with it
	signal chan struct{}
	done   chan struct{} // closed when the session ends
}

func newNoteBox() *noteBox {
	return &noteBox{signal: make(chan struct{}, 1), done: make(chan struct{})}
}

// offer queues msg; past the bounds the client is too slow, and goes.
func (b *noteBox) offer(msg []byte) {
	if b == nil {
		return
	}
	b.mu.Lock()
	if b.err == nil {
		if len(b.queue) >= maxQueuedNotes || b.bytes+len(msg) > maxQueuedNoteBytes {
			b.err = fatalf(codeProgramLimitExceeded, "pgtenant: this session does not read its notifications (more than %d queued)", len(b.queue))
		} else {
			b.queue = append(b.queue, msg)
			b.bytes += len(msg)
		}
	}
	b.mu.Unlock()
	b.poke()
}

func (b *noteBox) fail(err *pgconn.PgError) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.mu.Unlock()
	b.poke()
}

func (b *noteBox) poke() {
	select {
	case b.signal <- struct{}{}:
	default:
	}
}

// take empties the queue.
func (b *noteBox) take() ([][]byte, *pgconn.PgError) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queue
	b.queue, b.bytes = nil, 0
	return q, b.err
}
