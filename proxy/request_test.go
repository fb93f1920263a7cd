package proxy

import (
	"bufio"
	"bytes"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/guard"
)

// TestRequestCore hands the request side's core one message at a time as
// bytes, with no client reader under the relay at all (a read would panic):
// what goes upstream, and what of a message larger than the read buffer the
// core leaves the driver to move.
func TestRequestCore(t *testing.T) {
	bigData := &pgproto3.CopyData{Data: bytes.Repeat([]byte("x"), 3*relayBufSize)}
	bigBind := &pgproto3.Bind{PreparedStatement: "s", Parameters: [][]byte{bytes.Repeat([]byte("y"), 2*relayBufSize)}}
	longQuery := &pgproto3.Query{String: "SELECT '" + strings.Repeat("z", 2*relayBufSize) + "'"}
	tests := []struct {
		desc  string
		guard bool
		msgs  []pgproto3.FrontendMessage
		// head: the core is given only the first relayBufSize bytes of a
		// larger message, as the driver does when the core does not read
		// it whole.
		head     bool
		wantRest int  // what the driver still moves of the last message
		wantPass bool // upstream (true) or nowhere
	}{
		{desc: "a Query goes up whole", guard: true, msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "SELECT 1"}}},
		{desc: "an extended group goes up whole", guard: true, msgs: []pgproto3.FrontendMessage{
			&pgproto3.Parse{Name: "s", Query: "SELECT 1"}, &pgproto3.Bind{PreparedStatement: "s"}, &pgproto3.Execute{}, &pgproto3.Sync{}}},
		{desc: "a long Query read whole for the guard", guard: true, msgs: []pgproto3.FrontendMessage{longQuery}},
		{desc: "a long Query with no guard streams", msgs: []pgproto3.FrontendMessage{longQuery}, head: true, wantRest: len(encodeFrontend(t, longQuery)) - relayBufSize, wantPass: true},
		{desc: "a large Bind streams", guard: true, msgs: []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "s", Query: "SELECT $1"}, bigBind},
			head: true, wantRest: len(encodeFrontend(t, bigBind)) - relayBufSize, wantPass: true},
		{desc: "copy data larger than the buffer streams", guard: true, msgs: []pgproto3.FrontendMessage{&pgproto3.Query{String: "COPY t FROM STDIN"}, bigData},
			head: true, wantRest: len(encodeFrontend(t, bigData)) - relayBufSize, wantPass: true},
		{desc: "copy data with no COPY under way streams too (the server ignores it)", guard: true, msgs: []pgproto3.FrontendMessage{bigData},
			head: true, wantRest: len(encodeFrontend(t, bigData)) - relayBufSize, wantPass: true},
	}
	for _, tt := range tests {
		t.Run(tt.desc, func(t *testing.T) {
			var g *guard.Guard
			if tt.guard {
				g = guard.New(guard.Policy{TenantSetting: "app.tenant_id"})
			}
			r := newRelay(nil, nil, nil, nil, ptrTo(newAssertion([]setting{{name: "app.tenant_id", value: "t1"}})), g, zeroTime)
			var up bytes.Buffer
			r.uw = bufio.NewWriterSize(&fakeUpstream{r: r, status: 'T', out: &up}, relayBufSize)
			r.txStatus.Store('T')
			var want []byte
			for i, m := range tt.msgs {
				msg := encodeFrontend(t, m)
				in := msg
				last := i == len(tt.msgs)-1
				if last && tt.head {
					in = msg[:relayBufSize]
				}
				r.in = in
				if err := r.relayMessage(msg[0], len(msg)); err != nil {
					t.Fatalf("message %d (%c): %v", i, msg[0], err)
				}
				if !last {
					if r.inRest != 0 {
						t.Fatalf("message %d (%c), given whole: %d bytes left to move", i, msg[0], r.inRest)
					}
					want = append(want, msg...)
				} else if !tt.head || tt.wantPass {
					want = append(want, in...)
				}
			}
			if r.inRest != tt.wantRest || tt.wantRest > 0 && r.inRestPass != tt.wantPass {
				t.Fatalf("left to the driver: %d bytes, upstream %v; want %d, %v", r.inRest, r.inRestPass, tt.wantRest, tt.wantPass)
			}
			if err := r.uw.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := bytes.ReplaceAll(up.Bytes(), flushMessage, nil); !bytes.Equal(got, want) {
				t.Fatalf("upstream got %d bytes, want %d", len(got), len(want))
			}
		})
	}
}

func encodeFrontend(t *testing.T, m pgproto3.FrontendMessage) []byte {
	t.Helper()
	b, err := m.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
