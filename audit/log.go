// Package audit writes pgtenant's per-tenant audit log: one JSON line per
// statement (fingerprint and normalized text, never a literal value), per
// guard refusal and per failed login. A *Log implements proxy.Auditor.
//
// Sessions hand events to a bounded channel and never wait: one goroutine
// encodes and writes them every flushEvery, and when the channel is full
// events are dropped and counted (Dropped), so a slow disk cannot slow the
// relay.
package audit

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgtenant/pgtenant/config"
	"github.com/pgtenant/pgtenant/proxy"
)

// Log is an audit log. Its methods are safe for concurrent use.
type Log struct {
	log     *slog.Logger // where the writer reports its own failures
	rates   atomic.Pointer[rates]
	cache   *cache
	events  chan proxy.AuditEvent
	dropped atomic.Uint64
	reopen  chan reopenRequest
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once

	// The writer goroutine's own.
	out  io.Writer
	file *os.File
	bw   *bufio.Writer
}

var _ proxy.Auditor = (*Log)(nil)

// reopenRequest asks the writer to (re)open path ("" for stdout) and to
// close done when it has.
type reopenRequest struct {
	path string
	done chan struct{}
}

// rates are the sample rates in force.
type rates struct {
	all       float64
	perTenant map[string]float64
}

// Options are what tests may change.
type Options struct {
	CacheEntries int       // default DefaultCacheEntries
	Stdout       io.Writer // what "stdout" means; default os.Stdout
}

// Open starts an audit log as cfg says: its output is opened (a file for
// appending, created 0600 if missing) before Open returns.
func Open(cfg *config.Audit, log *slog.Logger, opts Options) (*Log, error) {
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	l := &Log{
		log:    log,
		cache:  newCache(opts.CacheEntries),
		events: make(chan proxy.AuditEvent, max(cfg.Buffer, 1)),
		reopen: make(chan reopenRequest),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
		out:    opts.Stdout,
	}
	l.setRates(cfg)
	if cfg.Output != config.AuditStdout {
		if err := l.openFile(cfg.Output); err != nil {
			return nil, err
		}
	}
	l.bw = bufio.NewWriterSize(l.out, 64<<10)
	go l.write(opts.Stdout)
	return l, nil
}

func (l *Log) setRates(cfg *config.Audit) {
	r := &rates{all: 1, perTenant: cfg.TenantSampleRates}
	if cfg.SampleRate != nil {
		r.all = *cfg.SampleRate
	}
	l.rates.Store(r)
}

// Apply takes a reloaded config: the sample rates apply at once; the
// output file is reopened (so logrotate's rename takes effect), or the
// output changed. It returns when lines logged from then on go to the new
// output.
func (l *Log) Apply(cfg *config.Audit) {
	l.setRates(cfg)
	req := reopenRequest{path: cfg.Output, done: make(chan struct{})}
	if req.path == config.AuditStdout {
		req.path = ""
	}
	select {
	case l.reopen <- req:
		<-req.done
	case <-l.done: // closed
	}
}

// openFile opens path for appending; the writer goroutine's, or Open's
// before it starts.
func (l *Log) openFile(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit.output: %w", err)
	}
	if l.file != nil {
		_ = l.file.Close()
	}
	l.file, l.out = f, f
	return nil
}

// Sample reports whether the next statement of tenant is logged.
func (l *Log) Sample(tenant string) bool {
	r := l.rates.Load()
	rate, ok := r.perTenant[tenant]
	if !ok {
		rate = r.all
	}
	switch {
	case rate >= 1:
		return true
	case rate <= 0:
		return false
	}
	return rand.Float64() < rate
}

// Statement returns what the log shows of text (cached).
func (l *Log) Statement(text []byte) *proxy.AuditStatement { return l.cache.get(text) }

// Log queues e, or drops and counts it when the buffer is full.
func (l *Log) Log(e proxy.AuditEvent) {
	select {
	case l.events <- e:
	default:
		l.dropped.Add(1)
	}
}

// Dropped is how many events were dropped.
func (l *Log) Dropped() uint64 { return l.dropped.Load() }

// Close writes what is queued and closes the output. Events logged after
// it are not written.
func (l *Log) Close() {
	l.once.Do(func() { close(l.stop) })
	<-l.done
}

// flushEvery is how often the writer takes what sessions queued. Waking it
// per line instead would cost every statement a goroutine wake-up (and
// often a thread's), which is most of what a line costs.
const flushEvery = 50 * time.Millisecond

// write is the writer goroutine: every flushEvery it encodes the events
// queued and writes them out; it serves reopen requests and the close
// after writing what was queued before them.
func (l *Log) write(stdout io.Writer) {
	defer close(l.done)
	enc := json.NewEncoder(l.bw)
	var line jsonLine
	tick := time.NewTicker(flushEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			l.drain(enc, &line)
			l.flush()
		case req := <-l.reopen:
			l.drain(enc, &line)
			l.switchOutput(req.path, stdout, enc)
			close(req.done)
		case <-l.stop:
			l.drain(enc, &line)
			l.flush()
			if l.file != nil {
				_ = l.file.Close()
			}
			return
		}
	}
}

// drain encodes the events queued.
func (l *Log) drain(enc *json.Encoder, line *jsonLine) {
	for {
		select {
		case e := <-l.events:
			line.fill(&e)
			if err := enc.Encode(line); err != nil {
				l.log.Error("audit log: write failed", "err", err)
			}
		default:
			return
		}
	}
}

func (l *Log) flush() {
	if err := l.bw.Flush(); err != nil {
		l.log.Error("audit log: write failed", "err", err)
	}
}

// switchOutput reopens the file (or goes to stdout) after what is buffered
// went to the old one. On failure the old output stays.
func (l *Log) switchOutput(path string, stdout io.Writer, enc *json.Encoder) {
	l.flush()
	if path == "" {
		if l.file != nil {
			_ = l.file.Close()
			l.file = nil
		}
		l.out = stdout
	} else if err := l.openFile(path); err != nil {
		l.log.Error("audit log: reopen failed; writing on to the old file", "err", err)
		return
	}
	l.bw.Reset(l.out)
	*enc = *json.NewEncoder(l.bw)
}

// jsonLine is one line of the log.
type jsonLine struct {
	Time        string  `json:"time"`
	Kind        string  `json:"kind"`
	Tenant      string  `json:"tenant,omitempty"`
	User        string  `json:"user"`
	Conn        uint64  `json:"conn"`
	Remote      string  `json:"remote,omitempty"`
	Protocol    string  `json:"protocol,omitempty"`
	Fingerprint string  `json:"fingerprint,omitempty"`
	Statement   string  `json:"statement,omitempty"`
	Unparsed    bool    `json:"unparsed,omitempty"` // the text did not parse: not shown
	DurationMS  float64 `json:"duration_ms,omitempty"`
	Rows        *int64  `json:"rows,omitempty"`
	SQLState    string  `json:"sqlstate,omitempty"`
	Reason      string  `json:"reason,omitempty"`
	rows        int64
}

func (j *jsonLine) fill(e *proxy.AuditEvent) {
	*j = jsonLine{Time: e.Time.UTC().Format(time.RFC3339Nano), Kind: e.Kind, Tenant: e.Tenant, User: e.User,
		Conn: e.Conn, Remote: e.Remote, Protocol: e.Protocol, SQLState: e.SQLState, Reason: maskQuoted(e.Reason)}
	if st := e.Statement; st != nil {
		j.Fingerprint, j.Statement = st.Fingerprint, st.Normalized
		j.Unparsed = st.Normalized == ""
	}
	if e.Kind == proxy.AuditStatementRun {
		j.DurationMS = float64(e.Duration.Microseconds()) / 1000
		j.rows = e.Rows
		j.Rows = &j.rows
	}
}

// maskQuoted elides the quoted parts of an error message: PostgreSQL's
// and the guard's messages quote what the statement held (a setting's
// value, the token at a syntax error), which may be a literal value. A
// quoted token may itself hold quote characters (a JSON literal), so
// quotes are not paired: everything from the first quote to the last goes
// (and to the end, after a lone one). The statement's normalized text shows
// the names.
func maskQuoted(msg string) string {
	first := strings.IndexAny(msg, `"'`)
	if first < 0 {
		return msg
	}
	last := strings.LastIndexAny(msg, `"'`)
	rest := ""
	if last > first {
		rest = msg[last+1:]
	}
	return msg[:first] + `"…"` + rest
}
