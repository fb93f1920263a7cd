package e2e

// The differential fuzzer. Each generated client session (see
// internal/protofuzz) is played against PostgreSQL directly, as the tenant
// role with tenant A's context set, and then through pgtenant in session
// mode and in transaction mode (a pool of 2, shared with tenant B, who runs
// small transactions all along). The replies are read raw and compared
// message by message after normalisation. Besides a difference, a run fails
// on: a wedge (pgtenant owes replies PostgreSQL sent and sends nothing for
// dfWedge), a panic in pgtenant's log, a leaked goroutine (startProxy), a
// session-mode upstream backend still open a second after its client left,
// a pool connection lost after the client left, or any failure or wrong
// result of tenant B.
//
// Environment:
//
//	PGTENANT_FUZZ_TIME=60s     how long the random run lasts after the committed seeds (0: none)
//	PGTENANT_FUZZ_SEED=N       run only seed N (reproduction), no committed seeds, no random run
//	PGTENANT_FUZZ_MAXFAIL=5    stop the random run after this many failing seeds
//	PGTENANT_FUZZ_BASE=N       draw the random run's seeds from N instead of the clock, so that
//	                           a run can be repeated seed for seed (.ci/run sets it: CI is
//	                           reproducible; long runs from the clock explore)
//	PGTENANT_FUZZ_SELFCHECK=1  also play each sequence against PostgreSQL twice and compare
//	                           (a difference there is a fuzzer bug: fix the normaliser or the corpus)
//	PGTENANT_FUZZ_GEN=...      comma-separated generator restrictions, to look past a known
//	                           finding (the same seed then gives another sequence):
//	                           no-long-statements (none over 250 bytes), no-long-pauses
//	                           (none past the parker), plausible (no messages out of place),
//	                           no-query-in-batch (a Sync before any Query that follows
//	                           extended-protocol messages), easy-first (the first
//	                           Query or Parse short and in one write)
//	PGTENANT_FUZZ_MODES=...    comma-separated subset of "session,transaction" (default both;
//	                           "none" with SELFCHECK plays against PostgreSQL only)

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/protofuzz"
)

const (
	// dfQuiet ends a read step whose ReadyForQuery count is not reached:
	// the guess was wrong (COPY swallows Syncs, an error skips to Sync).
	dfQuiet = 100 * time.Millisecond
	// dfFinalQuiet is the quiet period that ends the last read step.
	dfFinalQuiet = 250 * time.Millisecond
	// dfFinalWait is the quiet period that ends the last read step while it
	// has fewer ReadyForQuery than it expects (the guess may be wrong, but a
	// slow reply must not be missed).
	dfFinalWait = time.Second
	// dfWedge is how long pgtenant may stay silent while it owes replies
	// PostgreSQL sent at that point.
	dfWedge = 3 * time.Second
	// dfContext is the number of messages shown either side of a difference.
	dfContext = 8
)

func TestDifferential(t *testing.T) {
	opts := dfOptions(t)
	budget := 60 * time.Second
	if s := os.Getenv("PGTENANT_FUZZ_TIME"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("PGTENANT_FUZZ_TIME: %v", err)
		}
		budget = d
	}
	maxFail := 5
	if s := os.Getenv("PGTENANT_FUZZ_MAXFAIL"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("PGTENANT_FUZZ_MAXFAIL: %v", err)
		}
		maxFail = n
	}
	var seeds []int64
	if s := os.Getenv("PGTENANT_FUZZ_SEED"); s != "" {
		seed, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("PGTENANT_FUZZ_SEED: %v", err)
		}
		seeds, budget = []int64{seed}, 0
	} else {
		seeds = dfCommittedSeeds(t)
	}

	failed, played := 0, 0
	play := func(seed int64) {
		played++
		if !t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { dfSeed(t, seed, opts) }) {
			failed++
		}
	}
	for _, seed := range seeds {
		play(seed)
	}
	start := time.Now()
	base := uint64(time.Now().UnixNano())
	if s := os.Getenv("PGTENANT_FUZZ_BASE"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PGTENANT_FUZZ_BASE: %v", err)
		}
		base = n
	}
	r := rand.New(rand.NewPCG(base, 0))
	for time.Since(start) < budget {
		if failed >= maxFail {
			t.Logf("random run stopped after %d failing seeds (PGTENANT_FUZZ_MAXFAIL)", failed)
			break
		}
		play(r.Int64())
	}
	t.Logf("%d sequences played (%d committed), %d failed, random run %s", played, len(seeds), failed, time.Since(start).Round(time.Second))
}

// dfOptions are the generator's options, restricted by PGTENANT_FUZZ_GEN.
func dfOptions(t *testing.T) protofuzz.Options {
	opts := protofuzz.DefaultOptions()
	for _, f := range strings.Split(os.Getenv("PGTENANT_FUZZ_GEN"), ",") {
		switch strings.TrimSpace(f) {
		case "":
		case "no-long-statements":
			opts.LongStatements = false
		case "no-long-pauses":
			opts.LongPauses = false
		case "plausible":
			opts.Nonsense = false
		case "no-query-in-batch":
			opts.QueryInBatch = false
		case "easy-first":
			opts.HardFirst = false
		default:
			t.Fatalf("PGTENANT_FUZZ_GEN: unknown restriction %q", f)
		}
	}
	if opts != protofuzz.DefaultOptions() {
		t.Logf("generator options %+v: committed seeds give other sequences", opts)
	}
	return opts
}

// dfCommittedSeeds reads testdata/difffuzz/seeds.txt: one int64 a line,
// blank lines and # comments ignored.
func dfCommittedSeeds(t *testing.T) []int64 {
	data, err := os.ReadFile("testdata/difffuzz/seeds.txt")
	if err != nil {
		t.Fatal(err)
	}
	var seeds []int64
	for i, line := range strings.Split(string(data), "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		seed, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			t.Fatalf("seeds.txt line %d: %v", i+1, err)
		}
		seeds = append(seeds, seed)
	}
	return seeds
}

func dfModes() map[string]bool {
	s := os.Getenv("PGTENANT_FUZZ_MODES")
	if s == "" {
		s = "session,transaction"
	}
	modes := map[string]bool{}
	for _, m := range strings.Split(s, ",") {
		modes[strings.TrimSpace(m)] = true
	}
	return modes
}

// dfSeed plays one sequence directly and through pgtenant in each mode.
func dfSeed(t *testing.T, seed int64, opts protofuzz.Options) {
	seq := protofuzz.Generate(seed, opts)
	direct := dfPlay(ppHijack(t, directConnect(t, tenantA.ID)).conn, seq, nil)
	if os.Getenv("PGTENANT_FUZZ_SELFCHECK") != "" {
		again := dfPlay(ppHijack(t, directConnect(t, tenantA.ID)).conn, seq, direct)
		dfCompare(t, "PostgreSQL again (FUZZER BUG: fix the normaliser or the corpus)", seq, direct, again)
	}
	modes := dfModes()
	if modes["session"] {
		t.Run("session", func(t *testing.T) {
			p := startProxy(t, nil)
			app := fmt.Sprintf("difffuzz_%d", seed)
			got := dfPlay(ppHijack(t, p.pgconnect(t, tenantA, "application_name="+app)).conn, seq, direct)
			dfCompare(t, "session mode", seq, direct, got)
			dfBackendGone(t, seq, app)
			dfNoPanic(t, p)
		})
	}
	if modes["transaction"] {
		t.Run("transaction", func(t *testing.T) {
			p := startProxy(t, transactionPool(2))
			b := dfStartTenantB(t, p)
			got := dfPlay(ppHijack(t, p.pgconnect(t, tenantA)).conn, seq, direct)
			dfCompare(t, "transaction mode", seq, direct, got)
			dfPoolFree(t, seq, p)
			b.stopAndCheck(t, seq)
			dfNoPanic(t, p)
		})
	}
}

// dfResult is what one run of a sequence received.
type dfResult struct {
	msgs  []protofuzz.Norm // every reply read, normalised
	cum   []int            // len(msgs) at the end of each read step
	wedge string           // why the run gave up waiting, if it did
	// owed: len(msgs) at a read step that let pgtenant owe PostgreSQL's
	// answer to a message not yet whole (dfAnsweredEarly), until a later
	// read step reads it; -1: none owed.
	owed int
}

// dfInbox receives a connection's replies in the background, so that the
// client never blocks the server's writes, and hands them to read steps.
type dfInbox struct {
	mu     sync.Mutex
	q      []protofuzz.Norm
	closed bool
	signal chan struct{}
	done   chan struct{}
}

func dfReceive(conn net.Conn) *dfInbox {
	in := &dfInbox{signal: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(in.done)
		br := bufio.NewReader(conn)
		for {
			rep, err := protofuzz.ReadReply(br)
			in.mu.Lock()
			switch {
			case errors.Is(err, protofuzz.ErrFraming):
				in.q, in.closed = append(in.q, protofuzz.Norm{Type: protofuzz.Closed, Text: "<" + err.Error() + ">"}), true
			case err != nil:
				in.q, in.closed = append(in.q, protofuzz.ClosedNorm), true
			default:
				if n, ok := protofuzz.Normalise(rep); ok {
					in.q = append(in.q, n)
				}
			}
			in.mu.Unlock()
			select {
			case in.signal <- struct{}{}:
			default:
			}
			if err != nil {
				return
			}
		}
	}()
	return in
}

// next returns the next reply, or false when none arrives within wait or
// the stream has ended.
func (in *dfInbox) next(wait time.Duration) (protofuzz.Norm, bool) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		in.mu.Lock()
		if len(in.q) > 0 {
			m := in.q[0]
			in.q = in.q[1:]
			in.mu.Unlock()
			return m, true
		}
		closed := in.closed
		in.mu.Unlock()
		if closed {
			return protofuzz.Norm{}, false
		}
		select {
		case <-in.signal:
		case <-timer.C:
			return protofuzz.Norm{}, false
		}
	}
}

// dfPlay plays seq on conn and closes it. Without ref (PostgreSQL) a read
// step reads until its ReadyForQuery count or a quiet period. With ref (the
// run against PostgreSQL) a read step reads as many replies as PostgreSQL
// had sent by the end of the same step, giving up after dfWedge of
// silence; it stops playing at the first reply that differs.
func dfPlay(conn net.Conn, seq *protofuzz.Seq, ref *dfResult) *dfResult {
	in := dfReceive(conn)
	defer func() {
		conn.Close()
		<-in.done
	}()
	res := &dfResult{owed: -1}
	writeFailed := false
	reads := 0
	written := 0 // the stream written so far: seq.Stream[:written]
	for i, st := range seq.Steps {
		switch st.Kind {
		case protofuzz.StepWrite:
			written = st.To
			if writeFailed {
				continue // the server hung up; the replies tell
			}
			_ = conn.SetWriteDeadline(time.Now().Add(dfWedge))
			if _, err := conn.Write(seq.Stream[st.From:st.To]); err != nil {
				writeFailed = true
				var ne net.Error
				if ref != nil && errors.As(err, &ne) && ne.Timeout() {
					res.wedge = fmt.Sprintf("step %d: the write blocked for %s", i, dfWedge)
					return res
				}
			}
		case protofuzz.StepSleep:
			time.Sleep(st.Pause)
		case protofuzz.StepRead:
			var ok bool
			if ref == nil {
				dfReadDirect(in, res, st)
				ok = true
			} else {
				ok = dfReadLike(in, res, ref, reads, i, st, dfPartType(seq, written))
			}
			res.cum = append(res.cum, len(res.msgs))
			reads++
			if !ok {
				return res
			}
		case protofuzz.StepHangUp:
			return res
		}
	}
	return res
}

// dfReadDirect is a read step against PostgreSQL.
func dfReadDirect(in *dfInbox, res *dfResult, st protofuzz.Step) {
	rfq := 0
	for {
		wait := dfQuiet
		switch {
		case rfq >= st.RFQ && st.RFQ > 0 && !st.Final:
			return
		case st.Final && rfq < st.RFQ:
			wait = dfFinalWait
		case st.Final:
			wait = dfFinalQuiet
		}
		m, ok := in.next(wait)
		if !ok {
			return
		}
		res.msgs = append(res.msgs, m)
		if m.Type == 'Z' {
			rfq++
		}
	}
}

// dfPartType is the type of the message seq.Stream[:written] ends inside
// of, or 0 when it ends between messages.
func dfPartType(seq *protofuzz.Seq, written int) byte {
	for i := len(seq.Offsets) - 1; i >= 0; i-- {
		if seq.Offsets[i] < written {
			if written < seq.Offsets[i]+len(seq.Msgs[i].Bytes) {
				return seq.Msgs[i].Type
			}
			return 0
		}
	}
	return 0
}

// dfAnsweredEarly reports whether m is PostgreSQL's answer to the first
// byte of a message of type part that the client has not sent whole:
// during COPY FROM STDIN the server rejects any message other than copy
// data, Flush and Sync on its type byte alone (copyfromparse.c), and ends
// the session (its place in the stream lost). pgtenant reads such a
// message whole before it relays it (had the COPY already failed on earlier
// data, the server would run it: it must be guarded), and then gets the
// same answer. A difference the README lists, in when the answer comes,
// not in what it is, for a client that stalls inside such a message: not
// a finding.
func dfAnsweredEarly(m protofuzz.Norm, part byte) bool {
	return part != 0 && m.Type == 'E' &&
		m.Text == fmt.Sprintf("ErrorResponse ERROR 08P01 %q", fmt.Sprintf("unexpected message type 0x%02X during COPY from stdin", part))
}

// dfReadLike is read step k through pgtenant: it reads what PostgreSQL had
// sent by the end of that step (and, at the final step, whatever more comes
// within the quiet period). part is the type of the message the client has
// sent part of (0: none; see dfAnsweredEarly). It returns false when the
// run must stop: a difference, a wedge, or the end of the stream.
func dfReadLike(in *dfInbox, res *dfResult, ref *dfResult, k, step int, st protofuzz.Step, part byte) bool {
	target := ref.cum[k]
	if len(res.msgs) >= target {
		res.owed = -1
	}
	for len(res.msgs) < target {
		if dfAnsweredEarly(ref.msgs[len(res.msgs)], part) {
			// Owed until the message is whole: a later read step reads it.
			res.owed = len(res.msgs)
			return true
		}
		m, ok := in.next(dfWedge)
		if !ok {
			if len(res.msgs) > 0 && res.msgs[len(res.msgs)-1].Type == protofuzz.Closed {
				return false
			}
			res.wedge = fmt.Sprintf("read at step %d: no reply for %s while %d of the replies PostgreSQL sent by then (%d) are missing",
				step, dfWedge, target-len(res.msgs), target)
			return false
		}
		res.msgs = append(res.msgs, m)
		i := len(res.msgs) - 1
		if i == res.owed {
			res.owed = -1
		}
		if m != ref.msgs[i] || m.Type == protofuzz.Closed {
			// Differs (or ended): collect a little more for the report.
			for j := 0; j < dfContext; j++ {
				m, ok := in.next(dfQuiet)
				if !ok {
					break
				}
				res.msgs = append(res.msgs, m)
			}
			return false
		}
	}
	if st.Final {
		for {
			m, ok := in.next(dfFinalQuiet)
			if !ok {
				break
			}
			res.msgs = append(res.msgs, m)
		}
	}
	return true
}

// dfCompare fails the test if got differs from direct or gave up waiting.
func dfCompare(t *testing.T, mode string, seq *protofuzz.Seq, direct, got *dfResult) {
	t.Helper()
	want := direct.msgs
	if got.owed >= 0 && got.wedge == "" && len(got.msgs) == got.owed {
		// The client hung up inside the message PostgreSQL answered early
		// (dfAnsweredEarly): pgtenant never had it whole.
		want = want[:got.owed]
	}
	at := protofuzz.FirstDifference(want, got.msgs)
	if got.wedge == "" && at < 0 {
		return
	}
	var b strings.Builder
	if got.wedge != "" {
		at = len(got.msgs)
		fmt.Fprintf(&b, "WEDGE in %s: %s\n", mode, got.wedge)
	} else {
		fmt.Fprintf(&b, "DIFFERENCE in %s at reply %d\n", mode, at)
	}
	fmt.Fprintf(&b, "reproduce: PGTENANT_FUZZ_SEED=%d go test -race -count=1 ./e2e/ -run 'TestDifferential' -v\n", seq.Seed)
	b.WriteString(seq.String())
	b.WriteString(protofuzz.SideBySide(direct.msgs, got.msgs, at, dfContext, "PostgreSQL", "pgtenant "+mode))
	if at < len(direct.msgs) {
		fmt.Fprintf(&b, "PostgreSQL sent: %s\n", direct.msgs[at])
	}
	if at < len(got.msgs) {
		fmt.Fprintf(&b, "pgtenant sent:   %s\n", got.msgs[at])
	}
	t.Error(b.String())
}

// dfBackendGone fails the test if the upstream backend of the session-mode
// client (found by its application name) is still there a second after the
// client left.
func dfBackendGone(t *testing.T, seq *protofuzz.Seq, app string) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		n := badUpstreamBackends(t, app)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("LEAK in session mode (seed %d): %d upstream backend(s) still open a second after the client hung up\n%s", seq.Seed, n, seq)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dfPoolFree fails the test unless two new clients can each hold one of the
// pool's two connections at once: the client that left gave its connection
// back.
func dfPoolFree(t *testing.T, seq *protofuzz.Seq, p *testProxy) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dfWedge)
	defer cancel()
	var held []*pgconn.PgConn
	defer func() {
		// Give both back at once: tenant B is waiting.
		for _, c := range held {
			c.Close(context.Background())
		}
	}()
	for i := 0; i < 2; i++ {
		c := p.pgconnect(t, tenantA)
		held = append(held, c)
		if _, err := c.Exec(ctx, "BEGIN; SELECT 1").ReadAll(); err != nil {
			t.Errorf("POOL in transaction mode (seed %d): after the client left, new client %d could not hold a pool connection within %s: %v\n%s", seq.Seed, i+1, dfWedge, err, seq)
			return
		}
	}
}

// dfNoPanic fails the test if pgtenant logged a panic.
func dfNoPanic(t *testing.T, p *testProxy) {
	t.Helper()
	if logs := p.logs.String(); strings.Contains(strings.ToLower(logs), "panic") {
		t.Errorf("PANIC logged by pgtenant")
	}
}

// dfTenantB runs tenant B's small transactions through the proxy until
// stopped, in four ways drivers send them, and checks each result.
type dfTenantB struct {
	stop chan struct{}
	done chan struct{}
	n    int      // transactions run
	errs []string // first failures
}

func dfStartTenantB(t *testing.T, p *testProxy) *dfTenantB {
	conn := p.pgconnect(t, tenantB)
	b := &dfTenantB{stop: make(chan struct{}), done: make(chan struct{})}
	want := tenantB.ID + "|" + strings.Join(demo.Projects[tenantB.ID], ",")
	go func() {
		defer close(b.done)
		for i := 0; ; i++ {
			select {
			case <-b.stop:
				return
			default:
			}
			got, err := dfTenantBTx(conn, i%4)
			for j := 0; err == nil && j < len(got); j++ {
				if got[j] != want {
					err = fmt.Errorf("statement %d: got %q, want %q", j, got[j], want)
				}
			}
			if err != nil {
				b.errs = append(b.errs, fmt.Sprintf("transaction %d (kind %d): %v", i, i%4, err))
				if conn.IsClosed() || len(b.errs) >= 5 {
					return
				}
			}
			b.n++
			time.Sleep(time.Duration(2+i%5) * time.Millisecond)
		}
	}()
	return b
}

// dfTenantBTx runs one of tenant B's transactions and returns what each
// rtWho in it returned, as "tenant|names".
func dfTenantBTx(conn *pgconn.PgConn, kind int) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), dfWedge+time.Second)
	defer cancel()
	var results []*pgconn.Result
	switch kind {
	case 0: // one multi-statement Query
		rs, err := conn.Exec(ctx, "BEGIN; "+rtWho+"; COMMIT").ReadAll()
		if err != nil {
			return nil, err
		}
		if len(rs) != 3 {
			return nil, fmt.Errorf("%d results", len(rs))
		}
		results = rs[1:2]
	case 1: // three round trips
		for _, sql := range []string{"BEGIN", rtWho, "COMMIT"} {
			rs, err := conn.Exec(ctx, sql).ReadAll()
			if err != nil {
				return nil, err
			}
			if sql == rtWho {
				results = rs
			}
		}
	case 2: // extended protocol
		r := conn.ExecParams(ctx, rtWho, nil, nil, nil, nil).Read()
		results = []*pgconn.Result{r}
	default: // a pipeline of three Sync groups, read after all are sent
		pl := conn.StartPipeline(ctx)
		for i := 0; i < 3; i++ {
			pl.SendQueryParams(rtWho, nil, nil, nil, nil)
			pl.SendPipelineSync()
		}
		if err := pl.Flush(); err != nil {
			return nil, err
		}
		for syncs := 0; syncs < 3; {
			res, err := pl.GetResults()
			if err != nil {
				return nil, err
			}
			switch r := res.(type) {
			case *pgconn.ResultReader:
				rr := r.Read()
				results = append(results, rr)
			case *pgconn.PipelineSync:
				syncs++
			case nil:
				return nil, errors.New("pipeline ended early")
			}
		}
		if err := pl.Close(); err != nil {
			return nil, err
		}
	}
	var out []string
	for _, r := range results {
		if r.Err != nil {
			return nil, r.Err
		}
		if len(r.Rows) != 1 || len(r.Rows[0]) != 2 {
			return nil, fmt.Errorf("rows %q", r.Rows)
		}
		out = append(out, string(r.Rows[0][0])+"|"+string(r.Rows[0][1]))
	}
	if len(out) == 0 {
		return nil, errors.New("no result")
	}
	return out, nil
}

func (b *dfTenantB) stopAndCheck(t *testing.T, seq *protofuzz.Seq) {
	t.Helper()
	close(b.stop)
	select {
	case <-b.done:
	case <-time.After(2 * dfWedge):
		t.Errorf("TENANT B in transaction mode (seed %d): its transaction is stuck\n%s", seq.Seed, seq)
		return
	}
	if len(b.errs) > 0 {
		t.Errorf("TENANT B in transaction mode (seed %d): %d transactions, failures:\n  %s\n%s", seq.Seed, b.n, strings.Join(b.errs, "\n  "), seq)
	}
}
