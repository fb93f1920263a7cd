package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/internal/testcert"
)

func testDirectory(t *testing.T) Directory {
	t.Helper()
	v, err := NewVerifier("alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := NewStaticDirectory([]config.User{
		{Name: "alice", Password: v, Tenant: "acme"},
		{Name: "bob", Password: "bob-pw", Tenant: "globex"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// selfSigned returns a fresh self-signed certificate.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	cert, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

type serverResult struct {
	id  Identity
	err error
}

// connect runs a real pgconn client against a minimal server that calls
// Authenticate, over net.Pipe. serverTLS enables SSLRequest handling.
func connect(t *testing.T, a *Authenticator, connString string, serverTLS *tls.Config) (res serverResult, clientErr error) {
	t.Helper()
	return connectFrom(t, a, connString, serverTLS, false, nil)
}

// connectFrom is connect with the server told whether the client is on a
// loopback address; when clientConnHook is non-nil the client's end of the
// pipe is passed through it (to record what the client receives).
func connectFrom(t *testing.T, a *Authenticator, connString string, serverTLS *tls.Config, loopback bool, clientConnHook func(net.Conn) net.Conn) (res serverResult, clientErr error) {
	t.Helper()
	clientConn, serverConn := net.Pipe()
	done := make(chan serverResult, 1)
	go func() {
		// Closing the raw pipe (never the tls.Conn) avoids blocking on a
		// close_notify the client may no longer read.
		defer serverConn.Close()
		done <- serve(a, serverConn, serverTLS, loopback)
	}()
	var dialConn net.Conn = clientConn
	if clientConnHook != nil {
		dialConn = clientConnHook(clientConn)
	}

	cfg, err := pgconn.ParseConfig(connString)
	if err != nil {
		t.Fatal(err)
	}
	cfg.LookupFunc = func(_ context.Context, host string) ([]string, error) { return []string{host}, nil }
	dialed := false
	cfg.DialFunc = func(context.Context, string, string) (net.Conn, error) {
		if dialed {
			return nil, errors.New("test dials only once")
		}
		dialed = true
		return dialConn, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err == nil {
		err = conn.Close(ctx)
		if err != nil {
			t.Errorf("closing client: %v", err)
		}
		err = nil
	}
	clientConn.Close()
	return <-done, err
}

func serve(a *Authenticator, conn net.Conn, serverTLS *tls.Config, loopback bool) serverResult {
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return serverResult{err: err}
	}
	var tlsState *tls.ConnectionState
	if _, ok := msg.(*pgproto3.SSLRequest); ok {
		if serverTLS == nil {
			return serverResult{err: errors.New("unexpected SSLRequest")}
		}
		if _, err := conn.Write([]byte{'S'}); err != nil {
			return serverResult{err: err}
		}
		tc := tls.Server(conn, serverTLS)
		if err := tc.Handshake(); err != nil {
			return serverResult{err: err}
		}
		st := tc.ConnectionState()
		tlsState = &st
		be = pgproto3.NewBackend(tc, tc)
		if msg, err = be.ReceiveStartupMessage(); err != nil {
			return serverResult{err: err}
		}
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return serverResult{err: errors.New("expected StartupMessage")}
	}

	id, err := a.Authenticate(be, sm.Parameters["user"], ConnInfo{TLS: tlsState, Loopback: loopback, RemoteAddr: conn.RemoteAddr().String()})
	if err != nil {
		// What the proxy does with the error: send it, then hang up.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			be.Send(&pgproto3.ErrorResponse{
				Severity: pgErr.Severity, SeverityUnlocalized: pgErr.SeverityUnlocalized,
				Code: pgErr.Code, Message: pgErr.Message, Detail: pgErr.Detail,
			})
			_ = be.Flush()
		}
		return serverResult{id: id, err: err}
	}
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{1, 2, 3, 4}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	if err := be.Flush(); err != nil {
		return serverResult{id: id, err: err}
	}
	// Read until the client's Terminate and hang-up so its writes never block.
	for {
		if _, err := be.Receive(); err != nil {
			return serverResult{id: id}
		}
	}
}

func TestAuthenticateWithPgconn(t *testing.T) {
	cert := selfSigned(t)
	otherCert := selfSigned(t)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}}
	dir := testDirectory(t)

	plain := NewAuthenticator(dir)
	withCert := NewAuthenticator(dir, WithServerCertificate(cert.Leaf))
	wrongCert := NewAuthenticator(dir, WithServerCertificate(otherCert.Leaf))

	const base = "host=pipe dbname=app sslmode=disable "
	const tlsBase = "host=pipe dbname=app sslmode=require "
	tests := []struct {
		name       string
		a          *Authenticator
		conn       string
		tls        *tls.Config
		wantTenant string
		wantCode   string
		wantMsg    string
	}{
		{"verifier user", plain, base + "user=alice password=alice-pw", nil, "acme", "", ""},
		{"plaintext user", plain, base + "user=bob password=bob-pw", nil, "globex", "", ""},
		{"wrong password", plain, base + "user=alice password=nope", nil, "", "28P01", `password authentication failed for user "alice"`},
		{"unknown user", plain, base + "user=mallory password=nope", nil, "", "28P01", `password authentication failed for user "mallory"`},
		{"empty password", plain, base + "user=alice password=''", nil, "", "28P01", `password authentication failed for user "alice"`},
		{"quote in user name", plain, base + `user='o"neil' password=x`, nil, "", "28P01", `password authentication failed for user "o"neil"`},
		{"TLS with channel binding", withCert, tlsBase + "channel_binding=require user=alice password=alice-pw", serverTLS, "acme", "", ""},
		{"TLS binding disabled by client", withCert, tlsBase + "channel_binding=disable user=bob password=bob-pw", serverTLS, "globex", "", ""},
		{"TLS wrong password with binding", withCert, tlsBase + "user=alice password=nope", serverTLS, "", "28P01", `password authentication failed for user "alice"`},
		{"TLS without server cert", plain, tlsBase + "user=alice password=alice-pw", serverTLS, "acme", "", ""},
		{"TLS binding mismatch", wrongCert, tlsBase + "channel_binding=require user=alice password=alice-pw", serverTLS, "", "28000", "SCRAM channel binding check failed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, clientErr := connect(t, tt.a, tt.conn, tt.tls)
			if tt.wantCode == "" {
				if clientErr != nil || res.err != nil {
					t.Fatalf("client error %v, server error %v", clientErr, res.err)
				}
				if res.id.Tenant != tt.wantTenant || res.id.Method != "scram-sha-256" {
					t.Errorf("Identity = %+v, want tenant %q", res.id, tt.wantTenant)
				}
				return
			}
			// Client-visible error.
			var pgErr *pgconn.PgError
			if !errors.As(clientErr, &pgErr) {
				t.Fatalf("client error %v is not a PgError", clientErr)
			}
			if pgErr.Severity != "FATAL" || pgErr.Code != tt.wantCode || pgErr.Message != tt.wantMsg {
				t.Errorf("client got %s %s %q, want FATAL %s %q", pgErr.Severity, pgErr.Code, pgErr.Message, tt.wantCode, tt.wantMsg)
			}
			// Server-side return value.
			var srvErr *pgconn.PgError
			if !errors.As(res.err, &srvErr) || srvErr.Code != tt.wantCode || srvErr.Message != tt.wantMsg {
				t.Errorf("Authenticate error = %v, want %s %q", res.err, tt.wantCode, tt.wantMsg)
			}
			if !isZero(res.id) {
				t.Errorf("Identity = %+v on failure, want zero", res.id)
			}
		})
	}
}

// The wrong-password and unknown-user failures must be indistinguishable.
func TestUnknownUserLooksLikeWrongPassword(t *testing.T) {
	a := NewAuthenticator(testDirectory(t))
	const base = "host=pipe sslmode=disable password=nope user="
	_, errKnown := connect(t, a, base+"alice", nil)
	_, errUnknown := connect(t, a, base+"nobody", nil)
	var k, u *pgconn.PgError
	if !errors.As(errKnown, &k) || !errors.As(errUnknown, &u) {
		t.Fatalf("errors: %v / %v", errKnown, errUnknown)
	}
	u.Message = strings.Replace(u.Message, "nobody", "alice", 1)
	if *k != *u {
		t.Errorf("known user error %+v differs from unknown user error %+v", *k, *u)
	}
}

// rawExchange runs Authenticate against a hand-driven frontend, for messages a
// well-behaved client never sends.
func rawExchange(t *testing.T, a *Authenticator, user string, tlsState *tls.ConnectionState, script func(fe *pgproto3.Frontend)) (Identity, error) {
	t.Helper()
	return rawExchangeConn(t, a, user, ConnInfo{TLS: tlsState}, script)
}

func rawExchangeConn(t *testing.T, a *Authenticator, user string, conn ConnInfo, script func(fe *pgproto3.Frontend)) (Identity, error) {
	t.Helper()
	clientConn, serverConn := net.Pipe()
	done := make(chan serverResult, 1)
	go func() {
		defer serverConn.Close()
		id, err := a.Authenticate(pgproto3.NewBackend(serverConn, serverConn), user, conn)
		done <- serverResult{id, err}
	}()
	script(pgproto3.NewFrontend(clientConn, clientConn))
	// net.Pipe writes complete only once read, so the server has everything the
	// script sent; hanging up now ends any wait for more.
	clientConn.Close()
	res := <-done
	return res.id, res.err
}

func receiveSASL(t *testing.T, fe *pgproto3.Frontend) []string {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Errorf("receiving AuthenticationSASL: %v", err)
		return nil
	}
	m, ok := msg.(*pgproto3.AuthenticationSASL)
	if !ok {
		t.Errorf("got %T, want AuthenticationSASL", msg)
		return nil
	}
	return slices.Clone(m.AuthMechanisms)
}

func sendInitial(fe *pgproto3.Frontend, mech, data string) {
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: mech, Data: []byte(data)})
	_ = fe.Flush()
}

// receiveServerFirst returns the server-first-message, or "" on error.
func receiveServerFirst(t *testing.T, fe *pgproto3.Frontend) string {
	t.Helper()
	msg, err := fe.Receive()
	if err != nil {
		t.Errorf("receiving AuthenticationSASLContinue: %v", err)
		return ""
	}
	m, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Errorf("got %T, want AuthenticationSASLContinue", msg)
		return ""
	}
	return string(m.Data)
}

func TestMechanismList(t *testing.T) {
	dir := testDirectory(t)
	cert := selfSigned(t)
	tests := []struct {
		name     string
		a        *Authenticator
		tlsState *tls.ConnectionState
		want     []string
	}{
		{"plaintext", NewAuthenticator(dir), nil, []string{"SCRAM-SHA-256"}},
		{"plaintext with cert configured", NewAuthenticator(dir, WithServerCertificate(cert.Leaf)), nil, []string{"SCRAM-SHA-256"}},
		{"TLS with cert", NewAuthenticator(dir, WithServerCertificate(cert.Leaf)), &tls.ConnectionState{}, []string{"SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"}},
		{"TLS without cert", NewAuthenticator(dir), &tls.ConnectionState{}, []string{"SCRAM-SHA-256"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			_, err := rawExchange(t, tt.a, "alice", tt.tlsState, func(fe *pgproto3.Frontend) {
				got = receiveSASL(t, fe)
			})
			if !slices.Equal(got, tt.want) {
				t.Errorf("mechanisms = %v, want %v", got, tt.want)
			}
			// The client hung up: a connection error, not something to send.
			var pgErr *pgconn.PgError
			if err == nil || errors.As(err, &pgErr) {
				t.Errorf("err = %v, want a non-PgError connection error", err)
			}
		})
	}
}

func TestProtocolErrors(t *testing.T) {
	dir := testDirectory(t)
	cert := selfSigned(t)
	plus := NewAuthenticator(dir, WithServerCertificate(cert.Leaf))
	tlsState := &tls.ConnectionState{}

	initial := func(mech, data string) func(*testing.T, *pgproto3.Frontend) {
		return func(t *testing.T, fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			sendInitial(fe, mech, data)
		}
	}
	tests := []struct {
		name     string
		tlsState *tls.ConnectionState
		script   func(*testing.T, *pgproto3.Frontend)
		wantCode string
		wantMsg  string
	}{
		{"unoffered mechanism", nil, initial("SCRAM-SHA-1", "n,,n=,r=abc"), "08P01", "client selected an invalid SASL authentication mechanism"},
		{"PLUS without TLS", nil, initial("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=abc"), "08P01", "client selected an invalid SASL authentication mechanism"},
		{"PLUS without binding data", tlsState, initial("SCRAM-SHA-256-PLUS", "n,,n=,r=abc"), "08P01", "malformed SCRAM message"},
		{"plain mechanism with binding data", tlsState, initial("SCRAM-SHA-256", "p=tls-server-end-point,,n=,r=abc"), "08P01", "malformed SCRAM message"},
		{"downgrade flag y while PLUS offered", tlsState, initial("SCRAM-SHA-256", "y,,n=,r=abc"), "28000", "SCRAM channel binding negotiation error"},
		{"unsupported binding type", tlsState, initial("SCRAM-SHA-256-PLUS", "p=tls-unique,,n=,r=abc"), "0A000", "unsupported SCRAM channel-binding type"},
		{"authorization identity", nil, initial("SCRAM-SHA-256", "n,a=bob,n=,r=abc"), "0A000", "client uses authorization identity, but it is not supported"},
		{"garbage client-first", nil, initial("SCRAM-SHA-256", "garbage"), "08P01", "malformed SCRAM message"},
		{"empty client-first", nil, initial("SCRAM-SHA-256", ""), "08P01", "malformed SCRAM message"},
		{"missing nonce", nil, initial("SCRAM-SHA-256", "n,,n=,x=abc"), "08P01", "malformed SCRAM message"},
		{"query instead of SASLInitialResponse", nil, func(t *testing.T, fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			fe.Send(&pgproto3.Query{String: "select 1"})
			_ = fe.Flush()
		}, "08P01", "expected SASL response"},
		{"bad nonce in client-final", nil, func(t *testing.T, fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			sendInitial(fe, "SCRAM-SHA-256", "n,,n=,r=abc")
			receiveServerFirst(t, fe)
			fe.Send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=other,p=AAAA")})
			_ = fe.Flush()
		}, "08P01", "malformed SCRAM message"},
		{"wrong proof", nil, func(t *testing.T, fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			sendInitial(fe, "SCRAM-SHA-256", "n,,n=,r=abc")
			first := receiveServerFirst(t, fe)
			nonce, _, _ := strings.Cut(strings.TrimPrefix(first, "r="), ",")
			fe.Send(&pgproto3.SASLResponse{Data: []byte("c=biws,r=" + nonce + ",p=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")})
			_ = fe.Flush()
		}, "28P01", `password authentication failed for user "alice"`},
		{"query instead of SASLResponse", nil, func(t *testing.T, fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			sendInitial(fe, "SCRAM-SHA-256", "n,,n=,r=abc")
			receiveServerFirst(t, fe)
			fe.Send(&pgproto3.Query{String: "select 1"})
			_ = fe.Flush()
		}, "08P01", "expected SASL response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := rawExchange(t, plus, "alice", tt.tlsState, func(fe *pgproto3.Frontend) { tt.script(t, fe) })
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("err = %v, want *pgconn.PgError", err)
			}
			if pgErr.Severity != "FATAL" || pgErr.Code != tt.wantCode || pgErr.Message != tt.wantMsg {
				t.Errorf("got %s %s %q (detail %q), want FATAL %s %q", pgErr.Severity, pgErr.Code, pgErr.Message, pgErr.Detail, tt.wantCode, tt.wantMsg)
			}
			if !isZero(id) {
				t.Errorf("Identity = %+v on failure", id)
			}
		})
	}
}

func TestClientHangsUpMidExchange(t *testing.T) {
	a := NewAuthenticator(testDirectory(t))
	_, err := rawExchange(t, a, "alice", nil, func(fe *pgproto3.Frontend) {
		receiveSASL(t, fe)
		sendInitial(fe, "SCRAM-SHA-256", "n,,n=,r=abc")
		receiveServerFirst(t, fe)
	})
	var pgErr *pgconn.PgError
	if err == nil || errors.As(err, &pgErr) {
		t.Errorf("err = %v, want a connection error that is not a PgError", err)
	}
}

// An unknown user gets a stable salt across attempts (like a real user), which
// differs between users and between processes.
func TestMockSalt(t *testing.T) {
	dir := testDirectory(t)
	a := NewAuthenticator(dir)
	b := NewAuthenticator(dir)
	serverFirst := func(a *Authenticator, user string) (salt, iters string) {
		_, _ = rawExchange(t, a, user, nil, func(fe *pgproto3.Frontend) {
			receiveSASL(t, fe)
			sendInitial(fe, "SCRAM-SHA-256", "n,,n=,r=abc")
			for _, f := range strings.Split(receiveServerFirst(t, fe), ",") {
				switch {
				case strings.HasPrefix(f, "s="):
					salt = f[2:]
				case strings.HasPrefix(f, "i="):
					iters = f[2:]
				}
			}
		})
		return salt, iters
	}
	s1, i1 := serverFirst(a, "ghost")
	s2, _ := serverFirst(a, "ghost")
	s3, _ := serverFirst(a, "phantom")
	s4, _ := serverFirst(b, "ghost")
	if s1 == "" || s1 != s2 {
		t.Errorf("mock salt not stable: %q then %q", s1, s2)
	}
	if s1 == s3 {
		t.Error("different unknown users share a mock salt")
	}
	if s1 == s4 {
		t.Error("mock salt does not depend on the per-process secret")
	}
	if i1 != "4096" {
		t.Errorf("mock iterations = %q, want 4096", i1)
	}
	realSalt, _ := serverFirst(a, "alice")
	if len(realSalt) != len(s1) {
		t.Errorf("mock salt %q has a different shape from a real salt %q", s1, realSalt)
	}
}

func isZero(id Identity) bool { return reflect.DeepEqual(id, Identity{}) }
