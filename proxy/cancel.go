package proxy

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// cancelKey is the (process id, secret) pair pgtenant hands a client in
// BackendKeyData. The process id is the upstream backend's own, so that
// pg_backend_pid() agrees with what the client was told; the secret is
// pgtenant's, so the upstream's secret never leaves the proxy.
type cancelKey struct {
	pid    uint32
	secret uint32
}

// cancelTarget is where a cancel for a key must go.
type cancelTarget struct {
	network, address string
	pid              uint32
	secret           []byte // the upstream's secret key
	// pooled is set in transaction mode: the target is whichever pooled
	// connection the client holds when the cancel arrives.
	pooled *relay
}

// randomPID is the process id a transaction-mode client is told: it has
// no upstream backend of its own.
func randomPID() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint32(b[:])&0x3fffffff | 1
}

type cancelRegistry struct {
	// peer is this replica's peer id, put in the keys it issues (peers.go);
	// 0 without peers. Fixed for the process: keys outlive a reload.
	peer uint32
	mu   sync.Mutex
	// targets are session-mode clients' upstream backends; pooled the
	// transaction-mode clients, a map of its own so that an idle client's
	// entry holds a pointer, not a whole cancelTarget.
	targets map[cancelKey]cancelTarget
	pooled  map[cancelKey]*relay
	// forwarding are the other replicas' keys (process id and secret as
	// sent) this replica is forwarding now (peers.go).
	forwarding map[string]bool
}

func newCancelRegistry(peer uint32) *cancelRegistry {
	return &cancelRegistry{peer: peer, targets: make(map[cancelKey]cancelTarget), pooled: make(map[cancelKey]*relay), forwarding: make(map[string]bool)}
}

// startForward marks the key of cr as being forwarded; false when it is
// already: the request has come back to this replica on its way.
func (c *cancelRegistry) startForward(cr *pgproto3.CancelRequest) (string, bool) {
	k := forwardKey(cr)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.forwarding[k] {
		return k, false
	}
	c.forwarding[k] = true
	return k, true
}

func (c *cancelRegistry) endForward(k string) {
	c.mu.Lock()
	delete(c.forwarding, k)
	c.mu.Unlock()
}

// forwardKey is a CancelRequest's key as a map key, whatever the length
// of its secret.
func forwardKey(cr *pgproto3.CancelRequest) string {
	var pid [4]byte
	binary.BigEndian.PutUint32(pid[:], cr.ProcessID)
	return string(pid[:]) + string(cr.SecretKey)
}

// register issues a key for target; the caller must unregister it.
func (c *cancelRegistry) register(t cancelTarget) cancelKey {
	pid := t.pid
	if c.peer != 0 {
		pid = keyPID(c.peer, pid)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		var b [4]byte
		_, _ = rand.Read(b[:])
		k := cancelKey{pid: pid, secret: binary.BigEndian.Uint32(b[:])}
		if _, taken := c.targets[k]; taken {
			continue
		}
		if _, taken := c.pooled[k]; taken {
			continue
		}
		if t.pooled != nil {
			c.pooled[k] = t.pooled
		} else {
			c.targets[k] = t
		}
		return k
	}
}

func (c *cancelRegistry) unregister(k cancelKey) {
	c.mu.Lock()
	delete(c.targets, k)
	delete(c.pooled, k)
	c.mu.Unlock()
}

// targetOf returns the target of a key pgtenant issued.
func (c *cancelRegistry) targetOf(k cancelKey) (cancelTarget, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.targetLocked(k)
}

func (c *cancelRegistry) targetLocked(k cancelKey) (cancelTarget, bool) {
	if r, ok := c.pooled[k]; ok {
		return cancelTarget{pooled: r}, true
	}
	t, ok := c.targets[k]
	return t, ok
}

func (c *cancelRegistry) lookup(pid uint32, secret []byte) (cancelTarget, bool) {
	if len(secret) != 4 {
		return cancelTarget{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.targetLocked(cancelKey{pid: pid, secret: binary.BigEndian.Uint32(secret)})
}

// send delivers a CancelRequest to the upstream backend. Like PostgreSQL,
// nothing is reported back to the client either way.
func (t cancelTarget) send(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, t.network, t.address)
	if err != nil {
		return err
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	msg, err := (&pgproto3.CancelRequest{ProcessID: t.pid, SecretKey: t.secret}).Encode(nil)
	if err != nil {
		return err
	}
	if _, err := conn.Write(msg); err != nil {
		return err
	}
	// The server closes the connection once it has acted on the request.
	var b [1]byte
	_, _ = conn.Read(b[:])
	return nil
}
