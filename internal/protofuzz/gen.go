package protofuzz

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
)

// ParkAfter is how long a transaction-mode client may sit idle before
// pgtenant's parker takes it over; a long pause lasts longer than that.
const ParkAfter = time.Second

// LongPause is the pause that outlasts ParkAfter.
const LongPause = ParkAfter + 150*time.Millisecond

// StepKind says what a Step does.
type StepKind uint8

const (
	// StepWrite writes Seq.Stream[From:To] in one Write call.
	StepWrite StepKind = iota
	// StepRead reads replies until RFQ ReadyForQuery messages arrived since
	// the last read (when RFQ > 0) or the connection is quiet for a while.
	StepRead
	// StepSleep pauses for Pause.
	StepSleep
	// StepHangUp closes the connection without reading what is still owed.
	StepHangUp
)

// Step is one client action.
type Step struct {
	Kind     StepKind
	From, To int           // StepWrite: the bytes of Seq.Stream written
	RFQ      int           // StepRead: ReadyForQuery expected (a guess: 0 means none known)
	Final    bool          // StepRead: the last read; it also waits for a quiet period
	Pause    time.Duration // StepSleep
}

// Seq is a generated client session after login.
type Seq struct {
	Seed     int64
	Nonsense bool   // has messages out of place (CopyData outside COPY, unknown portals...)
	Msgs     []Msg  // the messages, in order
	Offsets  []int  // Msgs[i] starts at Stream[Offsets[i]]
	Stream   []byte // all messages, concatenated
	Steps    []Step
}

// Options tune the generator.
type Options struct {
	// LongStatements lets Query and Parse texts be longer than 250 bytes.
	LongStatements bool
	// LongPauses lets a few sequences pause for LongPause (the parker).
	LongPauses bool
	// HardFirst lets the session's first Query or Parse be long or arrive
	// in several writes (or part of it before a read or a hang-up).
	HardFirst bool
	// Nonsense lets about half the sequences send messages out of place.
	Nonsense bool
	// QueryInBatch lets a Query follow extended-protocol messages not yet
	// closed by a Sync (asyncpg, PgJDBC autosave); without it a Sync is
	// sent first.
	QueryInBatch bool
	// MinMsgs and MaxMsgs bound the number of messages (roughly: a unit
	// that starts below MaxMsgs is finished).
	MinMsgs, MaxMsgs int
}

// DefaultOptions are the options the committed seeds were generated with.
func DefaultOptions() Options {
	return Options{LongStatements: true, LongPauses: true, HardFirst: true, Nonsense: true, QueryInBatch: true, MinMsgs: 5, MaxMsgs: 30}
}

// event is the generator's intermediate form: a message, a read point or
// a pause.
type event struct {
	msg   *Msg
	read  bool
	pause time.Duration
}

type gen struct {
	r         *rand.Rand
	o         Options
	nonsense  bool
	events    []event
	nmsgs     int
	long      bool            // a long pause is already in the sequence
	unsynced  bool            // extended-protocol messages were sent since the last Sync
	statement bool            // a Query or Parse was sent
	stmts     map[string]stmt // statement name -> its last Parse (a guess: the Parse may have failed)
}

// Generate returns the sequence for seed: the same for the same seed and
// options, whatever the platform.
func Generate(seed int64, o Options) *Seq {
	g := &gen{r: rand.New(rand.NewPCG(uint64(seed), 0x70726f746f66757a)), o: o, stmts: map[string]stmt{}}
	g.nonsense = g.r.IntN(2) == 0 && o.Nonsense
	target := o.MinMsgs + g.r.IntN(o.MaxMsgs-o.MinMsgs+1)
	for g.nmsgs < target {
		g.unit()
	}
	return g.layout(seed)
}

func (g *gen) chance(p float64) bool { return g.r.Float64() < p }

func (g *gen) emit(m Msg) {
	switch m.Type {
	case 'Q':
		if g.unsynced && !g.o.QueryInBatch {
			g.emit(Sync())
		}
	case 'P', 'B', 'D', 'E', 'C':
		g.unsynced = true
	case 'S':
		g.unsynced = false
	}
	if m.Type == 'Q' || m.Type == 'P' {
		g.statement = true
	}
	g.events = append(g.events, event{msg: &m})
	g.nmsgs++
}

func (g *gen) read() {
	if n := len(g.events); n > 0 && g.events[n-1].read {
		return
	}
	g.events = append(g.events, event{read: true})
}

func (g *gen) pause() {
	d := time.Duration(1+g.r.IntN(30)) * time.Millisecond
	if g.o.LongPauses && !g.long && g.chance(0.08) {
		d, g.long = LongPause, true
	}
	g.events = append(g.events, event{pause: d})
}

// pick returns a statement of corpus: long ones only with LongStatements,
// and as the session's first statement only with HardFirst.
func (g *gen) pick(corpus []stmt) stmt {
	long := g.o.LongStatements && (g.o.HardFirst || g.statement)
	for {
		s := corpus[g.r.IntN(len(corpus))]
		if long || len(s.sql) <= longStatement {
			return s
		}
	}
}

func (g *gen) oneOf(s ...string) string { return s[g.r.IntN(len(s))] }

// unit appends one client exchange: a piece of a plausible driver's
// conversation or, in nonsense sequences, messages out of place.
func (g *gen) unit() {
	if g.nonsense && g.chance(0.4) {
		for n := 1 + g.r.IntN(3); n > 0; n-- {
			g.emit(g.stray())
		}
		if g.chance(0.4) {
			g.read()
		}
		return
	}
	switch w := g.r.IntN(100); {
	case w < 40:
		g.simple()
	case w < 75:
		g.extended()
	case w < 85:
		g.flushThenMore()
	case w < 92:
		g.autosave()
	default:
		g.pause()
		return
	}
	if g.chance(0.6) {
		g.read()
	}
	if g.chance(0.15) {
		g.pause()
	}
}

// simple is a Query and, for its COPY FROM STDIN statements, their data.
func (g *gen) simple() {
	s := g.pick(simpleCorpus)
	g.emit(Query(s.sql))
	for i := 0; i < s.copyIn; i++ {
		g.copyIn()
	}
}

// copyIn sends what a client sends in COPY FROM STDIN.
func (g *gen) copyIn() {
	for n := g.r.IntN(4); n > 0; n-- {
		g.emit(CopyData(g.oneOf("fuzz-a\n", "fuzz-b\nfuzz-c\n", "fuzz-", "d\n", "bad\tcolumns\n")))
	}
	if g.chance(0.85) {
		g.emit(CopyDone())
	} else {
		g.emit(CopyFail("fuzz abort"))
	}
}

// extended is one to three Sync groups, each running one or two statements.
func (g *gen) extended() {
	for groups := 1 + g.r.IntN(3); groups > 0; groups-- {
		for n := 1 + g.r.IntN(2); n > 0; n-- {
			g.execute(true)
		}
		g.emit(Sync())
		if g.chance(0.3) {
			g.read()
		}
	}
}

// execute prepares (or reuses) a statement, binds and executes it.
func (g *gen) execute(mayClose bool) {
	name := g.oneOf("", "", "s1", "s2")
	s, known := g.stmts[name]
	if !known || g.chance(0.6) {
		g.parse(name)
		s = g.stmts[name]
	}
	if g.chance(0.25) {
		g.emit(Describe('S', name))
	}
	portal := g.oneOf("", "", "p1")
	g.emit(Bind(portal, name, g.paramValues(s.params), g.chance(0.1)))
	if g.chance(0.4) {
		g.emit(Describe('P', portal))
	}
	maxRows := []int{0, 0, 0, 1, 2}[g.r.IntN(5)]
	g.emit(Execute(portal, maxRows))
	if maxRows > 0 && g.chance(0.5) {
		g.emit(Execute(portal, 0))
	}
	for i := 0; i < s.copyIn; i++ {
		g.copyIn()
	}
	if mayClose && g.chance(0.2) {
		g.emit(Close('P', portal))
	}
	if mayClose && g.chance(0.15) {
		g.emit(Close('S', name))
		delete(g.stmts, name)
	}
}

// parse prepares a statement of the corpus as name. A plausible client
// closes a named statement before it prepares the name again.
func (g *gen) parse(name string) {
	if _, ok := g.stmts[name]; ok && name != "" && !g.nonsense {
		g.emit(Close('S', name))
	}
	s := g.pick(extendedCorpus)
	g.emit(Parse(name, s.sql))
	g.stmts[name] = s
}

func (g *gen) paramValues(n int) []string {
	if g.chance(0.05) {
		n = g.r.IntN(3) // a wrong count: an error
	}
	vals := make([]string, n)
	for i := range vals {
		vals[i] = g.oneOf("3", "3", "2", "0", "abc")
	}
	return vals
}

// flushThenMore is asyncpg's copy_records_to_table and friends: Parse,
// Describe and Flush, the replies read, then (no Sync in between) either a
// simple Query or the rest of the group.
func (g *gen) flushThenMore() {
	name := g.oneOf("", "s1")
	g.parse(name)
	s := g.stmts[name]
	g.emit(Describe('S', name))
	g.emit(Flush())
	g.read()
	if g.chance(0.6) {
		g.simple()
		return
	}
	g.emit(Bind("", name, g.paramValues(s.params), false))
	g.emit(Execute("", 0))
	for i := 0; i < s.copyIn; i++ {
		g.copyIn()
	}
	g.emit(Sync())
}

// autosave is PgJDBC's autosave=conservative: BEGIN as Parse/Bind/Execute
// without Sync, a SAVEPOINT as a simple Query, the statement, then Sync.
func (g *gen) autosave() {
	g.emit(Parse("", "BEGIN"))
	g.emit(Bind("", "", nil, false))
	g.emit(Execute("", 0))
	g.emit(Query("SAVEPOINT PGJDBC_AUTOSAVE"))
	g.stmts[""] = stmt{sql: "BEGIN"}
	g.execute(false)
	g.emit(Sync())
}

// stray is a message that may make no sense where it is.
func (g *gen) stray() Msg {
	name := g.oneOf("", "s1", "nope")
	portal := g.oneOf("", "p1", "nope")
	switch g.r.IntN(12) {
	case 0:
		return CopyData(g.oneOf("stray\n", "x"))
	case 1:
		return CopyDone()
	case 2:
		return CopyFail("stray")
	case 3:
		return Sync()
	case 4:
		return Flush()
	case 5:
		return Execute(portal, g.r.IntN(3))
	case 6:
		return Bind(portal, name, g.paramValues(g.r.IntN(2)), false)
	case 7:
		return Describe(g.oneOf("S", "P")[0], g.oneOf(name, portal))
	case 8:
		return Close(g.oneOf("S", "P")[0], g.oneOf(name, portal))
	case 9:
		s := g.pick(extendedCorpus)
		g.stmts[name] = s
		return Parse(name, s.sql)
	default:
		return Query(g.pick(simpleCorpus).sql)
	}
}

// layout turns the events into steps: writes in random pieces (cut
// anywhere, message headers included), pauses, reads, and the end.
func (g *gen) layout(seed int64) *Seq {
	seq := &Seq{Seed: seed, Nonsense: g.nonsense}
	var ends []int // end offset of each message
	for _, e := range g.events {
		if e.msg != nil {
			seq.Offsets = append(seq.Offsets, len(seq.Stream))
			seq.Msgs = append(seq.Msgs, *e.msg)
			seq.Stream = append(seq.Stream, e.msg.Bytes...)
			ends = append(ends, len(seq.Stream))
		}
	}
	l := &layouter{g: g, seq: seq, ends: ends}
	for i, m := range seq.Msgs {
		if m.Type == 'Q' || m.Type == 'P' {
			l.firstStart, l.firstEnd = seq.Offsets[i], ends[i]
			break
		}
	}
	end := 0 // end of the messages so far
	mi := 0  // messages so far
	for _, e := range g.events {
		switch {
		case e.msg != nil:
			end = ends[mi]
			mi++
		case e.read:
			l.writeTo(end)
			// Sometimes the start of the next message goes out before the read.
			if mi < len(seq.Msgs) && g.chance(0.1) {
				if c := seq.Offsets[mi] + 1 + g.r.IntN(len(seq.Msgs[mi].Bytes)-1); l.mayCut(c) {
					l.writeTo(c)
				}
			}
			l.readStep(false)
		default:
			l.writeTo(end)
			seq.Steps = append(seq.Steps, Step{Kind: StepSleep, Pause: e.pause})
		}
	}
	switch {
	case g.chance(0.15):
		// Hang up, sometimes in the middle of the last message.
		last := len(seq.Msgs) - 1
		c := seq.Offsets[last] + 1 + g.r.IntN(len(seq.Msgs[last].Bytes)-1)
		if g.chance(0.5) && l.mayCut(c) {
			l.writeTo(c)
		} else {
			l.writeTo(len(seq.Stream))
		}
		seq.Steps = append(seq.Steps, Step{Kind: StepHangUp})
	default:
		if g.chance(0.05) {
			t := Terminate()
			seq.Offsets = append(seq.Offsets, len(seq.Stream))
			seq.Msgs = append(seq.Msgs, t)
			seq.Stream = append(seq.Stream, t.Bytes...)
			l.ends = append(l.ends, len(seq.Stream))
		}
		l.writeTo(len(seq.Stream))
		if n := len(seq.Steps); n > 0 && seq.Steps[n-1].Kind == StepRead {
			seq.Steps[n-1].Final = true
		} else {
			l.readStep(true)
		}
	}
	return seq
}

type layouter struct {
	g       *gen
	seq     *Seq
	ends    []int
	written int // bytes written so far
	counted int // bytes whose messages' ReadyForQuery are counted in reads
	// firstStart and firstEnd delimit the first Query or Parse.
	firstStart, firstEnd int
}

// mayCut reports whether a write may end at offset c.
func (l *layouter) mayCut(c int) bool {
	return l.g.o.HardFirst || c <= l.firstStart || c >= l.firstEnd
}

// writeTo writes the stream up to offset to, in one or more pieces with
// short pauses between them.
func (l *layouter) writeTo(to int) {
	g := l.g
	if to <= l.written {
		return
	}
	cuts := []int{l.written}
	if to-l.written > 1 && g.chance(0.4) {
		for n := 1 + g.r.IntN(3); n > 0; n-- {
			var c int
			if g.chance(0.4) {
				// Inside a message header: type byte and length.
				mi := l.msgAtOrAfter(l.written + 1 + g.r.IntN(to-l.written-1))
				c = l.seq.Offsets[mi] + 1 + g.r.IntN(4)
			} else {
				c = l.written + 1 + g.r.IntN(to-l.written-1)
			}
			if c > cuts[len(cuts)-1] && c < to && l.mayCut(c) {
				cuts = append(cuts, c)
			}
		}
	}
	cuts = append(cuts, to)
	for i := 1; i < len(cuts); i++ {
		if i > 1 {
			d := time.Duration(g.r.IntN(3)) * time.Millisecond
			if g.chance(0.1) {
				d = 20 * time.Millisecond
			}
			if g.o.LongPauses && !g.long && g.chance(0.03) {
				d, g.long = LongPause, true // the parker, with half a message read
			}
			if d > 0 {
				l.seq.Steps = append(l.seq.Steps, Step{Kind: StepSleep, Pause: d})
			}
		}
		l.seq.Steps = append(l.seq.Steps, Step{Kind: StepWrite, From: cuts[i-1], To: cuts[i]})
	}
	l.written = to
}

// msgAtOrAfter returns the index of the message holding offset off.
func (l *layouter) msgAtOrAfter(off int) int {
	for i := len(l.seq.Offsets) - 1; i >= 0; i-- {
		if l.seq.Offsets[i] <= off {
			return i
		}
	}
	return 0
}

// readStep adds a read expecting a ReadyForQuery for each Query and Sync
// written in full since the last read.
func (l *layouter) readStep(final bool) {
	n := 0
	for i, m := range l.seq.Msgs {
		if l.ends[i] > l.counted && l.ends[i] <= l.written && repliesReadyForQuery(m.Type) {
			n++
		}
	}
	l.counted = l.written
	l.seq.Steps = append(l.seq.Steps, Step{Kind: StepRead, RFQ: n, Final: final})
}

// ReadSteps is the number of read steps.
func (s *Seq) ReadSteps() int {
	n := 0
	for _, st := range s.Steps {
		if st.Kind == StepRead {
			n++
		}
	}
	return n
}

// String lists the steps, each write with the messages (or parts) it
// carries.
func (s *Seq) String() string {
	var b strings.Builder
	kind := "plausible"
	if s.Nonsense {
		kind = "with messages out of place"
	}
	fmt.Fprintf(&b, "seed %d (%s): %d messages, %d bytes\n", s.Seed, kind, len(s.Msgs), len(s.Stream))
	for i, st := range s.Steps {
		switch st.Kind {
		case StepWrite:
			fmt.Fprintf(&b, "  %2d write [%d,%d): %s\n", i, st.From, st.To, s.describeRange(st.From, st.To))
		case StepRead:
			what := "quiet"
			if st.RFQ > 0 {
				what = fmt.Sprintf("%d ReadyForQuery or quiet", st.RFQ)
			}
			if st.Final {
				what += ", final"
			}
			fmt.Fprintf(&b, "  %2d read until %s\n", i, what)
		case StepSleep:
			fmt.Fprintf(&b, "  %2d sleep %s\n", i, st.Pause)
		case StepHangUp:
			fmt.Fprintf(&b, "  %2d hang up\n", i)
		}
	}
	return b.String()
}

// describeRange describes the messages overlapping Stream[from:to].
func (s *Seq) describeRange(from, to int) string {
	var parts []string
	for i, m := range s.Msgs {
		start, end := s.Offsets[i], s.Offsets[i]+len(m.Bytes)
		if end <= from || start >= to {
			continue
		}
		if start >= from && end <= to {
			parts = append(parts, m.Desc)
			continue
		}
		parts = append(parts, fmt.Sprintf("%s [bytes %d-%d of %d]", m.Desc, max(start, from)-start, min(end, to)-start, len(m.Bytes)))
	}
	return strings.Join(parts, " | ")
}
