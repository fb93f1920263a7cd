package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/guard"
	"github.com/pgtenant/pgtenant/internal/testcert"
)

// The fuzz targets here feed arbitrary client bytes to the two places that
// parse what an untrusted client sends: the startup sequence (before any
// authentication) and the request side of the relay. Seed corpora are in
// testdata/fuzz/<FuzzName>. Run one with, e.g.,
//
//	go test -run XXX -fuzz FuzzClientStream -fuzztime 3m ./proxy

// fuzzDeadline bounds every fuzzed call: it must return well within it.
const fuzzDeadline = 10 * time.Second

// memConn is a net.Conn whose reads come from a fixed input and whose writes
// are recorded. Reads past the input return io.EOF; reads and writes after
// the deadline fail with os.ErrDeadlineExceeded, as on a real connection.
type memConn struct {
	mu       sync.Mutex
	in       *bytes.Reader
	out      bytes.Buffer
	deadline time.Time
	closed   bool
}

func newMemConn(in []byte) *memConn { return &memConn{in: bytes.NewReader(in)} }

func (c *memConn) check() error {
	if c.closed {
		return net.ErrClosed
	}
	if !c.deadline.IsZero() && time.Now().After(c.deadline) {
		return os.ErrDeadlineExceeded
	}
	return nil
}

func (c *memConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.check(); err != nil {
		return 0, err
	}
	return c.in.Read(p)
}

func (c *memConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.check(); err != nil {
		return 0, err
	}
	if c.out.Len() < 1<<20 {
		c.out.Write(p)
	}
	return len(p), nil
}

func (c *memConn) written() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.out.Bytes())
}

func (c *memConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	return nil
}

func (c *memConn) LocalAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 6432}
}

func (c *memConn) RemoteAddr() net.Addr {
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 50000}
}

func (c *memConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error  { return c.SetDeadline(t) }
func (c *memConn) SetWriteDeadline(t time.Time) error { return c.SetDeadline(t) }

var (
	fuzzTLSOnce sync.Once
	fuzzTLSCfg  *tls.Config
	fuzzTLSErr  error
)

// fuzzTLSConfig is a server config with a self-signed certificate, made once.
func fuzzTLSConfig(t testing.TB) *tls.Config {
	fuzzTLSOnce.Do(func() {
		cert, err := testcert.New()
		if err != nil {
			fuzzTLSErr = err
			return
		}
		fuzzTLSCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	})
	if fuzzTLSErr != nil {
		t.Fatal(fuzzTLSErr)
	}
	return fuzzTLSCfg
}

// withDeadline runs f and fails the test if it has not returned within
// fuzzDeadline (a hang), reporting the goroutines.
func withDeadline(t *testing.T, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(fuzzDeadline):
		buf := make([]byte, 1<<20)
		buf = buf[:goruntime.Stack(buf, true)]
		t.Fatalf("%s did not return within %s\n%s", what, fuzzDeadline, buf)
	}
}

// isIOError reports whether err is the kind of error a connection that
// ended, timed out or failed its TLS handshake produces: nothing to tell the
// client about.
func isIOError(err error) bool {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed),
		errors.Is(err, io.ErrClosedPipe):
		return true
	}
	return strings.HasPrefix(err.Error(), "TLS handshake: ")
}

// checkStartupResult checks what readStartup returned for fuzzed input.
func checkStartupResult(t *testing.T, st *startup, err error, tlsUsed bool) {
	t.Helper()
	if st == nil || st.conn == nil {
		t.Fatalf("readStartup returned startup %+v: the connection to report on is lost (err %v)", st, err)
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			if pgErr.Severity != severityFatal {
				t.Fatalf("startup error with severity %q, want FATAL: %v", pgErr.Severity, pgErr)
			}
			switch {
			case pgErr.Code == codeProtocolViolation, pgErr.Code == codeFeatureNotSupported, strings.HasPrefix(pgErr.Code, "28"):
			default:
				t.Fatalf("startup error with SQLSTATE %s, want 08P01, 0A000 or class 28: %v", pgErr.Code, pgErr)
			}
			if pgErr.Message == "" {
				t.Fatal("startup error without a message")
			}
			// It must be encodable, since the server sends it to the client.
			if _, encErr := errorResponse(pgErr).Encode(nil); encErr != nil {
				t.Fatalf("startup error cannot be encoded: %v", encErr)
			}
			return
		}
		if !isIOError(err) {
			t.Fatalf("startup error is neither a FATAL PgError nor an I/O error: %T %v", err, err)
		}
		return
	}
	if tlsUsed != (st.tls != nil) {
		t.Fatalf("TLS state %v, want %v", st.tls != nil, tlsUsed)
	}
	if st.cancel != nil {
		if st.params != nil || st.pqOpts != nil {
			t.Fatalf("a cancel request with startup parameters: %+v", st)
		}
		if n := len(st.cancel.SecretKey); n < 4 || n > 256 {
			t.Fatalf("cancel request with a %d-byte secret key", n)
		}
		return
	}
	if st.params == nil {
		t.Fatal("a startup message without a parameter map")
	}
	if st.minor > 0xffff {
		t.Fatalf("minor version %d", st.minor)
	}
	for k := range st.params {
		if strings.HasPrefix(k, "_pq_.") {
			t.Fatalf("protocol option %q left among the parameters", k)
		}
	}
	for _, k := range st.pqOpts {
		if !strings.HasPrefix(k, "_pq_.") {
			t.Fatalf("parameter %q listed as a protocol option", k)
		}
	}
	checkUpstreamParams(t, st.params)
}

// checkUpstreamParams runs the startup policy on params and checks that
// nothing that could change the tenant context or identity gets through.
func checkUpstreamParams(t *testing.T, params map[string]string) {
	t.Helper()
	policy := newStartupPolicy("app.tenant_id")
	out, pgErr := policy.upstreamParams(params)
	if pgErr != nil {
		if out != nil {
			t.Fatalf("upstreamParams returned both parameters and an error")
		}
		if pgErr.Severity != severityFatal || pgErr.Code != codeInsufficientPrivilege {
			t.Fatalf("refusal %s %s, want FATAL 42501", pgErr.Severity, pgErr.Code)
		}
		if _, err := errorResponse(pgErr).Encode(nil); err != nil {
			t.Fatalf("refusal cannot be encoded: %v", err)
		}
		return
	}
	for name := range out {
		lower := strings.ToLower(name)
		switch {
		case lower == "app.tenant_id", strings.HasPrefix(lower, "app."),
			lower == "role", lower == "session_authorization", lower == "row_security":
			t.Fatalf("protected parameter %q reaches the upstream (from %q)", name, params)
		case lower == "user", lower == "database", lower == "options":
			t.Fatalf("parameter %q is passed on as a setting (from %q)", name, params)
		case !forwardableParams[lower]:
			t.Fatalf("parameter %q is not on the allow-list but reaches the upstream (from %q)", name, params)
		}
		// PostgreSQL compares setting names with ASCII case folding only; a
		// name Go folds differently is not the setting it looks like.
		if !isASCII(name) {
			t.Logf("non-ASCII parameter name %q passed as %q", name, lower)
		}
	}
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// runStartupMem runs readStartup over fuzzed bytes on an in-memory connection.
func runStartupMem(t *testing.T, data []byte, tlsConfig *tls.Config) {
	t.Helper()
	conn := newMemConn(data)
	_ = conn.SetDeadline(time.Now().Add(fuzzDeadline / 2))
	var st *startup
	var err error
	withDeadline(t, "readStartup", func() { st, err = readStartup(conn, tlsConfig) })
	tlsUsed := st != nil && st.tls != nil
	checkStartupResult(t, st, err, tlsUsed)
	if tlsConfig == nil {
		// Without TLS the only bytes pgtenant answers during startup are the
		// 'N' of declined negotiations.
		if w := conn.written(); len(bytes.Trim(w, "N")) != 0 {
			t.Fatalf("readStartup wrote %q to the client", w)
		}
	}
}

// runStartupOverTLS negotiates TLS with a real client and sends the fuzzed
// bytes inside the TLS session, so the encrypted-connection paths are reached.
func runStartupOverTLS(t *testing.T, data []byte, tlsConfig *tls.Config) {
	t.Helper()
	server, client := net.Pipe()
	deadline := time.Now().Add(fuzzDeadline / 2)
	_ = server.SetDeadline(deadline)
	_ = client.SetDeadline(deadline)
	clientDone := make(chan error, 1)
	go func() {
		clientDone <- func() error {
			if _, err := client.Write([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}); err != nil {
				return err
			}
			var b [1]byte
			if _, err := io.ReadFull(client, b[:]); err != nil {
				return err
			}
			if b[0] != 'S' {
				return fmt.Errorf("SSLRequest answered %q, want S", b[0])
			}
			tc := tls.Client(client, &tls.Config{ServerName: "pgtenant-fuzz", InsecureSkipVerify: true})
			if err := tc.Handshake(); err != nil {
				return err
			}
			go func() { _, _ = io.Copy(io.Discard, tc) }()
			if _, err := tc.Write(data); err != nil {
				return nil // the server stopped reading: fine
			}
			_ = tc.CloseWrite()
			return nil
		}()
	}()
	var st *startup
	var err error
	withDeadline(t, "readStartup over TLS", func() { st, err = readStartup(server, tlsConfig) })
	if st != nil && st.conn != nil {
		st.conn.Close()
	}
	server.Close()
	if cerr := <-clientDone; cerr != nil && !isIOError(cerr) {
		t.Fatalf("TLS client: %v", cerr)
	}
	if err == nil && st.tls == nil {
		t.Fatal("startup over TLS reported no TLS state")
	}
	checkStartupResult(t, st, err, true)
}

// tlsModePrefix marks fuzz inputs that are also sent inside a real TLS
// session. No plaintext startup packet starts with it: its length would be
// far above the limit.
const tlsModePrefix = 'T'

func FuzzStartupPacket(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f})
	f.Add(append([]byte{tlsModePrefix}, startupBytes(196608, "user", "u", "database", "app")...))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := fuzzTLSConfig(t)
		runStartupMem(t, data, nil)
		runStartupMem(t, data, cfg)
		if len(data) > 0 && data[0] == tlsModePrefix {
			runStartupOverTLS(t, data[1:], cfg)
		}
	})
}

// startupBytes encodes a startup packet by hand, so that seeds can carry any
// version and parameter list.
func startupBytes(version uint32, kv ...string) []byte {
	body := binary.BigEndian.AppendUint32(nil, version)
	for _, s := range kv {
		body = append(append(body, s...), 0)
	}
	body = append(body, 0)
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

// FuzzStartupParams fuzzes the startup policy directly: a parameter given
// as such and an options string.
func FuzzStartupParams(f *testing.F) {
	f.Add("application_name", "psql", "-c search_path=public")
	f.Add("app.tenant_id", "x", "")
	f.Add("Role", "admin", "")
	f.Add("TimeZone", "UTC", `-c\ app.tenant_id=x --row-security=off`)
	f.Add("options", "-c role=x", "--app.tenant-id=y")
	f.Add("search_path", "a", `-capp.tenant_id=1 -c ROW_SECURITY=off`)
	f.Add("work_mem", "1MB", "-c session_authorization=postgres")
	f.Add("user", "alice", `-c application_name=a\\b\ c`)
	f.Fuzz(func(t *testing.T, name, value, options string) {
		settings, err := splitOptions(options)
		if err != nil {
			if settings != nil {
				t.Fatal("splitOptions returned settings and an error")
			}
		}
		for _, s := range settings {
			if s.name == "" || strings.ContainsRune(s.name, '=') {
				t.Fatalf("splitOptions(%q) gave setting name %q", options, s.name)
			}
		}
		checkUpstreamParams(t, map[string]string{name: value})
		checkUpstreamParams(t, map[string]string{name: value, "options": options})
		checkUpstreamParams(t, map[string]string{"options": options, "user": value})
	})
}

// fuzzSettings is the assertion the request-side fuzzing uses.
var fuzzSettings = []setting{{name: "app.tenant_id", value: "t1"}}

// clientMessage is one message of a client stream, split by its header.
type clientMessage struct {
	typ byte
	raw []byte // the whole message, type byte included
}

// splitStream splits a stream into whole messages the way the relay reads
// headers. rest is what follows the last whole message; badLength reports
// that rest starts with a header whose length the relay must refuse.
func splitStream(b []byte) (msgs []clientMessage, rest []byte, badLength bool) {
	for len(b) >= 5 {
		n := int(binary.BigEndian.Uint32(b[1:5]))
		if n < 4 || n > maxMessageLen {
			return msgs, b, true
		}
		if len(b) < n+1 {
			return msgs, b, false
		}
		msgs = append(msgs, clientMessage{typ: b[0], raw: b[:n+1]})
		b = b[n+1:]
	}
	return msgs, b, false
}

// requestRun is one run of the request side on a fuzzed stream.
type requestRun struct {
	guard    *guard.Guard
	txStatus byte      // the status the (simulated) upstream reports
	reader   io.Reader // the client stream
}

// runRequestSide runs the request side like relay_test.go's requestSide,
// with a simulated response side that settles every unit at once (and
// answers standalone assertions), and returns what went upstream.
func runRequestSide(t *testing.T, run requestRun) (upstream []byte, err error) {
	t.Helper()
	var up bytes.Buffer
	r := newRelay(nil, bufio.NewReaderSize(run.reader, relayBufSize), nil, nil, ptrTo(newAssertion(fuzzSettings)), run.guard, zeroTime)
	r.uw = bufio.NewWriterSize(&fakeUpstream{r: r, status: run.txStatus, out: &up}, relayBufSize)
	r.txStatus.Store(uint32(run.txStatus))
	withDeadline(t, "clientToUpstream", func() {
		err = r.clientToUpstream()
		_ = r.uw.Flush()
	})
	return up.Bytes(), err
}

// assertionMessages are the messages of the inline and standalone assertions.
func assertionMessages() (inline, standalone []clientMessage) {
	a := newAssertion(fuzzSettings)
	inline, _, _ = splitStream(a.inline)
	standalone, _, _ = splitStream(a.standalone)
	return inline, standalone
}

// isRefusal reports whether up is the guard's stand-in for the client's
// Query, Parse or FunctionCall message c.
func isRefusal(c, up clientMessage) bool {
	switch {
	case c.typ == 'F' && up.typ == 'Q': // a refused FunctionCall becomes a Query
	case c.typ == up.typ && (c.typ == 'Q' || c.typ == 'P'):
	default:
		return false
	}
	text := statementText(up.raw)
	if !bytes.HasPrefix(text, []byte(refusalMarker)) {
		return false
	}
	if c.typ == 'P' {
		// Same statement name.
		cn, un := bytes.IndexByte(c.raw[5:], 0), bytes.IndexByte(up.raw[5:], 0)
		return cn >= 0 && un >= 0 && bytes.Equal(c.raw[5:5+cn], up.raw[5:5+un])
	}
	return true
}

// matchUpstream checks that the upstream messages are the client's messages
// client[:k], in order, with assertions interleaved and (with the guard)
// refused statements replaced; it returns k, or -1 when they are not.
func matchUpstream(client, up []clientMessage, guarded bool) int {
	inline, standalone := assertionMessages()
	var match func(i, j int) int
	startsWith := func(i int, seq []clientMessage) bool {
		if len(up)-i < len(seq) {
			return false
		}
		for k, m := range seq {
			if !bytes.Equal(up[i+k].raw, m.raw) {
				return false
			}
		}
		return true
	}
	match = func(i, j int) int {
		if i == len(up) {
			for j < len(client) && client[j].typ == 'S' {
				j++ // trailing Syncs the relay dropped
			}
			return j
		}

		if j < len(client) && (bytes.Equal(up[i].raw, client[j].raw) || guarded && isRefusal(client[j], up[i])) {
			if k := match(i+1, j+1); k >= 0 {
				return k
			}
		}
		if j < len(client) && client[j].typ == 'S' {
			// A Sync among COPY data, which the relay does not send.
			if k := match(i, j+1); k >= 0 {
				return k
			}
		}
		if bytes.Equal(up[i].raw, flushMessage) {
			// A Flush of the relay's own, before it waits for replies.
			if k := match(i+1, j); k >= 0 {
				return k
			}
		}

		for _, seq := range [][]clientMessage{standalone, inline} {
			if startsWith(i, seq) {
				if k := match(i+len(seq), j); k >= 0 {
					return k
				}
			}
		}
		return -1
	}
	return match(0, 0)
}

func checkRequestSide(t *testing.T, data []byte, run requestRun) {
	t.Helper()
	upBytes, err := runRequestSide(t, run)
	guarded := run.guard != nil

	// How the request side ended.
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		if pgErr.Severity != severityFatal {
			t.Fatalf("request side error with severity %s: %v", pgErr.Severity, pgErr)
		}
		if pgErr.Code != codeProtocolViolation && pgErr.Code != codeProgramLimitExceeded {
			t.Fatalf("request side error with SQLSTATE %s: %v", pgErr.Code, pgErr)
		}
		if _, encErr := errorResponse(pgErr).Encode(nil); encErr != nil {
			t.Fatalf("request side error cannot be encoded: %v", encErr)
		}
	case errors.Is(err, errClientTerminated), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
	default:
		t.Fatalf("request side ended with %T %v; want io.EOF, a FATAL PgError or errClientTerminated", err, err)
	}

	client, rest, badLength := splitStream(data)
	up, upRest, upBad := splitStream(upBytes)
	if upBad {
		t.Fatalf("the upstream got a message with an invalid length: % x", upRest[:5])
	}
	k := matchUpstream(client, up, guarded)
	if k < 0 {
		t.Fatalf("the upstream messages are not the client's in order (guard %v)\nclient: %s\nupstream: %s", guarded, describeMessages(client), describeMessages(up))
	}
	// A trailing partial message is a prefix of the client's next message,
	// possibly after an assertion (which is whole, and was matched above).
	if len(upRest) > 0 {
		if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("a partial message went upstream, but the request side ended with %v", err)
		}
		var next []byte
		if k < len(client) {
			next = client[k].raw
		} else {
			next = rest
		}
		if !bytes.HasPrefix(next, upRest) {
			t.Fatalf("partial upstream tail % x is not a prefix of the client's next message % x", upRest, next)
		}
	}

	switch {
	case errors.Is(err, errClientTerminated):
		if k == 0 || client[k-1].typ != 'X' || len(upRest) > 0 {
			t.Fatalf("Terminate: %d messages forwarded, the last not a Terminate", k)
		}
		for _, m := range client[:k-1] {
			if m.typ == 'X' {
				t.Fatal("the request side went on after a Terminate")
			}
		}
	case pgErr != nil:
		// Nothing of the refused message went upstream, and everything before
		// it did (it is flushed by the harness).
		if len(upRest) > 0 {
			t.Fatalf("FATAL %s after part of a message went upstream", pgErr.Message)
		}
		if pgErr.Message == "invalid message length" {
			if k != len(client) || !badLength {
				t.Fatalf("invalid message length reported after %d of %d whole messages (bad header %v)", k, len(client), badLength)
			}
		} else if k > len(client) || k == len(client) && len(rest) == 0 {
			// The refused message is client[k], or the partial one after the
			// whole messages (refused on its header alone).
			t.Fatalf("FATAL %q but every message went upstream", pgErr.Message)
		}
	default: // the stream ended
		if badLength {
			t.Fatal("an invalid message length was not refused")
		}
		if k != len(client) {
			t.Fatalf("stream ended after %d of %d whole messages went upstream (err %v)", k, len(client), err)
		}
		if len(rest) == 0 && len(upRest) > 0 {
			t.Fatal("partial upstream tail but the client sent whole messages")
		}
	}
}

func describeMessages(msgs []clientMessage) string {
	var b strings.Builder
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%q(%d)", m.typ, len(m.raw))
	}
	return b.String()
}

var (
	fuzzGuardOnce sync.Once
	fuzzGuard     *guard.Guard
)

func FuzzClientStream(f *testing.F) {
	f.Add([]byte("Q\x00\x00\x00\x0dSELECT 1\x00X\x00\x00\x00\x04"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzGuardOnce.Do(func() { fuzzGuard = guard.New(guard.Policy{TenantSetting: "app.tenant_id"}) })
		for _, g := range []*guard.Guard{nil, fuzzGuard} {
			// At idle every unit gets an assertion (inline or standalone);
			// inside a block none does.
			checkRequestSide(t, data, requestRun{guard: g, txStatus: 'I', reader: bytes.NewReader(data)})
			checkRequestSide(t, data, requestRun{guard: g, txStatus: 'T', reader: bytes.NewReader(data)})
		}
		// Bytes that trickle in one at a time take the paths where a message
		// is only partly buffered.
		checkRequestSide(t, data, requestRun{guard: fuzzGuard, txStatus: 'I', reader: iotest.OneByteReader(bytes.NewReader(data))})
		checkRequestSide(t, data, requestRun{guard: nil, txStatus: 'I', reader: iotest.HalfReader(bytes.NewReader(data))})
	})
}
