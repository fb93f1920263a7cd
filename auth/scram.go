package auth

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// SASL mechanism names as PostgreSQL spells them.
const (
	MechSCRAMSHA256     = "SCRAM-SHA-256"
	MechSCRAMSHA256Plus = "SCRAM-SHA-256-PLUS"
)

// SQLSTATE codes used for authentication failures.
const (
	codeInvalidPassword      = "28P01"
	codeInvalidAuthSpec      = "28000"
	codeProtocolViolation    = "08P01"
	codeFeatureNotSupported  = "0A000"
	messageMalformedSCRAM    = "malformed SCRAM message"
	messageInvalidMechanism  = "client selected an invalid SASL authentication mechanism"
	messageExpectedSASLReply = "expected SASL response"
)

// Authenticator runs the server side of SCRAM-SHA-256 against a Directory
// and, with WithJWT, of a JWT sent as a cleartext password. It is safe for
// concurrent use.
type Authenticator struct {
	dir Directory
	jwt jwtRouting
	// mockSecret makes mock salts for unknown users stable within a process
	// but unpredictable, as PostgreSQL's mock authentication nonce does.
	mockSecret []byte
	// serverCert is the leaf certificate clients see; tls-server-end-point
	// binding hashes it. The server side of a tls.ConnectionState does not
	// carry its own certificate, so it has to be supplied.
	serverCert *x509.Certificate
}

// Option configures an Authenticator.
type Option func(*Authenticator)

// WithServerCertificate sets the certificate the TLS listener presents, which
// SCRAM-SHA-256-PLUS (tls-server-end-point) needs. Without it TLS clients are
// offered plain SCRAM-SHA-256 only.
func WithServerCertificate(leaf *x509.Certificate) Option {
	return func(a *Authenticator) { a.serverCert = leaf }
}

// NewAuthenticator returns an Authenticator for dir with a fresh per-process mock secret.
func NewAuthenticator(dir Directory, opts ...Option) *Authenticator {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		// crypto/rand does not fail on supported platforms; if it did, mock salts
		// would become predictable, so refuse to continue.
		panic(fmt.Sprintf("auth: reading random mock secret: %v", err))
	}
	a := &Authenticator{dir: dir, mockSecret: secret}
	for _, o := range opts {
		o(a)
	}
	return a
}

// authenticateSCRAM runs SASL SCRAM-SHA-256 on be for the startup user. tlsState is non-nil when the client connection
// is TLS; then SCRAM-SHA-256-PLUS (tls-server-end-point channel binding) is offered as well, provided a server
// certificate was configured with WithServerCertificate, and SCRAM-SHA-256 is still accepted.
//
// On success it sends AuthenticationSASLFinal and AuthenticationOk (flushed) and returns the Identity. Errors are as
// for Authenticate.
func (a *Authenticator) authenticateSCRAM(be *pgproto3.Backend, user string, tlsState *tls.ConnectionState) (Identity, error) {
	entry, known := a.dir.Lookup(user)
	creds := entry.Credentials
	if !known {
		// Unknown users go through the whole exchange and fail exactly like a wrong
		// password, so the reply does not reveal which user names exist.
		creds = a.mockCredentials(user)
	}

	mechs := []string{MechSCRAMSHA256}
	var binding scram.ChannelBinding
	if tlsState != nil && a.serverCert != nil {
		var err error
		// NewTLSServerEndpointBinding hashes PeerCertificates[0], which is the
		// client's view; present our own leaf to it in that position.
		binding, err = scram.NewTLSServerEndpointBinding(&tls.ConnectionState{PeerCertificates: []*x509.Certificate{a.serverCert}})
		if err != nil {
			return Identity{}, fmt.Errorf("auth: computing tls-server-end-point channel binding: %w", err)
		}
		mechs = []string{MechSCRAMSHA256Plus, MechSCRAMSHA256}
	}

	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		// The SCRAM username is ignored (libpq sends none); the startup user counts.
		return creds, nil
	})
	if err != nil {
		return Identity{}, fmt.Errorf("auth: creating SCRAM server: %w", err)
	}
	conv := server.NewConversation()
	if binding.IsSupported() {
		conv = server.NewConversationWithChannelBinding(binding)
	}

	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: mechs})
	if err := be.Flush(); err != nil {
		return Identity{}, fmt.Errorf("auth: sending AuthenticationSASL: %w", err)
	}

	// Without SetAuthType pgproto3 would decode the 'p' message as a PasswordMessage.
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	msg, err := be.Receive()
	if err != nil {
		return Identity{}, receiveError(err)
	}
	initial, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return Identity{}, unexpectedMessage(msg)
	}
	if !slices.Contains(mechs, initial.AuthMechanism) {
		return Identity{}, fatal(codeProtocolViolation, messageInvalidMechanism, "")
	}
	if pgErr := checkGS2Header(initial.AuthMechanism, initial.Data); pgErr != nil {
		return Identity{}, pgErr
	}

	serverFirst, err := conv.Step(string(initial.Data))
	if err != nil {
		return Identity{}, firstStepError(serverFirst, err)
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	if err := be.Flush(); err != nil {
		return Identity{}, fmt.Errorf("auth: sending AuthenticationSASLContinue: %w", err)
	}

	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return Identity{}, fmt.Errorf("auth: %w", err)
	}
	msg, err = be.Receive()
	if err != nil {
		return Identity{}, receiveError(err)
	}
	final, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return Identity{}, unexpectedMessage(msg)
	}

	serverFinal, err := conv.Step(string(final.Data))
	if err != nil {
		return Identity{}, finalStepError(serverFinal, err, user)
	}
	if !conv.Valid() || !known {
		// Unreachable for a mock user unless someone guessed a random key; kept so
		// that an unknown user can never be let in.
		return Identity{}, passwordFailed(user)
	}

	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
	be.Send(&pgproto3.AuthenticationOk{})
	if err := be.Flush(); err != nil {
		return Identity{}, fmt.Errorf("auth: sending AuthenticationOk: %w", err)
	}
	// Leave the decoder out of SASL mode for whatever the caller reads next.
	_ = be.SetAuthType(pgproto3.AuthTypeOk)
	return Identity{User: user, Tenant: entry.Tenant, Method: MethodSCRAMSHA256, Role: entry.Role, ReadOnly: entry.ReadOnly,
		Upstream: entry.Upstream, Schema: entry.Schema, Limits: entry.Limits}, nil
}

// mockCredentials derives stable fake credentials for an unknown user: the same
// salt on every attempt, as for a real user, so probing cannot tell them apart.
func (a *Authenticator) mockCredentials(user string) scram.StoredCredentials {
	derive := func(label string) []byte {
		m := hmac.New(sha256.New, a.mockSecret)
		m.Write([]byte(label))
		m.Write([]byte{0})
		m.Write([]byte(user))
		return m.Sum(nil)
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(derive("salt")[:defaultSaltLen]), Iters: defaultIterations},
		StoredKey:  derive("stored-key"),
		ServerKey:  derive("server-key"),
	}
}

// checkGS2Header enforces what xdg-go/scram cannot know: that the channel
// binding flag agrees with the mechanism the client picked, and (as in
// PostgreSQL) that no authorization identity is sent.
func checkGS2Header(mech string, data []byte) *pgconn.PgError {
	fields := strings.SplitN(string(data), ",", 3)
	if len(fields) < 3 {
		return fatal(codeProtocolViolation, messageMalformedSCRAM, "The client-first-message is incomplete.")
	}
	cbFlag, authzID := fields[0], fields[1]
	switch {
	case mech == MechSCRAMSHA256Plus && !strings.HasPrefix(cbFlag, "p="):
		return fatal(codeProtocolViolation, messageMalformedSCRAM,
			"The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.")
	case mech == MechSCRAMSHA256 && strings.HasPrefix(cbFlag, "p"):
		return fatal(codeProtocolViolation, messageMalformedSCRAM,
			"The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.")
	case authzID != "":
		return fatal(codeFeatureNotSupported, "client uses authorization identity, but it is not supported", "")
	}
	return nil
}

func firstStepError(serverMsg string, err error) *pgconn.PgError {
	switch serverMsg {
	case scram.ErrServerDoesSupportChannelBinding:
		return fatal(codeInvalidAuthSpec, "SCRAM channel binding negotiation error",
			"The client supports SCRAM channel binding but thinks the server does not. However, this server does support channel binding.")
	case scram.ErrUnsupportedChannelBindingType:
		return fatal(codeFeatureNotSupported, "unsupported SCRAM channel-binding type", err.Error())
	}
	return fatal(codeProtocolViolation, messageMalformedSCRAM, err.Error())
}

func finalStepError(serverMsg string, err error, user string) *pgconn.PgError {
	switch serverMsg {
	case scram.ErrInvalidProof:
		return passwordFailed(user)
	case scram.ErrChannelBindingsDontMatch:
		return fatal(codeInvalidAuthSpec, "SCRAM channel binding check failed", "")
	}
	return fatal(codeProtocolViolation, messageMalformedSCRAM, err.Error())
}

// passwordFailed is the one error for both a wrong password and an unknown user.
func passwordFailed(user string) *pgconn.PgError {
	return fatal(codeInvalidPassword, `password authentication failed for user "`+user+`"`, "")
}

func unexpectedMessage(msg pgproto3.FrontendMessage) *pgconn.PgError {
	return fatal(codeProtocolViolation, messageExpectedSASLReply, fmt.Sprintf("The client sent %T.", msg))
}

// receiveError separates a broken connection (nothing can be sent) from a
// message pgproto3 could not decode (a protocol violation worth reporting).
func receiveError(err error) error {
	var netErr net.Error
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &netErr) {
		return fmt.Errorf("auth: reading SASL response: %w", err)
	}
	return fatal(codeProtocolViolation, messageExpectedSASLReply, err.Error())
}

func fatal(code, message, detail string) *pgconn.PgError {
	return &pgconn.PgError{
		Severity:            "FATAL",
		SeverityUnlocalized: "FATAL",
		Code:                code,
		Message:             message,
		Detail:              detail,
	}
}
