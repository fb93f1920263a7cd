package e2e

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// Bad input: malformed, truncated, oversized and out-of-order bytes from a
// client. Each gets a clean FATAL (pgtenant's or the upstream's) or the
// upstream's ERROR, and a close within a few seconds; the proxy keeps serving
// other clients, leaks no goroutine (startProxy checks) and no upstream
// connection.

// badCloseWithin is how long a refused client may wait for its close.
const badCloseWithin = 5 * time.Second

// badReply is what a client got before the connection closed.
type badReply struct {
	msgs   []pgproto3.BackendMessage
	closed bool  // the connection was closed (EOF or reset) within badCloseWithin
	err    error // the error that ended reading
}

func (r badReply) String() string {
	var parts []string
	for _, m := range r.msgs {
		parts = append(parts, describe(m))
	}
	return fmt.Sprintf("[%s] closed=%v (%v)", strings.Join(parts, "; "), r.closed, r.err)
}

// fatal returns the FATAL ErrorResponse the client got, if any.
func (r badReply) fatal() *pgproto3.ErrorResponse {
	for _, m := range r.msgs {
		if e, ok := m.(*pgproto3.ErrorResponse); ok && e.Severity == "FATAL" {
			return e
		}
	}
	return nil
}

// badRead reads backend messages until the connection ends or
// badCloseWithin passes.
func badRead(conn net.Conn, fe *pgproto3.Frontend) badReply {
	_ = conn.SetReadDeadline(time.Now().Add(badCloseWithin))
	var r badReply
	for {
		msg, err := fe.Receive()
		if err != nil {
			r.err = err
			var ne net.Error
			r.closed = !(errors.As(err, &ne) && ne.Timeout())
			return r
		}
		// Receive reuses message structs: keep a description-safe copy.
		r.msgs = append(r.msgs, badCopy(msg))
	}
}

func badCopy(msg pgproto3.BackendMessage) pgproto3.BackendMessage {
	switch m := msg.(type) {
	case *pgproto3.ErrorResponse:
		c := *m
		return &c
	case *pgproto3.ReadyForQuery:
		c := *m
		return &c
	case *pgproto3.DataRow:
		c := &pgproto3.DataRow{}
		for _, v := range m.Values {
			c.Values = append(c.Values, append([]byte(nil), v...))
		}
		return c
	case *pgproto3.CommandComplete:
		return &pgproto3.CommandComplete{CommandTag: append([]byte(nil), m.CommandTag...)}
	}
	return msg
}

// badWantFatal checks that the client got a FATAL with the code as its last
// message, and then a close.
func badWantFatal(t *testing.T, r badReply, code string) {
	t.Helper()
	if !r.closed {
		t.Fatalf("connection not closed within %s: %v", badCloseWithin, r)
	}
	e := r.fatal()
	if e == nil || e.Code != code {
		t.Fatalf("got %v, want FATAL %s and a close", r, code)
	}
	if last, ok := r.msgs[len(r.msgs)-1].(*pgproto3.ErrorResponse); !ok || last != e {
		t.Fatalf("messages after the FATAL: %v", r)
	}
}

// badWantSilentClose checks that the connection closed with no message.
func badWantSilentClose(t *testing.T, r badReply) {
	t.Helper()
	if !r.closed || len(r.msgs) != 0 {
		t.Fatalf("got %v, want a close without a message", r)
	}
}

// badUpstreamBackends counts the upstream backends of the tenant role,
// optionally only those with an application name.
func badUpstreamBackends(t *testing.T, app string) int {
	t.Helper()
	sql := fmt.Sprintf("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'", demo.RLSRole)
	if app != "" {
		sql += fmt.Sprintf(" AND application_name = '%s'", app)
	}
	n, err := strconv.Atoi(superQuery(t, sql)[0][0])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// badLoginWorks checks that a normal login and query work.
func badLoginWorks(t *testing.T, p *testProxy) {
	t.Helper()
	conn := p.pgconnect(t, tenantA)
	if got := queryOne(t, conn, currentTenant); got != tenantA.ID {
		t.Fatalf("after bad input, a new session has tenant %q, want %q", got, tenantA.ID)
	}
	conn.Close(context.Background())
}

// badStartupPacket encodes a startup packet by hand.
func badStartupPacket(version uint32, kv ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, version)
	for _, s := range kv {
		body = append(append(body, s...), 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

// badHeader is a message header with any length.
func badHeader(typ byte, n uint32) []byte {
	return append([]byte{typ}, binary.BigEndian.AppendUint32(nil, n)...)
}

func badEncode(t *testing.T, msgs ...pgproto3.FrontendMessage) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// badClientHello is the first flight of a real TLS client.
func badClientHello(t *testing.T) []byte {
	t.Helper()
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tls.Client(a, &tls.Config{ServerName: "127.0.0.1", InsecureSkipVerify: true}).Handshake()
	}()
	buf := make([]byte, 4096)
	_ = b.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := b.Read(buf)
	b.Close()
	a.Close()
	<-done
	if err != nil || n < 5 || buf[0] != 0x16 {
		t.Fatalf("capturing a ClientHello: %d bytes, %v", n, err)
	}
	return buf[:n]
}

func TestBadInputStartup(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t, func(c *config.Config) {
			// Short, so that a client that stalls mid-packet is closed quickly.
			c.Auth.Timeout = config.Duration{Duration: 2 * time.Second}
		})
		v30 := uint32(pgproto3.ProtocolVersion30)
		good := []string{"user", tenantA.User, "database", demo.Database}
		ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

		tests := []struct {
			desc      string
			send      []byte
			halfClose bool   // close the write side after sending
			code      string // the FATAL the client gets; "" for a close without a message
			wantN     bool   // the first reply byte is an 'N' (declined negotiation)
		}{
			{desc: "TLS ClientHello on a plaintext port without TLS", send: badClientHello(t), code: "08P01"},
			{desc: "length below 8", send: []byte{0, 0, 0, 4}, code: "08P01"},
			{desc: "length zero", send: []byte{0, 0, 0, 0, 0, 3, 0, 0}, code: "08P01"},
			{desc: "negative length", send: []byte{0xff, 0xff, 0xff, 0xff, 0, 3, 0, 0}, code: "08P01"},
			{desc: "length above 10000", send: append([]byte{0, 0, 0x27, 0x11}, badStartupPacket(v30, good...)[4:]...), code: "08P01"},
			{desc: "length above 1 GiB", send: []byte{0x40, 0, 0, 1, 0, 3, 0, 0}, code: "08P01"},
			{desc: "truncated packet, then EOF", send: append([]byte{0, 0, 0, 100}, badStartupPacket(v30, good...)[4:]...), halfClose: true, code: "08P01"},
			{desc: "truncated packet, then a stall (authentication timeout)", send: append([]byte{0, 0, 0, 100}, badStartupPacket(v30, good...)[4:]...)},
			{desc: "truncated header, then EOF", send: []byte{0, 0}, halfClose: true},
			{desc: "unsupported protocol 2.0", send: []byte{0, 0, 0, 8, 0, 2, 0, 0}, code: "0A000"},
			{desc: "unsupported protocol 1234.5678", send: []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2e}, code: "08P01"},
			{desc: "parameter list without terminator", send: func() []byte {
				b := badStartupPacket(v30, good...)
				b = b[:len(b)-1]
				binary.BigEndian.PutUint32(b, uint32(len(b)))
				return b
			}(), code: "08P01"},
			{desc: "parameter without value", send: func() []byte {
				b := badStartupPacket(v30, "user")
				return b
			}(), code: "08P01"},
			{desc: "no user", send: badStartupPacket(v30, "database", demo.Database), code: "28000"},
			{desc: "tenant setting as a parameter", send: badStartupPacket(v30, append(good, "app.tenant_id", tenantB.ID)...), code: "42501"},
			{desc: "role inside options", send: badStartupPacket(v30, append(good, "options", `-c\ x -c ROLE=postgres`)...), code: "42501"},
			{desc: "cancel request too short", send: []byte{0, 0, 0, 12, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0x10, 0x92}, code: "08P01"},
			{desc: "cancel request with an unknown key", send: badEncode(t, &pgproto3.CancelRequest{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})},
			{desc: "SSLRequest declined, then garbage", send: append(append([]byte{}, ssl...), 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4), code: "08P01", wantN: true},
			{desc: "a Query instead of the SCRAM exchange", send: append(badStartupPacket(v30, good...), badEncode(t, q("SELECT 1"))...), code: "08P01"},
			{desc: "a SASLInitialResponse with an unknown mechanism", send: append(badStartupPacket(v30, good...), badEncode(t, &pgproto3.SASLInitialResponse{AuthMechanism: "NOPE", Data: []byte("x")})...), code: "08P01"},
			{desc: "a garbage SCRAM client-first-message", send: append(badStartupPacket(v30, good...), badEncode(t, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("\xff\x00garbage")})...), code: "08P01"},
			{desc: "a password message with length below 4", send: append(badStartupPacket(v30, good...), badHeader('p', 2)...), code: "08P01"},
			{desc: "a password message longer than PostgreSQL accepts", send: append(badStartupPacket(v30, good...), badHeader('p', 1<<20)...), code: "08P01"},
		}

		before := badUpstreamBackends(t, "")
		for _, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) {
				conn := rawDial(t, p)
				if _, err := conn.Write(tt.send); err != nil {
					t.Fatal(err)
				}
				if tt.halfClose {
					_ = conn.(*net.TCPConn).CloseWrite()
				}
				if tt.wantN {
					if b := readByte(t, conn); b != 'N' {
						t.Fatalf("negotiation answer %q, want N", b)
					}
				}
				fe := pgproto3.NewFrontend(conn, conn)
				start := time.Now()
				r := badRead(conn, fe)
				// The SCRAM cases get the authentication request first.
				if len(r.msgs) > 0 {
					if _, ok := r.msgs[0].(*pgproto3.AuthenticationSASL); ok {
						r.msgs = r.msgs[1:]
					}
				}
				if tt.code == "" {
					badWantSilentClose(t, r)
				} else {
					badWantFatal(t, r, tt.code)
				}
				t.Logf("%v after %s", r, time.Since(start).Round(time.Millisecond))
			})
		}

		// Nothing reached the upstream: no session was started, no backend opened.
		if logs := p.logs.String(); strings.Contains(logs, "session started") {
			t.Fatalf("a malformed startup started a session:\n%s", logs)
		}
		if after := badUpstreamBackends(t, ""); after > before {
			t.Fatalf("upstream backends of %s: %d before, %d after the malformed startups", demo.RLSRole, before, after)
		}
		badLoginWorks(t, p)
	})
}

// badSession is an authenticated raw session through the proxy.
type badSession struct {
	conn net.Conn
	fe   *pgproto3.Frontend
	app  string
}

func badLogin(t *testing.T, p *testProxy, app string) *badSession {
	t.Helper()
	pc := p.pgconnect(t, tenantA, "application_name="+app)
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &badSession{conn: hc.Conn, fe: hc.Frontend, app: app}
}

func (s *badSession) write(t *testing.T, b []byte) {
	t.Helper()
	_ = s.conn.SetWriteDeadline(time.Now().Add(badCloseWithin))
	if _, err := s.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// readRFQ reads until n ReadyForQuery and returns the messages.
func (s *badSession) readRFQ(t *testing.T, n int) []pgproto3.BackendMessage {
	t.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []pgproto3.BackendMessage
	for n > 0 {
		msg, err := s.fe.Receive()
		if err != nil {
			t.Fatalf("receive: %v (so far %s)", err, badReply{msgs: out})
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			n--
		}
		out = append(out, badCopy(msg))
	}
	return out
}

// query runs one simple query and returns its single value.
func (s *badSession) query(t *testing.T, sql string) string {
	t.Helper()
	s.write(t, badEncode(t, q(sql)))
	var val string
	for _, m := range s.readRFQ(t, 1) {
		switch m := m.(type) {
		case *pgproto3.DataRow:
			val = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("%s: %s %s", sql, m.Code, m.Message)
		}
	}
	return val
}

func TestBadInputSession(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		since := relayNow(t)
		p := m.start(t)
		startup := badStartupPacket(pgproto3.ProtocolVersion30, "user", tenantA.User, "database", demo.Database)

		tests := []struct {
			desc string
			// send returns the bytes to send on an authenticated session.
			send      func(t *testing.T) []byte
			halfClose bool
			code      string // FATAL code; "" for a close without a message
		}{
			{desc: "message length below 4", send: func(t *testing.T) []byte { return badHeader('Q', 2) }, code: "08P01"},
			{desc: "message length zero", send: func(t *testing.T) []byte { return badHeader('B', 0) }, code: "08P01"},
			{desc: "message length above 1 GiB", send: func(t *testing.T) []byte { return append(badHeader('d', 1<<30+1), "data"...) }, code: "08P01"},
			{desc: "negative message length", send: func(t *testing.T) []byte { return badHeader('Q', 0xfffffff0) }, code: "08P01"},
			{desc: "Query above the guard's limit", send: func(t *testing.T) []byte { return append(badHeader('Q', 100<<20), "SELECT "...) }, code: "54000"},
			{desc: "unknown message type", send: func(t *testing.T) []byte { return append(badHeader('z', 4), badEncode(t, q("SELECT 1"))...) }, code: "08P01"},
			{desc: "second StartupMessage after authentication", send: func(t *testing.T) []byte { return startup }, code: "08P01"},
			{desc: "SSLRequest after authentication", send: func(t *testing.T) []byte { return []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f} }, code: "08P01"},
			{desc: "TLS ClientHello after authentication", send: badClientHello, code: "08P01"},
			{desc: "garbage after Terminate", send: func(t *testing.T) []byte {
				return append(badEncode(t, &pgproto3.Terminate{}), "\x16\x03\x01 garbage \x00\x00\x00\x00"...)
			}},
			{desc: "Terminate with a body", send: func(t *testing.T) []byte { return append(badHeader('X', 8), "abcd"...) }},
			{desc: "truncated message, then EOF", send: func(t *testing.T) []byte { return append(badHeader('Q', 100), "SELECT 1"...) }, halfClose: true},
			{desc: "truncated CopyData, then EOF", send: func(t *testing.T) []byte { return append(badHeader('d', 1<<20), "xyz"...) }, halfClose: true},
			{desc: "Parse without NULs", send: func(t *testing.T) []byte { return append(badHeader('P', 12), "SELECT 1"...) }, code: "08P01"},
			{desc: "FunctionCall too short", send: func(t *testing.T) []byte { return append(badHeader('F', 6), 0, 1) }, code: "08P01"},
			{desc: "Query during COPY FROM STDIN", send: func(t *testing.T) []byte {
				return badEncode(t, q("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte("badinput\n")}, q("SELECT 1"))
			}, code: "08P01"},
		}
		for i, tt := range tests {
			t.Run(tt.desc, func(t *testing.T) {
				s := badLogin(t, p, fmt.Sprintf("badinput_%d", i))
				s.write(t, tt.send(t))
				if tt.halfClose {
					_ = s.conn.(*net.TCPConn).CloseWrite()
				}
				r := badRead(s.conn, s.fe)
				// What the upstream said before the refusal (the COPY case).
				for len(r.msgs) > 0 {
					if _, ok := r.msgs[0].(*pgproto3.ErrorResponse); ok {
						break
					}
					r.msgs = r.msgs[1:]
				}
				if tt.code == "" {
					badWantSilentClose(t, r)
				} else {
					badWantFatal(t, r, tt.code)
				}
				t.Logf("%v", r)
				// The upstream session ended with the client's (transaction
				// mode: the pool still has all its connections, and none is
				// left open beside them).
				relayWantReleased(t, p, m, s.app, since, modePoolSize, tt.desc)
			})
		}

		t.Run("Bind before any Parse gets the upstream's error and the session goes on", func(t *testing.T) {
			s := badLogin(t, p, "badinput_bind")
			s.write(t, badEncode(t, &pgproto3.Bind{PreparedStatement: "never_prepared"}, &pgproto3.Execute{}, &pgproto3.Sync{}))
			msgs := s.readRFQ(t, 1)
			if e, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || e.Severity != "ERROR" || e.Code != "26000" {
				t.Fatalf("Bind of an unknown statement: %v, want ERROR 26000", badReply{msgs: msgs})
			}
			s.write(t, badEncode(t, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}))
			msgs = s.readRFQ(t, 1)
			if e, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || e.Severity != "ERROR" || e.Code != "26000" {
				t.Fatalf("Bind of the missing unnamed statement: %v, want ERROR 26000", badReply{msgs: msgs})
			}
			if got := s.query(t, currentTenant); got != tenantA.ID {
				t.Fatalf("tenant %q after the failed Binds, want %q", got, tenantA.ID)
			}
		})

		t.Run("Execute, Describe and Close of unknown objects", func(t *testing.T) {
			s := badLogin(t, p, "badinput_describe")
			s.write(t, badEncode(t, &pgproto3.Execute{Portal: "nope"}, &pgproto3.Sync{},
				&pgproto3.Describe{ObjectType: 'S', Name: "nope"}, &pgproto3.Sync{},
				&pgproto3.Close{ObjectType: 'P', Name: "nope"}, &pgproto3.Sync{},
				&pgproto3.Describe{ObjectType: 'x'}, &pgproto3.Sync{}))
			msgs := s.readRFQ(t, 4)
			var errs []string
			for _, m := range msgs {
				if e, ok := m.(*pgproto3.ErrorResponse); ok {
					errs = append(errs, e.Severity+" "+e.Code)
				}
			}
			if strings.Join(errs, ",") != "ERROR 34000,ERROR 26000,ERROR 08P01" {
				t.Fatalf("errors %v, want the upstream's 34000, 26000, 08P01", errs)
			}
			if got := s.query(t, currentTenant); got != tenantA.ID {
				t.Fatalf("tenant %q, want %q", got, tenantA.ID)
			}
		})

		t.Run("CopyData and CopyDone outside COPY are ignored at session start", func(t *testing.T) {
			s := badLogin(t, p, "badinput_copydata")
			s.write(t, badEncode(t, &pgproto3.CopyData{Data: []byte("stray")}, &pgproto3.CopyDone{}, &pgproto3.CopyFail{Message: "stray"}))
			if got := s.query(t, currentTenant); got != tenantA.ID {
				t.Fatalf("tenant %q after stray copy messages, want %q", got, tenantA.ID)
			}
		})

		t.Run("CopyData after a query: PostgreSQL ignores it, pgtenant answers or refuses cleanly", func(t *testing.T) {
			s := badLogin(t, p, "badinput_copydata2")
			if got := s.query(t, "SELECT 1"); got != "1" {
				t.Fatalf("SELECT 1 = %q", got)
			}
			s.write(t, badEncode(t, &pgproto3.CopyData{Data: []byte("stray")}, q(currentTenant)))
			r := badRead(s.conn, s.fe)
			if e := r.fatal(); e != nil {
				// pgtenant takes the session for a COPY FROM STDIN (see the report).
				badWantFatal(t, r, "08P01")
				t.Logf("refused: %v", r)
				return
			}
			var got string
			for _, m := range r.msgs {
				if d, ok := m.(*pgproto3.DataRow); ok {
					got = string(d.Values[0])
				}
			}
			if got != tenantA.ID {
				t.Fatalf("got %v, want the tenant or a clean FATAL", r)
			}
		})

		t.Run("Query without its terminating NUL gets the upstream's error and the session goes on", func(t *testing.T) {
			s := badLogin(t, p, "badinput_nonul")
			s.write(t, append(badHeader('Q', 12), "SELECT 1"...))
			msgs := s.readRFQ(t, 1)
			if e, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || e.Severity != "ERROR" || e.Code != "08P01" {
				t.Fatalf("Query without NUL: %v, want ERROR 08P01", badReply{msgs: msgs})
			}
			if got := s.query(t, currentTenant); got != tenantA.ID {
				t.Fatalf("tenant %q, want %q", got, tenantA.ID)
			}
		})

		t.Run("invalid UTF-8 in a statement gets an error and the session goes on", func(t *testing.T) {
			s := badLogin(t, p, "badinput_utf8")
			s.write(t, badEncode(t, q("SELECT '\xff\xfe\xc3'")))
			msgs := s.readRFQ(t, 1)
			if e, ok := msgs[0].(*pgproto3.ErrorResponse); !ok || e.Severity != "ERROR" {
				t.Fatalf("invalid UTF-8: %v, want an ERROR", badReply{msgs: msgs})
			}
			if got := s.query(t, currentTenant); got != tenantA.ID {
				t.Fatalf("tenant %q, want %q", got, tenantA.ID)
			}
		})

		badLoginWorks(t, p)
	})
}

// A stray CopyData (outside COPY, which PostgreSQL ignores) must not make the
// relay believe Syncs were swallowed by a COPY: it used to lower the count of
// outstanding replies twice, after which a statement pipelined behind COMMIT
// started a transaction without the tenant assertion.
func TestBadInputStrayCopyDataSkipsAssertion(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		// A plain function that changes the tenant setting: the guard sees only
		// the call (README, threat model); the assertion at the next transaction
		// start is what puts the tenant back.
		ctx := context.Background()
		c := pgcluster.Shared()
		if err := c.Exec(ctx, demo.Database, `CREATE FUNCTION badinput_switch(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_config('app.tenant_id', t, false) $$`); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.Exec(context.Background(), demo.Database, `DROP FUNCTION IF EXISTS badinput_switch(text)`)
		})

		for _, stray := range []bool{false, true} {
			s := badLogin(t, p, fmt.Sprintf("badinput_stray_%v", stray))
			if stray {
				s.write(t, badEncode(t, q("SELECT 1"), &pgproto3.Sync{}))
				s.readRFQ(t, 2)
				// Ignored by PostgreSQL outside COPY.
				s.write(t, badEncode(t, &pgproto3.CopyData{Data: []byte("x")}, &pgproto3.CopyDone{}))
			}
			s.query(t, "BEGIN")
			s.query(t, "SELECT badinput_switch('"+tenantB.ID+"')")
			s.write(t, badEncode(t, q("COMMIT"), q(currentTenant)))
			var got string
			for _, m := range s.readRFQ(t, 2) {
				if d, ok := m.(*pgproto3.DataRow); ok {
					got = string(d.Values[0])
				}
			}
			if got != tenantA.ID {
				t.Errorf("stray CopyData %v: the transaction after COMMIT ran with tenant %q, want %q (asserted)", stray, got, tenantA.ID)
			}
		}
	})
}
