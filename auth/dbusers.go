package auth

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/config"
)

const (
	// dbQueryTimeout bounds one lookup: waiting for the connection, (re)connecting
	// and running the query.
	dbQueryTimeout = 5 * time.Second
	// dbCacheMax bounds the number of cached names (found and unknown).
	dbCacheMax = 10_000

	defaultDBCacheTTL    = time.Minute
	defaultDBNegativeTTL = 10 * time.Second
)

// dbRow is what the lookup query returned for one name. found is false when
// the query returned no row. extra holds the optional named columns
// (dbColumns) that were not NULL.
type dbRow struct {
	verifier, tenant string
	found            bool
	extra            map[string]string
}

// dbColumns are the columns the lookup query may return after the
// verifier and the tenant, by name: the tenant's placement, the user's
// role and read-only, and the limits db_users.limits allows.
var dbColumns = []string{"upstream", "schema", "role", "read_only"}

// dbQueryFunc runs the lookup query for one user name. An error means the
// answer is unknown (database down, query broken), not that the user is.
type dbQueryFunc func(ctx context.Context, user string) (dbRow, error)

// DBDirectory looks users up with cfg.Query ($1 = user name; one row: SCRAM
// verifier text, tenant text) over a pgconn connection made with
// cfg.Connection, like PgBouncer's auth_query.
//
// Answers are cached per user name: found users for cfg.CacheTTL, unknown
// names for cfg.NegativeTTL, so a flood of unknown names does not become a
// flood of queries. Concurrent lookups of one name share one query. A failed
// query (database down) is logged, not cached, and answers "not found", so
// authentication fails closed. The connection is made on the first lookup and
// remade lazily after an error.
type DBDirectory struct {
	log         *slog.Logger
	query       dbQueryFunc
	now         func() time.Time
	cacheTTL    time.Duration
	negativeTTL time.Duration
	maxEntries  int
	timeout     time.Duration

	// ctx is cancelled by Close, which aborts in-flight queries.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	cache    map[string]*dbCacheEntry
	found    list.List // *dbCacheEntry of found users, oldest first (so soonest to expire)
	unknown  list.List // *dbCacheEntry of unknown names, oldest first
	inflight map[string]*dbCall

	// The connection; sem (capacity 1) guards it and serialises queries.
	pgCfg  *pgconn.Config
	sem    chan struct{}
	conn   *pgconn.PgConn
	closed bool // under sem
	sql    string
	known  []string // the optional columns the query may return
	limits []string // the limit settings among them (db_users.limits)
}

type dbCacheEntry struct {
	user    string
	entry   Entry
	found   bool
	expires time.Time
	elem    *list.Element
}

// dbCall is one query in progress; lookups of the same name wait on done.
type dbCall struct {
	done  chan struct{}
	entry Entry
	found bool
}

// NewDBDirectory checks cfg and returns the directory; it does not connect
// yet. Zero TTLs get the configuration defaults.
func NewDBDirectory(cfg *config.DBUsers, log *slog.Logger) (*DBDirectory, error) {
	if cfg == nil {
		return nil, errors.New("db_users: no configuration")
	}
	if !strings.Contains(cfg.Query, "$1") {
		return nil, errors.New("db_users.query: must take the user name as $1")
	}
	pgCfg, err := pgconn.ParseConfig(cfg.Connection)
	if err != nil {
		// pgconn's parse errors redact the password.
		return nil, fmt.Errorf("db_users.connection: %w", err)
	}
	d := newDBDirectory(cfg, log, nil)
	d.known = append(slices.Clone(dbColumns), cfg.Limits...)
	d.pgCfg = pgCfg
	d.sql = cfg.Query
	d.query = d.pgQuery
	return d, nil
}

// newDBDirectory builds a directory around query (nil: set by the caller).
func newDBDirectory(cfg *config.DBUsers, log *slog.Logger, query dbQueryFunc) *DBDirectory {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &DBDirectory{
		log:         log,
		query:       query,
		now:         time.Now,
		cacheTTL:    cfg.CacheTTL.Duration,
		negativeTTL: cfg.NegativeTTL.Duration,
		maxEntries:  dbCacheMax,
		timeout:     dbQueryTimeout,
		cache:       make(map[string]*dbCacheEntry),
		inflight:    make(map[string]*dbCall),
		sem:         make(chan struct{}, 1),
		limits:      cfg.Limits,
	}
	if d.cacheTTL <= 0 {
		d.cacheTTL = defaultDBCacheTTL
	}
	if d.negativeTTL <= 0 {
		d.negativeTTL = defaultDBNegativeTTL
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	return d
}

// Lookup returns the user's entry, from the cache or from the database.
func (d *DBDirectory) Lookup(user string) (Entry, bool) {
	if !queryable(user) {
		return Entry{}, false
	}
	d.mu.Lock()
	if ce, ok := d.cache[user]; ok && d.now().Before(ce.expires) {
		d.mu.Unlock()
		return ce.entry, ce.found
	}
	if c, ok := d.inflight[user]; ok {
		d.mu.Unlock()
		<-c.done
		return c.entry, c.found
	}
	c := d.startCallLocked(user)
	d.mu.Unlock()
	entry, found, _ := d.finishCall(c, user)
	return entry, found
}

// Refresh reads the user's row again, past the cache, and caches the
// answer in place of the cached one, so that later logins use it too
// (after a lookup already in flight, which may have read the row before
// it changed). A pgtenant resume places the sessions it moves by it. An
// error means the answer is unknown (the query failed); the cached entry
// is dropped then, so logins ask again.
func (d *DBDirectory) Refresh(user string) (Entry, bool, error) {
	if !queryable(user) {
		return Entry{}, false, nil
	}
	d.mu.Lock()
	for {
		c, ok := d.inflight[user]
		if !ok {
			break
		}
		d.mu.Unlock()
		<-c.done
		d.mu.Lock()
	}
	c := d.startCallLocked(user)
	d.mu.Unlock()
	entry, found, cacheable := d.finishCall(c, user)
	if !cacheable {
		return Entry{}, false, fmt.Errorf("db_users: the lookup of user %q failed", user)
	}
	return entry, found, nil
}

// queryable reports whether user can be asked about: names the database
// could not take as text are unknown without asking (and without filling
// the cache).
func queryable(user string) bool {
	return user != "" && utf8.ValidString(user) && strings.IndexByte(user, 0) < 0
}

// startCallLocked registers a query for user, which later lookups of the
// name wait for. d.mu is held.
func (d *DBDirectory) startCallLocked(user string) *dbCall {
	c := &dbCall{done: make(chan struct{})}
	d.inflight[user] = c
	return c
}

// finishCall runs c's query, caches its answer (drops the cached one when
// the answer is unknown) and wakes the lookups waiting for it.
func (d *DBDirectory) finishCall(c *dbCall, user string) (entry Entry, found, cacheable bool) {
	entry, found, cacheable = d.fetch(user)
	d.mu.Lock()
	delete(d.inflight, user)
	if cacheable {
		d.store(user, entry, found)
	} else if old, ok := d.cache[user]; ok {
		d.remove(old)
	}
	d.mu.Unlock()
	c.entry, c.found = entry, found
	close(c.done)
	return entry, found, cacheable
}

// fetch runs the query and checks the row. cacheable is false when the
// answer is unknown (query error).
func (d *DBDirectory) fetch(user string) (entry Entry, found, cacheable bool) {
	ctx, cancel := context.WithTimeout(d.ctx, d.timeout)
	defer cancel()
	row, err := d.query(ctx, user)
	if err != nil {
		d.log.Warn("db_users: lookup failed; the user cannot log in until it succeeds", "user", user, "error", err)
		return Entry{}, false, false
	}
	if !row.found {
		return Entry{}, false, true
	}
	creds, err := ParseVerifier(row.verifier) // the error never echoes the verifier
	if err != nil {
		d.log.Warn("db_users: ignoring user with an invalid verifier", "user", user, "error", err)
		return Entry{}, false, true
	}
	if row.tenant == "" || strings.IndexFunc(row.tenant, unicode.IsControl) >= 0 {
		d.log.Warn("db_users: ignoring user with an empty tenant or one containing control characters", "user", user)
		return Entry{}, false, true
	}
	entry = Entry{Credentials: creds, Tenant: row.tenant}
	if err := d.optional(&entry, row.extra); err != nil {
		d.log.Warn("db_users: ignoring user with an invalid column", "user", user, "error", err)
		return Entry{}, false, true
	}
	return entry, true, true
}

// optional fills entry from the optional columns of its row.
func (d *DBDirectory) optional(entry *Entry, extra map[string]string) error {
	for name, v := range extra {
		if strings.IndexFunc(v, unicode.IsControl) >= 0 {
			return fmt.Errorf("column %s contains control characters", name)
		}
	}
	entry.Upstream, entry.Schema, entry.Role = extra["upstream"], extra["schema"], extra["role"]
	if v, ok := extra["read_only"]; ok {
		switch strings.ToLower(v) {
		case "t", "true", "on", "1":
			entry.ReadOnly = true
		case "f", "false", "off", "0":
		default:
			return fmt.Errorf("column read_only: %q is not a boolean", v)
		}
	}
	for _, name := range d.limits {
		v, ok := extra[name]
		if !ok {
			continue
		}
		ms, err := limitMillis(v)
		if err != nil {
			if n, nerr := strconv.ParseInt(v, 10, 64); nerr == nil {
				ms, err = limitMillis(float64(n))
			}
		}
		if err != nil {
			return fmt.Errorf("column %s: %v", name, err)
		}
		entry.Limits = append(entry.Limits, Setting{Name: name, Value: strconv.FormatInt(ms, 10)})
	}
	return nil
}

// store caches an answer; d.mu is held.
func (d *DBDirectory) store(user string, entry Entry, found bool) {
	if old, ok := d.cache[user]; ok {
		d.remove(old)
	}
	now := d.now()
	// Each list holds entries of one TTL in insertion order, so expired
	// entries are at the fronts.
	for _, l := range []*list.List{&d.unknown, &d.found} {
		for l.Len() > 0 && !now.Before(l.Front().Value.(*dbCacheEntry).expires) {
			d.remove(l.Front().Value.(*dbCacheEntry))
		}
	}
	// Still full: evict the oldest unknown name, then the oldest user, so a
	// flood of unknown names cannot push real users out first.
	for len(d.cache) >= d.maxEntries {
		l := &d.unknown
		if l.Len() == 0 {
			l = &d.found
		}
		d.remove(l.Front().Value.(*dbCacheEntry))
	}
	ce := &dbCacheEntry{user: user, entry: entry, found: found}
	if found {
		ce.expires = now.Add(d.cacheTTL)
		ce.elem = d.found.PushBack(ce)
	} else {
		ce.expires = now.Add(d.negativeTTL)
		ce.elem = d.unknown.PushBack(ce)
	}
	d.cache[user] = ce
}

func (d *DBDirectory) remove(ce *dbCacheEntry) {
	if ce.found {
		d.found.Remove(ce.elem)
	} else {
		d.unknown.Remove(ce.elem)
	}
	delete(d.cache, ce.user)
}

// pgQuery runs the lookup query on the shared connection, connecting first
// when there is none.
func (d *DBDirectory) pgQuery(ctx context.Context, user string) (dbRow, error) {
	select {
	case d.sem <- struct{}{}:
	case <-ctx.Done():
		return dbRow{}, fmt.Errorf("waiting for the lookup connection: %w", ctx.Err())
	}
	defer func() { <-d.sem }()
	if d.closed {
		return dbRow{}, errors.New("directory closed")
	}
	if d.conn == nil || d.conn.IsClosed() {
		d.dropConn()
		conn, err := pgconn.ConnectConfig(ctx, d.pgCfg.Copy())
		if err != nil {
			return dbRow{}, fmt.Errorf("connecting: %w", err)
		}
		d.conn = conn
	}
	// Unspecified parameter type, text format: the server infers the type
	// from the query (text, name, varchar...).
	rr := d.conn.ExecParams(ctx, d.sql, [][]byte{[]byte(user)}, nil, nil, nil)
	// The row description is known even when no row follows.
	names := columnNames(rr.FieldDescriptions())
	ncols := len(names)
	colErr := d.checkColumns(names)
	var rows []dbRow
	for rr.NextRow() {
		if colErr == nil && len(rows) < 2 {
			v := rr.Values() // only valid until the next row; NULL is nil and becomes "", which the caller rejects
			row := dbRow{verifier: string(v[0]), tenant: string(v[1]), found: true}
			for i := 2; i < ncols; i++ {
				if v[i] != nil {
					if row.extra == nil {
						row.extra = map[string]string{}
					}
					row.extra[names[i]] = string(v[i])
				}
			}
			rows = append(rows, row)
		}
	}
	if _, err := rr.Close(); err != nil {
		// A server error (permission denied, bad query) leaves the connection
		// usable; anything else (timeout, network) may not have.
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) {
			d.dropConn()
		}
		return dbRow{}, fmt.Errorf("query: %w", err)
	}
	if colErr != nil {
		return dbRow{}, colErr
	}
	switch len(rows) {
	case 0:
		return dbRow{}, nil
	case 1:
		return rows[0], nil
	default:
		return dbRow{}, errors.New("query returned several rows for one user; want at most 1")
	}
}

func columnNames(fds []pgconn.FieldDescription) []string {
	names := make([]string, len(fds))
	for i, fd := range fds {
		names[i] = fd.Name
	}
	return names
}

// checkColumns checks the lookup query's columns: the verifier and the
// tenant, then optional ones by name, each at most once.
func (d *DBDirectory) checkColumns(names []string) error {
	if len(names) < 2 {
		return fmt.Errorf("query returned %d columns; want 2 (verifier, tenant), then optionally %s", len(names), strings.Join(d.known, ", "))
	}
	for i, name := range names[2:] {
		switch {
		case !slices.Contains(d.known, name):
			hint := ""
			if slices.Contains(config.LimitSettings, name) {
				hint = " (list it in db_users.limits to let the query set it)"
			}
			return fmt.Errorf("query returned column %q; the columns after verifier and tenant must be named %s%s", name, strings.Join(d.known, ", "), hint)
		case slices.Contains(names[2:2+i], name):
			return fmt.Errorf("query returned column %q twice", name)
		}
	}
	return nil
}

// dropConn closes the connection, if any; d.sem is held.
func (d *DBDirectory) dropConn() {
	if d.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = d.conn.Close(ctx)
	d.conn = nil
}

// Close aborts in-flight queries and closes the connection. Later lookups
// answer from the cache or "not found".
func (d *DBDirectory) Close() {
	d.cancel()
	d.sem <- struct{}{}
	d.closed = true
	d.dropConn()
	<-d.sem
}

type chain []Directory

func (c chain) Lookup(user string) (Entry, bool) {
	for _, d := range c {
		if e, ok := d.Lookup(user); ok {
			return e, true
		}
	}
	return Entry{}, false
}

// Chain looks a user up in each directory in turn (config users first, then
// the database); the first that knows the user answers. Nil directories are
// skipped.
func Chain(dirs ...Directory) Directory {
	c := make(chain, 0, len(dirs))
	for _, d := range dirs {
		if d != nil {
			c = append(c, d)
		}
	}
	return c
}
