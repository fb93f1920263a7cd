package proxy

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/guard"
)

// Notification channels, scoped per tenant (guard/channels.go). Upstream a
// channel is the tenant's scope followed by the client's name, so tenants
// using the same name never meet; notifications come back without the
// scope, and those of other scopes are dropped.

// maxChannelName is PostgreSQL's limit on a channel name (NAMEDATALEN-1).
const maxChannelName = 63

// channelScope is a tenant's channel prefix: a keyed hash of the tenant id
// (fixed length, so no tenant's scope starts another's; keyed, so that
// knowing another tenant's id does not give its scope to pass to a function
// in the database that notifies a channel it is given).
func channelScope(key []byte, tenant string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(tenant))
	return hex.EncodeToString(m.Sum(nil)[:8]) + ":"
}

// scopeCache keeps the tenants' channel scopes of a configuration: every
// session of a tenant has the same, and an idle client should not keep a
// copy of its own (nor a login make one).
type scopeCache struct {
	mu     sync.Mutex
	key    []byte
	scopes map[string]string
}

// scopeCacheLimit bounds the scopes kept: past it they are made again.
const scopeCacheLimit = 10000

// get returns tenant's scope under cfg, the configuration of the runtime
// that holds c.
func (c *scopeCache) get(cfg *config.Config, tenant string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.scopes[tenant]; ok {
		return s
	}
	if c.key == nil {
		c.key = channelKey(cfg)
	}
	if c.scopes == nil || len(c.scopes) >= scopeCacheLimit {
		c.scopes = map[string]string{}
	}
	s := channelScope(c.key, tenant)
	c.scopes[tenant] = s
	return s
}

// channelKey keys the scopes: the signed context's key when there is one,
// else the upstream connection string (its password is no tenant's to
// know). Every replica with the same configuration has the same scopes.
func channelKey(cfg *config.Config) []byte {
	if cfg.SignedContext != nil && cfg.SignedContext.Key != "" {
		return []byte("signed_context\x00" + cfg.SignedContext.Key)
	}
	return []byte("upstream\x00" + cfg.Upstream)
}

// checkChannels refuses the channel names that do not fit with the scope.
func (r *relay) checkChannels(channels []guard.Channel) *pgconn.PgError {
	for _, c := range channels {
		if !c.Expr() && len(r.notifyScope)+len(c.Name) > maxChannelName {
			return guard.ChannelTooLong(c.Name, maxChannelName-len(r.notifyScope))
		}
	}
	return nil
}

// scopeChannels adds the edits that scope the text's channels. A
// pg_notify may stand in another's first argument: the outer edit holds
// the inner ones.
func (r *relay) scopeChannels(text []byte, edits []textEdit) []textEdit {
	chans := slices.Clone(r.channels)
	slices.SortFunc(chans, func(a, b guard.Channel) int { return a.Start - b.Start })
	for i := 0; i < len(chans); {
		var e textEdit
		e, i = r.scopeChannel(text, chans, i)
		edits = append(edits, e)
	}
	return edits
}

// scopeChannel is the edit for chans[i], with the channels inside it, and
// the index of the next channel after it.
func (r *relay) scopeChannel(text []byte, chans []guard.Channel, i int) (textEdit, int) {
	c := chans[i]
	i++
	if !c.Expr() {
		return textEdit{c.Start, c.End, quoteIdent(r.notifyScope + c.Name)}, i
	}
	var inner []textEdit
	for i < len(chans) && chans[i].Start < c.End {
		var e textEdit
		e, i = r.scopeChannel(text, chans, i)
		inner = append(inner, e)
	}
	expr := applyEdits(nil, text, inner, c.Start, c.End)
	return textEdit{c.Start, c.End, "('" + r.notifyScope + "' OPERATOR(pg_catalog.||) (" + string(expr) + "))"}, i
}

func quoteIdent(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}

// relayNotification passes on a NotificationResponse, msg, of the client's
// scope under the client's channel name, and drops any other (reply side).
func (r *relay) relayNotification(msg []byte) error {
	out := unscoped(msg, r.notifyScope)
	if out == nil {
		return nil // another tenant's (or unscoped: a function's in the database)
	}
	_, err := r.cw.Write(out)
	return err
}

// notificationChannel splits a NotificationResponse (type byte included)
// into its sender's pid, its channel and its payload (NUL included).
func notificationChannel(msg []byte) (pid, channel, payload []byte, ok bool) {
	if len(msg) < 9 {
		return nil, nil, nil, false
	}
	channel, payload, ok = splitName(msg[9:])
	return msg[5:9], channel, payload, ok
}

// unscoped is the NotificationResponse msg under the client's name for its
// channel, nil when the channel is not in scope.
func unscoped(msg []byte, scope string) []byte {
	pid, channel, payload, ok := notificationChannel(msg)
	if !ok || !bytes.HasPrefix(channel, []byte(scope)) {
		return nil
	}
	out := make([]byte, 0, len(msg)-len(scope))
	out = append(out, 'A', 0, 0, 0, 0)
	out = append(out, pid...)
	out = append(append(out, channel[len(scope):]...), 0)
	out = append(out, payload...)
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return out
}

// textEdit replaces text[start:end] of the statement being relayed.
type textEdit struct {
	start, end int
	with       string
}

// applyEdits returns text[from:to] with the edits inside it applied.
func applyEdits(dst, text []byte, edits []textEdit, from, to int) []byte {
	at := from
	for _, e := range edits {
		if e.start < from || e.end > to {
			continue
		}
		dst = append(dst, text[at:e.start]...)
		dst = append(dst, e.with...)
		at = e.end
	}
	return append(dst, text[at:to]...)
}

// rewriteStatement relays a Query or Parse (msg) with its text edited: the
// client's channels scoped and, with carry (transaction mode), its carried
// SQL statements renamed. It returns the message to relay instead.
func (r *relay) rewriteStatement(msg []byte, carry bool) ([]byte, error) {
	text := statementText(msg)
	edits := r.scopeChannels(text, nil)
	var added *clientStmt
	if carry {
		var err error
		if edits, added, err = r.carrySQLStatements(msg[0], edits); err != nil {
			return nil, err
		}
	}
	if len(edits) == 0 {
		return msg, nil
	}
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	if added != nil {
		// What is prepared again elsewhere is what ran here.
		p := r.prepare
		added.inner = string(applyEdits(nil, text, edits, p.InnerStart, p.InnerStart+len(p.Inner)))
	}
	textStart := 5
	if msg[0] == 'P' {
		textStart += bytes.IndexByte(msg[5:], 0) + 1
	}
	out := make([]byte, 0, len(msg)+64*len(edits))
	out = append(out, msg[:textStart]...)
	out = applyEdits(out, text, edits, 0, len(text))
	out = append(out, msg[textStart+len(text):]...)
	binary.BigEndian.PutUint32(out[1:], uint32(len(out)-1))
	return out, nil
}
