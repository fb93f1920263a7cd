package proxy

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup packet codes (PostgreSQL's pqcomm.h).
const (
	sslRequestCode    = 80877103
	gssEncRequestCode = 80877104
	cancelRequestCode = 80877102
	// PostgreSQL refuses startup packets above this size (MAX_STARTUP_PACKET_LENGTH).
	maxStartupPacketLen = 10000
	// maxAuthMessageLen bounds a password message (PostgreSQL's PG_MAX_AUTH_TOKEN_LENGTH).
	maxAuthMessageLen = 65535
)

// startup is what a client asked for in its startup packet.
type startup struct {
	conn   net.Conn // the client connection, TLS-wrapped when negotiated
	tls    *tls.ConnectionState
	cancel *pgproto3.CancelRequest // set when the connection is a cancel request
	minor  uint32                  // requested protocol minor version
	params map[string]string
	pqOpts []string // _pq_.* protocol options, none of which we support
}

// readStartup reads the startup sequence: any number of SSLRequest and
// GSSENCRequest negotiations, then a StartupMessage or CancelRequest. It reads
// exact lengths straight from the connection so that no byte sent after a
// negotiation response is buffered on the wrong side of a TLS upgrade. The
// returned startup is never nil: on error its conn is the one (TLS or not)
// on which to report it.
func readStartup(conn net.Conn, tlsConfig *tls.Config) (*startup, error) {
	st := &startup{conn: conn}
	return st, st.read(tlsConfig)
}

func (st *startup) read(tlsConfig *tls.Config) error {
	for {
		packet, err := readStartupPacket(st.conn)
		if err != nil {
			return err
		}
		code := binary.BigEndian.Uint32(packet)
		switch {
		case code == sslRequestCode:
			if st.tls != nil {
				return fatalf(codeProtocolViolation, "SSLRequest received on an encrypted connection")
			}
			if tlsConfig == nil {
				if _, err := st.conn.Write([]byte{'N'}); err != nil {
					return err
				}
				continue
			}
			if _, err := st.conn.Write([]byte{'S'}); err != nil {
				return err
			}
			tlsConn := tls.Server(st.conn, tlsConfig)
			if err := tlsConn.Handshake(); err != nil {
				return fmt.Errorf("TLS handshake: %w", err)
			}
			state := tlsConn.ConnectionState()
			st.conn, st.tls = tlsConn, &state
		case code == gssEncRequestCode:
			// No GSSAPI here: decline, as a server built without it does.
			if _, err := st.conn.Write([]byte{'N'}); err != nil {
				return err
			}
		case code == cancelRequestCode:
			var cr pgproto3.CancelRequest
			if err := cr.Decode(packet); err != nil {
				return fatalf(codeProtocolViolation, "invalid cancel request: %v", err)
			}
			st.cancel = &cr
			return nil
		case code>>16 == 3:
			st.minor = code & 0xffff
			// Decode as 3.0; the minor version was recorded above.
			binary.BigEndian.PutUint32(packet, pgproto3.ProtocolVersion30)
			var sm pgproto3.StartupMessage
			if err := sm.Decode(packet); err != nil {
				return fatalf(codeProtocolViolation, "invalid startup packet layout: %v", err)
			}
			st.params = make(map[string]string, len(sm.Parameters))
			for k, v := range sm.Parameters {
				if strings.HasPrefix(k, "_pq_.") {
					st.pqOpts = append(st.pqOpts, k)
					continue
				}
				st.params[k] = v
			}
			return nil
		default:
			return fatalf(codeFeatureNotSupported, "unsupported frontend protocol %d.%d: server supports 3.0 to 3.0", code>>16, code&0xffff)
		}
	}
}

func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupPacketLen {
		return nil, fatalf(codeProtocolViolation, "invalid length of startup packet")
	}
	packet := make([]byte, n-4)
	if _, err := io.ReadFull(r, packet); err != nil {
		return nil, fatalf(codeProtocolViolation, "incomplete startup packet")
	}
	return packet, nil
}
