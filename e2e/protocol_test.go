package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/pgcluster"
)

// traceStep is a batch of messages sent together, and the replies read until
// as many ReadyForQuery as the batch has Query and Sync messages.
type traceStep []pgproto3.FrontendMessage

func q(sql string) *pgproto3.Query { return &pgproto3.Query{String: sql} }

// trace runs the steps on the raw connection and describes every message the
// client receives, so two runs can be compared message by message. Each step
// waits for one ReadyForQuery per Query, Sync and FunctionCall it sends.
func trace(t *testing.T, conn *pgconn.PgConn, steps []traceStep) []string {
	t.Helper()
	counted := make([]countedStep, len(steps))
	for i, step := range steps {
		counted[i].msgs = step
		for _, m := range step {
			switch m.(type) {
			case *pgproto3.Query, *pgproto3.Sync, *pgproto3.FunctionCall:
				counted[i].rfq++
			}
		}
	}
	out := traceCounted(t, conn, counted)
	if n := len(out); n > 0 && strings.Contains(out[n-1], ": receive: ") {
		t.Fatalf("%s", out[n-1])
	}
	return out
}

func describe(msg pgproto3.BackendMessage) string {
	switch m := msg.(type) {
	case *pgproto3.ReadyForQuery:
		return "ReadyForQuery " + string(m.TxStatus)
	case *pgproto3.CommandComplete:
		return "CommandComplete " + string(m.CommandTag)
	case *pgproto3.DataRow:
		vals := make([]string, len(m.Values))
		for i, v := range m.Values {
			vals[i] = string(v)
		}
		return "DataRow " + strings.Join(vals, "|")
	case *pgproto3.RowDescription:
		var names []string
		for _, f := range m.Fields {
			names = append(names, string(f.Name))
		}
		return "RowDescription " + strings.Join(names, ",")
	case *pgproto3.ErrorResponse:
		return fmt.Sprintf("ErrorResponse %s %s %s", m.Severity, m.Code, m.Message)
	case *pgproto3.NoticeResponse:
		return fmt.Sprintf("NoticeResponse %s %s %s", m.Severity, m.Code, m.Message)
	case *pgproto3.ParameterStatus:
		return "ParameterStatus " + m.Name + "=" + m.Value
	case *pgproto3.NotificationResponse:
		return "NotificationResponse " + m.Channel + " " + m.Payload
	case *pgproto3.CopyData:
		return "CopyData " + string(m.Data)
	case *pgproto3.FunctionCallResponse:
		// The value (a new large object's OID) differs between runs.
		return fmt.Sprintf("FunctionCallResponse %d bytes", len(m.Result))
	case *pgproto3.ParameterDescription:
		return fmt.Sprintf("ParameterDescription %v", m.ParameterOIDs)
	default:
		return fmt.Sprintf("%T", msg)
	}
}

// What a client receives through the proxy is exactly what it receives from
// PostgreSQL directly, message by message, transaction status included: the
// assertions are invisible.
func TestInjectionIsInvisible(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		setting := "SELECT current_setting('app.tenant_id')"
		steps := []traceStep{
			{q("SELECT name FROM projects ORDER BY id")},
			{q("BEGIN")},
			{q("SELECT count(*) FROM projects")},
			{q("SELECT 1/0")},
			{q(setting)},
			{q("ROLLBACK")},
			// An unnamed statement prepared in one group and used after its Sync.
			{&pgproto3.Parse{Query: "SELECT name FROM projects WHERE name = $1"}, &pgproto3.Describe{ObjectType: 'S'}, &pgproto3.Sync{}},
			{&pgproto3.Bind{Parameters: [][]byte{[]byte("anvil")}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}},
			// A pipeline of groups sent at once, then a simple query behind them.
			{
				&pgproto3.Parse{Name: "s1", Query: setting}, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Query{String: "BEGIN"},
				&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
				&pgproto3.Query{String: "SELECT 1/0"},
				&pgproto3.Query{String: "ROLLBACK"},
				&pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{},
			},
			// A portal suspended by a row limit, resumed after a Sync inside a block.
			{q("BEGIN")},
			{&pgproto3.Parse{Query: "SELECT name FROM projects ORDER BY id"}, &pgproto3.Bind{}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{}},
			{&pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{}},
			{q("COMMIT")},
			{q("BEGIN; SELECT 1; COMMIT; " + setting)},
			{q("VACUUM projects")},
			{q("LOCK TABLE projects")},
			{q("SAVEPOINT x")},
			{q("COMMIT")},
			{q("COPY (SELECT name FROM projects ORDER BY id) TO STDOUT")},
			{q("COPY copy_sink (line) FROM STDIN"), &pgproto3.CopyData{Data: []byte("trace-copy-1\ntrace-copy-2\n")}, &pgproto3.CopyDone{}},
			{q("SELECT count(*) FROM copy_sink WHERE line LIKE 'trace-copy-%' AND tenant_id = current_setting('app.tenant_id')::uuid")},
			{q("DELETE FROM copy_sink WHERE line LIKE 'trace-copy-%'")},
			{q("")},
			{q("SELECT pg_notify('trace_channel', 'unheard')")},
			// A row far larger than the relay's buffers streams through.
			{q("SELECT md5(repeat('x', 300000)), length(repeat('y', 300000)), repeat('z', 300000) = repeat('z', 300000)")},
			{q("SELECT i, repeat('r', 100) FROM generate_series(1, 2000) i WHERE i % 500 = 0")},
		}
		reached := []string{"ReadyForQuery E", "PortalSuspended", "CopyData anvil", "DataRow 2", "skipping \"projects\""}
		if !m.tx {
			// Session state, which transaction mode refuses (TestPoolRefusesSessionState).
			steps = append(steps,
				traceStep{q("SET application_name = 'traced'")},
				traceStep{q("SHOW application_name")},
				traceStep{q("LISTEN trace_channel")},
				traceStep{q("SELECT pg_notify('trace_channel', 'payload')")},
				traceStep{q("SET statement_timeout = '5s'; " + setting)},
			)
			reached = append(reached, "NotificationResponse trace_channel payload")
		}

		direct := trace(t, directConnect(t, tenantA.ID), steps)
		proxied := trace(t, p.pgconnect(t, tenantA), steps)
		if strings.Join(direct, "\n") != strings.Join(proxied, "\n") {
			t.Fatalf("message sequences differ\n--- direct\n%s\n--- through pgtenant\n%s", strings.Join(direct, "\n"), strings.Join(proxied, "\n"))
		}
		// Sanity: the workload did reach the interesting states.
		joined := strings.Join(proxied, "\n")
		for _, want := range reached {
			if !strings.Contains(joined, want) {
				t.Errorf("trace lacks %q", want)
			}
		}
	})
}

// The upstream runs the assertion once per transaction start, plus once when
// the session opens (in transaction mode: when the connection is handed to
// the session, with a pool of one that serves only this session).
func TestAssertionOncePerTransactionStart(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := startProxy(t, m.config(1))
		app := fmt.Sprintf("logcount_%d", time.Now().UnixNano())
		conn := p.pgconnect(t, tenantA, "application_name="+app)
		for _, sql := range []string{
			"SELECT 1",           // transaction start
			"BEGIN",              // transaction start
			"SELECT 2",           // inside
			"SELECT 3",           // inside
			"COMMIT",             // inside
			"SELECT 4; SELECT 5", // one implicit transaction
			"BEGIN",              // start
			"SELECT 1/0",         // inside, fails
			"ROLLBACK",           // inside the failed block
		} {
			_, _ = conn.Exec(context.Background(), sql).ReadAll()
		}
		// Extended protocol: a group with two statements is one transaction.
		pl := conn.StartPipeline(context.Background())
		pl.SendQueryParams("SELECT 6", nil, nil, nil, nil)
		pl.SendQueryParams("SELECT 7", nil, nil, nil, nil)
		pl.SendPipelineSync()
		if err := pl.Sync(); err != nil {
			t.Fatal(err)
		}
		drainPipeline(t, pl)

		const wantInline = 5
		var log string
		eventually(t, 5*time.Second, "the statements in the server log", func() bool {
			var err error
			log, err = pgcluster.Shared().LogContents()
			if err != nil {
				t.Fatal(err)
			}
			return strings.Contains(log, app+"|LOG:  execute <unnamed>: SELECT 7")
		})
		set := `SET "app"."tenant_id" TO '` + tenantA.ID + "'"
		startupLine, inlineLine := "statement: "+set, "execute pgtenant_assert/pgtenant_assert: "+set
		if m.tx {
			// Committed once at the hand-over, then asserted through the
			// context statement pgtenant prepared on the connection.
			startupLine, inlineLine = "execute pgtenant_assert/pgtenant_assert: "+set, "execute pgtenant_ctx0/pgtenant_assert: "+set
		}
		var startup, inline int
		for _, line := range strings.Split(log, "\n") {
			if !strings.HasPrefix(line, app+"|") {
				continue
			}
			switch {
			case strings.Contains(line, startupLine):
				startup++
			case strings.Contains(line, inlineLine):
				inline++
			}
		}
		if startup != 1 || inline != wantInline {
			t.Fatalf("assertions in the server log: %d at session start, %d inline; want 1 and %d", startup, inline, wantInline)
		}
	})
}

func drainPipeline(t *testing.T, pl *pgconn.Pipeline) {
	t.Helper()
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
}

// BackendKeyData carries the upstream backend's process id in session mode,
// so that pg_backend_pid() and pg_stat_activity agree with what the client
// was told (in transaction mode the backend changes between transactions).
func TestBackendKeyDataIsUpstreamPID(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)
		conn := p.pgconnect(t, tenantA)
		got := queryOne(t, conn, "SELECT pg_backend_pid()")
		if !m.tx && got != fmt.Sprint(conn.PID()) {
			t.Fatalf("pg_backend_pid() = %s, BackendKeyData pid = %d", got, conn.PID())
		}
		// The secret key is pgtenant's own, not the upstream's.
		if len(conn.SecretKey()) != 4 {
			t.Fatalf("secret key length %d", len(conn.SecretKey()))
		}
	})
}

// rawStartup dials the proxy and returns a frontend for hand-made startup packets.
func rawDial(t *testing.T, p *testProxy) net.Conn {
	t.Helper()
	conn, err := net.DialTimeout("tcp", p.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return conn
}

func send(t *testing.T, conn net.Conn, msg pgproto3.FrontendMessage) {
	t.Helper()
	buf, err := msg.Encode(nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(buf); err != nil {
		t.Fatal(err)
	}
}

func readByte(t *testing.T, conn net.Conn) byte {
	t.Helper()
	var b [1]byte
	if _, err := conn.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}

func TestStartupNegotiation(t *testing.T) {
	eachPoolMode(t, func(t *testing.T, m poolMode) {
		p := m.start(t)

		t.Run("GSSENCRequest is declined and the startup goes on", func(t *testing.T) {
			conn := rawDial(t, p)
			send(t, conn, &pgproto3.GSSEncRequest{})
			if b := readByte(t, conn); b != 'N' {
				t.Fatalf("GSSENCRequest answer %q, want N", b)
			}
			send(t, conn, &pgproto3.SSLRequest{})
			if b := readByte(t, conn); b != 'N' {
				t.Fatalf("SSLRequest without TLS configured: %q, want N", b)
			}
			send(t, conn, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": tenantA.User, "database": "app"}})
			fe := pgproto3.NewFrontend(conn, conn)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if sasl, ok := msg.(*pgproto3.AuthenticationSASL); !ok || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
				t.Fatalf("after startup: %#v, want AuthenticationSASL", msg)
			}
		})

		t.Run("newer minor version and _pq_ options get NegotiateProtocolVersion", func(t *testing.T) {
			conn := rawDial(t, p)
			send(t, conn, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: map[string]string{
				"user": tenantA.User, "database": "app", "_pq_.test_option": "on",
			}})
			fe := pgproto3.NewFrontend(conn, conn)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
			if !ok {
				t.Fatalf("got %#v, want NegotiateProtocolVersion", msg)
			}
			if npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.test_option" {
				t.Fatalf("NegotiateProtocolVersion %+v", npv)
			}
			if msg, err := fe.Receive(); err != nil {
				t.Fatal(err)
			} else if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
				t.Fatalf("after negotiation: %#v, want AuthenticationSASL", msg)
			}
		})

		t.Run("unsupported major version", func(t *testing.T) {
			// Version 2.0, by hand: pgproto3 encodes only 3.x.
			conn2 := rawDial(t, p)
			pkt := []byte{0, 0, 0, 8, 0, 2, 0, 0}
			if _, err := conn2.Write(pkt); err != nil {
				t.Fatal(err)
			}
			fe := pgproto3.NewFrontend(conn2, conn2)
			msg, err := fe.Receive()
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := msg.(*pgproto3.ErrorResponse); !ok || e.Code != "0A000" || e.Severity != "FATAL" {
				t.Fatalf("protocol 2.0: %#v, want FATAL 0A000", msg)
			}
		})

		t.Run("CancelRequest with an unknown key is ignored silently", func(t *testing.T) {
			conn := rawDial(t, p)
			send(t, conn, &pgproto3.CancelRequest{ProcessID: 12345, SecretKey: []byte{1, 2, 3, 4}})
			var b [1]byte
			if n, err := conn.Read(b[:]); n != 0 || err == nil {
				t.Fatalf("cancel with unknown key got a reply (%d bytes, %v)", n, err)
			}
		})
	})
}
