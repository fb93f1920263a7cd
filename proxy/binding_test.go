package proxy

import (
	"bufio"
	"errors"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// bindingRelay is a relay in the given mode whose upstream is one end of a
// pipe; in transaction mode it holds that connection, leased from a pool of
// its own, in a write section.
func bindingRelay(t *testing.T, txMode bool) (*relay, *txPool) {
	t.Helper()
	up, other := net.Pipe()
	t.Cleanup(func() { up.Close(); other.Close() })
	a := newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})
	if !txMode {
		return newRelay(nil, nil, nil, up, &a, nil, zeroTime), nil
	}
	pool := &txPool{active: map[string]int{"t1": 1}}
	r := newRelay(nil, nil, nil, nil, &a, nil, zeroTime)
	r.tenant = "t1"
	r.pooledState = pooledState{pool: pool, sc: &serverConn{conn: up, w: bufio.NewWriterSize(up, relayBufSize)}}
	r.up = leaseBinding{r}
	r.leaseMu.Lock()
	r.takeWriterLocked()
	r.leaseMu.Unlock()
	return r, pool
}

// The request side writes upstream only through what its binding gives
// it: the session's connection for good; in transaction mode the held
// connection's writer, for one write section only. Once the batch is
// flushed, the lease is over and so is the writer: nothing the client sends
// next can reach a connection that another client may hold by then.
func TestBindingWriterEndsWithTheLease(t *testing.T) {
	tests := []struct {
		desc       string
		txMode     bool
		wantWriter bool // the request side has a writer after the flush
	}{
		{desc: "session mode keeps its connection's writer", txMode: false, wantWriter: true},
		{desc: "transaction mode gives the writer back with the lease", txMode: true, wantWriter: false},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r, pool := bindingRelay(t, tt.txMode)
			if r.uw == nil {
				t.Fatal("no writer before the flush")
			}
			if err := r.flushUpstream(); err != nil {
				t.Fatalf("flush: %v", err)
			}
			if got := r.uw != nil; got != tt.wantWriter {
				t.Fatalf("writer after the flush: %v, want %v", got, tt.wantWriter)
			}
			if err := r.flushUp(); err != nil {
				t.Fatalf("flushUp: %v", err)
			}
			if pool == nil {
				return
			}
			r.leaseMu.Lock()
			held := r.sc != nil
			r.leaseMu.Unlock()
			if held || pool.active["t1"] != 0 {
				t.Fatalf("lease not given back: held %v, active %d", held, pool.active["t1"])
			}
		})
	}
}

// Between leases a transaction-mode client's messages that need no
// connection go nowhere, one in the middle of a unit is a protocol
// violation, and a Terminate never reaches a pooled connection; in session
// mode every message goes to the session's connection.
func TestBindingTake(t *testing.T) {
	tests := []struct {
		desc       string
		txMode     bool
		typ        byte
		startsUnit bool
		wantHeld   bool
		wantErr    error  // errors.Is
		wantCode   string // or a PgError's SQLSTATE
	}{
		{desc: "session: Flush", typ: 'H', wantHeld: true},
		{desc: "session: Terminate goes to the connection", typ: 'X', wantHeld: true},
		{desc: "transaction: Flush between leases is dropped", txMode: true, typ: 'H'},
		{desc: "transaction: copy data between leases is dropped", txMode: true, typ: 'd'},
		{desc: "transaction: Bind in the middle of a unit with no lease", txMode: true, typ: 'B', wantCode: codeProtocolViolation},
		{desc: "transaction: Terminate ends the session here", txMode: true, typ: 'X', wantErr: errClientTerminated},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			r, _ := bindingRelay(t, tt.txMode)
			if tt.txMode {
				if err := r.flushUpstream(); err != nil { // the lease ends
					t.Fatalf("flush: %v", err)
				}
			}
			held, err := r.up.take(tt.typ, 5, tt.startsUnit)
			var pgErr *pgconn.PgError
			switch {
			case tt.wantCode != "":
				if !errors.As(err, &pgErr) || pgErr.Code != tt.wantCode {
					t.Fatalf("error %v, want SQLSTATE %s", err, tt.wantCode)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
			case err != nil:
				t.Fatalf("error %v", err)
			}
			if held != tt.wantHeld {
				t.Fatalf("held %v, want %v", held, tt.wantHeld)
			}
			if tt.txMode && r.uw != nil {
				t.Fatal("a writer with no lease held")
			}
		})
	}
}
