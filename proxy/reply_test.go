package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// replyCore is a session-mode relay with no sockets: what the client sent
// is recorded in its ledger as sent, the upstream's replies come from
// memory, and what the client gets is collected.
type replyCore struct {
	r      *relay
	client bytes.Buffer
}

func newReplyCore(t *testing.T) *replyCore {
	t.Helper()
	c := &replyCore{}
	c.r = newRelay(nil, nil, nil, nil, ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})), nil, zeroTime)
	c.r.cw = bufio.NewWriterSize(&c.client, relayBufSize)
	c.r.uw = bufio.NewWriter(io.Discard)
	return c
}

// unit records a unit of messages: the client's (msgs), or pgtenant's own
// when o is not fromClient.
func (c *replyCore) unit(t *testing.T, o origin, msgs ...pgproto3.FrontendMessage) {
	t.Helper()
	c.r.seq = c.r.ledger.begin()
	for _, m := range msgs {
		b, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if o == fromClient {
			err = c.r.sendClient(b, false)
		} else {
			err = c.r.sendMsgs(b, o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// run drives the core with the upstream's replies from memory (the
// session-mode driver over a reader with no socket under it) and returns
// what the client got and how the reply side ended.
func (c *replyCore) run(t *testing.T, replies []byte) ([]pgproto3.BackendMessage, error) {
	t.Helper()
	c.r.ur = bufio.NewReaderSize(bytes.NewReader(replies), relayBufSize)
	err := c.r.upstreamToClient()
	_ = c.r.cw.Flush()
	return decodeBackend(t, c.client.Bytes()), err
}

func encodeBackend(t *testing.T, msgs ...pgproto3.BackendMessage) []byte {
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

func decodeBackend(t *testing.T, b []byte) []pgproto3.BackendMessage {
	t.Helper()
	fe := pgproto3.NewFrontend(bytes.NewReader(b), io.Discard)
	var out []pgproto3.BackendMessage
	for {
		m, err := fe.Receive()
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("client stream: %v", err)
		}
		out = append(out, typeOnly(m))
	}
}

// typeOnly keeps what the comparisons need of a decoded message (the
// frontend reuses its message structs).
func typeOnly(m pgproto3.BackendMessage) pgproto3.BackendMessage {
	switch m := m.(type) {
	case *pgproto3.DataRow:
		vals := make([][]byte, len(m.Values))
		for i, v := range m.Values {
			vals[i] = append([]byte(nil), v...)
		}
		return &pgproto3.DataRow{Values: vals}
	case *pgproto3.ErrorResponse:
		return &pgproto3.ErrorResponse{Severity: m.Severity, Code: m.Code, Message: m.Message}
	case *pgproto3.CommandComplete:
		return &pgproto3.CommandComplete{CommandTag: append([]byte(nil), m.CommandTag...)}
	case *pgproto3.ReadyForQuery:
		return &pgproto3.ReadyForQuery{TxStatus: m.TxStatus}
	case *pgproto3.NoticeResponse:
		return &pgproto3.NoticeResponse{Severity: m.Severity, Code: m.Code, Message: m.Message}
	case *pgproto3.ParameterStatus:
		return &pgproto3.ParameterStatus{Name: m.Name, Value: m.Value}
	}
	return m
}

// TestReplyCore drives the reply side's core with bytes only, in memory:
// which of the upstream's replies the client gets, and what ends the
// session.
func TestReplyCore(t *testing.T) {
	query := &pgproto3.Query{String: "SELECT 1"}
	assertion := &pgproto3.Query{String: "SET app.tenant_id = 't1'"}
	bigRow := &pgproto3.DataRow{Values: [][]byte{[]byte(strings.Repeat("x", 3*relayBufSize+17))}}
	idle := &pgproto3.ReadyForQuery{TxStatus: 'I'}
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	done := &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}
	setDone := &pgproto3.CommandComplete{CommandTag: []byte("SET")}
	notice := &pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "hello"}
	longError := &pgproto3.ErrorResponse{Severity: "ERROR", Code: "23505", Message: "duplicate key", Detail: strings.Repeat("k", 2*relayBufSize)}
	fatal := &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command", Detail: strings.Repeat("d", 2*relayBufSize)}
	tests := []struct {
		desc    string
		sent    func(t *testing.T, c *replyCore)
		replies []pgproto3.BackendMessage
		want    []pgproto3.BackendMessage
		// wantCode is the SQLSTATE of the error pgtenant ends the session
		// with; "": none, the reply side ends when the upstream closes.
		wantCode string
		after    func(t *testing.T, c *replyCore) // more checks, or nil
	}{
		{
			desc:    "the replies to a Query go to the client as they are",
			sent:    func(t *testing.T, c *replyCore) { c.unit(t, fromClient, query) },
			replies: []pgproto3.BackendMessage{row, done, idle},
			want:    []pgproto3.BackendMessage{row, done, idle},
		},
		{
			desc: "the replies to pgtenant's assertion are hidden, the client's relayed",
			sent: func(t *testing.T, c *replyCore) {
				c.r.seq = c.r.ledger.begin()
				b, _ := assertion.Encode(nil)
				if err := c.r.sendMsgs(b, fromAssertSimple); err != nil {
					t.Fatal(err)
				}
				if err := c.r.sendClient(mustEncodeFrontend(t, query), false); err != nil {
					t.Fatal(err)
				}
			},
			replies: []pgproto3.BackendMessage{setDone, idle, row, done, idle},
			want:    []pgproto3.BackendMessage{row, done, idle},
		},
		{
			desc:    "a row larger than the read buffer is streamed whole",
			sent:    func(t *testing.T, c *replyCore) { c.unit(t, fromClient, query) },
			replies: []pgproto3.BackendMessage{bigRow, done, idle},
			want:    []pgproto3.BackendMessage{bigRow, done, idle},
		},
		{
			desc:    "a row larger than the read buffer answering pgtenant's own Query is dropped whole",
			sent:    func(t *testing.T, c *replyCore) { c.unit(t, fromReassert, assertion); c.unit(t, fromClient, query) },
			replies: []pgproto3.BackendMessage{bigRow, setDone, idle, row, done, idle},
			want:    []pgproto3.BackendMessage{row, done, idle},
		},
		{
			desc:    "a notice with nothing outstanding goes to the client",
			replies: []pgproto3.BackendMessage{notice},
			want:    []pgproto3.BackendMessage{notice},
		},
		{
			desc:    "an error larger than the read buffer reaches the client whole",
			sent:    func(t *testing.T, c *replyCore) { c.unit(t, fromClient, query) },
			replies: []pgproto3.BackendMessage{longError, idle},
			want:    []pgproto3.BackendMessage{longError, idle},
		},
		{
			desc:    "a FATAL larger than the read buffer is the last word",
			sent:    func(t *testing.T, c *replyCore) { c.unit(t, fromClient, query) },
			replies: []pgproto3.BackendMessage{fatal},
			want:    []pgproto3.BackendMessage{fatal},
			after: func(t *testing.T, c *replyCore) {
				if !c.r.sawFatal {
					t.Error("the FATAL was not noted: the client would get a second error")
				}
			},
		},
		{
			desc:     "a reply nobody asked for ends the session",
			replies:  []pgproto3.BackendMessage{row},
			wantCode: codeProtocolViolation,
		},
		{
			desc: "a failed assertion ahead of a Query ends the session",
			sent: func(t *testing.T, c *replyCore) {
				c.r.seq = c.r.ledger.begin()
				if err := c.r.sendMsgs(mustEncodeFrontend(t, assertion), fromAssertSimple); err != nil {
					t.Fatal(err)
				}
				if err := c.r.sendClient(mustEncodeFrontend(t, query), false); err != nil {
					t.Fatal(err)
				}
			},
			replies:  []pgproto3.BackendMessage{&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42501", Message: "permission denied"}, idle},
			wantCode: "42501",
		},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			c := newReplyCore(t)
			if tt.sent != nil {
				tt.sent(t, c)
			}
			got, err := c.run(t, encodeBackend(t, tt.replies...))
			var pe *pgconn.PgError
			switch {
			case tt.wantCode == "" && !errors.Is(err, errUpstreamLost):
				t.Fatalf("reply side ended with %v, want the upstream closing", err)
			case tt.wantCode != "" && (!errors.As(err, &pe) || pe.Code != tt.wantCode):
				t.Fatalf("reply side ended with %v, want SQLSTATE %s", err, tt.wantCode)
			}
			if !equalBackend(got, tt.want) {
				t.Fatalf("client got %d messages %s, want %d %s", len(got), describe(got), len(tt.want), describe(tt.want))
			}
			if tt.after != nil {
				tt.after(t, c)
			}
		})
	}
}

func mustEncodeFrontend(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func equalBackend(a, b []pgproto3.BackendMessage) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, err1 := typeOnly(a[i]).Encode(nil)
		y, err2 := typeOnly(b[i]).Encode(nil)
		if err1 != nil || err2 != nil || !bytes.Equal(x, y) {
			return false
		}
	}
	return true
}

func describe(msgs []pgproto3.BackendMessage) string {
	var sb strings.Builder
	for _, m := range msgs {
		b, _ := m.Encode(nil)
		if len(b) > 0 {
			sb.WriteByte(b[0])
		}
	}
	return sb.String()
}
