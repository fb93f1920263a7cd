package auth

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgtenant/pgtenant/config"
)

// jwtRouting is what WithJWT configures.
type jwtRouting struct {
	verifier            *JWTVerifier
	methodFor           func(user string) string
	cleartextOnLoopback bool
}

// WithJWT lets users for whom methodFor returns config.MethodJWT (the proxy
// passes config.Config.MethodFor) authenticate with a JWT sent as the
// password, verified by v. Other users keep SCRAM. The token travels as a
// cleartext password, so it is asked for only on a TLS connection, or, with
// cleartextOnLoopback, also on a plaintext one from a loopback address.
func WithJWT(v *JWTVerifier, methodFor func(user string) string, cleartextOnLoopback bool) Option {
	return func(a *Authenticator) {
		a.jwt = jwtRouting{verifier: v, methodFor: methodFor, cleartextOnLoopback: cleartextOnLoopback}
	}
}

// Authenticate authenticates the startup user on be with the user's method:
// SCRAM-SHA-256 (the default; SCRAM-SHA-256-PLUS is offered as well on TLS
// when WithServerCertificate was given) or, with WithJWT, a JWT sent as a
// cleartext password.
//
// On success it has sent AuthenticationOk (flushed) and returns the
// Identity. It does not send errors to the client: an authentication or
// protocol failure is returned as a *pgconn.PgError with Severity "FATAL" for
// the caller to send. Any other error means the connection itself failed and
// nothing more can be sent. Authenticate sets no deadlines; the caller should
// bound the whole exchange.
func (a *Authenticator) Authenticate(be *pgproto3.Backend, user string, conn ConnInfo) (Identity, error) {
	method := config.MethodSCRAM
	if a.jwt.methodFor != nil {
		method = a.jwt.methodFor(user)
	}
	switch method {
	case config.MethodSCRAM:
		return a.authenticateSCRAM(be, user, conn.TLS)
	case config.MethodJWT:
		return a.authenticateJWT(be, user, conn)
	}
	// Fail closed on a method this build does not know.
	return Identity{}, fatal(codeInvalidAuthSpec, fmt.Sprintf("no usable authentication method for user %q", user), "")
}

// authenticateJWT asks for the password (the token) with
// AuthenticationCleartextPassword and verifies it. On a plaintext
// connection that is not an allowed loopback one it refuses before asking,
// so a client never sends its token in the clear.
func (a *Authenticator) authenticateJWT(be *pgproto3.Backend, user string, conn ConnInfo) (Identity, error) {
	if a.jwt.verifier == nil {
		return Identity{}, fatal(codeInvalidAuthSpec, fmt.Sprintf("JWT authentication for user %q is not configured", user), "")
	}
	if conn.TLS == nil && !(a.jwt.cleartextOnLoopback && conn.Loopback) {
		return Identity{}, fatal(codeInvalidAuthSpec,
			fmt.Sprintf("JWT authentication for user %q requires a TLS connection (sslmode=require)", user), "")
	}

	be.Send(&pgproto3.AuthenticationCleartextPassword{})
	if err := be.Flush(); err != nil {
		return Identity{}, fmt.Errorf("auth: sending AuthenticationCleartextPassword: %w", err)
	}
	if err := be.SetAuthType(pgproto3.AuthTypeCleartextPassword); err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	msg, err := be.Receive()
	if err != nil {
		return Identity{}, receivePasswordError(err)
	}
	pw, ok := msg.(*pgproto3.PasswordMessage)
	if !ok {
		return Identity{}, fatal(codeProtocolViolation, messageExpectedPassword, fmt.Sprintf("The client sent %T.", msg))
	}

	id, err := a.jwt.verifier.Verify(pw.Password, user)
	if err != nil {
		return Identity{}, err
	}
	be.Send(&pgproto3.AuthenticationOk{})
	if err := be.Flush(); err != nil {
		return Identity{}, fmt.Errorf("auth: sending AuthenticationOk: %w", err)
	}
	_ = be.SetAuthType(pgproto3.AuthTypeOk)
	return id, nil
}

const messageExpectedPassword = "expected password response"

// receivePasswordError is receiveError for the password exchange.
func receivePasswordError(err error) error {
	var netErr net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr) {
		return fmt.Errorf("auth: reading password message: %w", err)
	}
	return fatal(codeProtocolViolation, messageExpectedPassword, "")
}

// IsLoopback reports whether a client's remote address is a loopback one
// (127.0.0.0/8, ::1, ::ffff:127.0.0.1) or a Unix socket.
func IsLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case nil:
		return false
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UDPAddr:
		return a.IP.IsLoopback()
	case *net.IPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	if addr.Network() == "unix" {
		return true
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		host = addr.String()
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
