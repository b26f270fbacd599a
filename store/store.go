// Package store is cyrus-sidecar's SQLite store of organisations, domains,
// users, aliases, credentials and vacation settings, shared by every service
// and edited by the admin commands, possibly from another process.
//
// Writes go through one connection in immediate transactions, so writers
// queue on busy_timeout instead of failing mid-transaction with SQLITE_BUSY;
// reads use a small pool of read-only connections. Generation tells a
// long-running reader cheaply whether anything it may have cached changed.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" driver
)

// Sentinels, matched with errors.Is; the wrapping error says which object.
var (
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrInUse     = errors.New("still in use")
	ErrNotHosted = errors.New("domain is not hosted here")
	ErrSchema    = errors.New("store schema is newer than this program")
)

//go:embed migrations/*.sql
var migrations embed.FS

// Options tune Open. The zero value is usable.
type Options struct {
	// MaxReaders caps the read-only connection pool (default 4).
	MaxReaders int
	// BusyTimeout is how long a statement waits for another process's
	// write lock before failing (default 5s).
	BusyTimeout time.Duration
}

// Store is an open store. Its methods are safe for concurrent use.
type Store struct {
	path string
	file os.FileInfo // the database file as opened, see CheckFile
	r    *sql.DB     // read-only pool
	w    *sql.DB     // one writer connection

	// Statements of the login path, prepared once on the reader pool
	// (database/sql prepares each again, once, on every pool connection it
	// runs on). Parsing the statement cost modernc's SQLite more than
	// running it: about 80 µs of CPU per login for the two of them.
	userStmt    *sql.Stmt // userByAddress
	appPassStmt *sql.Stmt // appPasswordsOf
	// auditStmts insert auditChunks[i] login attempts each, prepared once
	// on the writer: parsing a 256-row INSERT was a third of its cost.
	auditStmts [len(auditChunks)]*sql.Stmt

	// The watcher: one connection of its own, because PRAGMA data_version
	// only changes for commits made by other connections.
	watchMu  sync.Mutex
	watch    *sql.Conn
	watchDB  *sql.DB
	dvStmt   *sql.Stmt // PRAGMA data_version, prepared once
	shm      *shmWatch // nil: always ask SQLite
	lastHdr  [walHeaderLen]byte
	lastData int64
	lastN    int64 // the generation row as last read
	gen      int64 // what Generation returns: moves whenever lastN moves
	slow     int64 // Generation calls that asked SQLite (for tests)
}

// Open opens (creating if needed) the store at path and brings its schema up
// to date.
func Open(ctx context.Context, path string, opt Options) (*Store, error) {
	// The path goes into a file: URI, where these have meanings ("%41"
	// would open "A").
	if strings.ContainsAny(path, "?#%") {
		return nil, fmt.Errorf("open store %s: path must not contain '?', '#' or '%%'", path)
	}
	if opt.MaxReaders <= 0 {
		opt.MaxReaders = 4
	}
	if opt.BusyTimeout <= 0 {
		opt.BusyTimeout = 5 * time.Second
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// The store holds password hashes: create it private to the owner and
	// group (SQLite gives -wal and -shm the same mode).
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640); err == nil {
		f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// SQLite follows a symlink and keeps -wal/-shm beside the real file;
	// the change detection must look there too.
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	path = real
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	base := "file:" + path + "?_pragma=busy_timeout(" + strconv.FormatInt(opt.BusyTimeout.Milliseconds(), 10) + ")" +
		"&_pragma=foreign_keys(1)"
	s := &Store{path: path, file: fi}
	// The writer creates the file and switches it to WAL (a persistent
	// setting) before any reader opens it.
	if s.w, err = sql.Open("sqlite", base+"&_pragma=journal_mode(WAL)&_txlock=immediate"); err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.w.SetMaxOpenConns(1)
	s.w.SetConnMaxIdleTime(0)
	if err := s.migrate(ctx); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if s.r, err = sql.Open("sqlite", base+"&_pragma=query_only(1)"); err != nil {
		s.w.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.r.SetMaxOpenConns(opt.MaxReaders)
	s.r.SetMaxIdleConns(opt.MaxReaders)
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if s.watchDB, err = sql.Open("sqlite", base+"&_pragma=query_only(1)"); err == nil {
		s.watchDB.SetMaxOpenConns(1)
		if s.watch, err = s.watchDB.Conn(ctx); err == nil {
			s.dvStmt, err = s.watch.PrepareContext(ctx, "PRAGMA data_version")
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: watcher: %w", path, err)
	}
	// The watcher's first read maps the -shm file and takes SQLite's
	// shared lock on it, so no other process can truncate it from now on.
	if _, err := s.Generation(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s.shm = openSHM(path + "-shm")
	return s, nil
}

// Close releases the store's connections.
func (s *Store) Close() error {
	var errs []error
	s.watchMu.Lock()
	errs = append(errs, s.shm.close())
	s.watchMu.Unlock()
	if s.dvStmt != nil {
		errs = append(errs, s.dvStmt.Close())
	}
	if s.watch != nil {
		errs = append(errs, s.watch.Close())
	}
	for _, st := range append([]*sql.Stmt{s.userStmt, s.appPassStmt}, s.auditStmts[:]...) {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	for _, db := range []*sql.DB{s.watchDB, s.r, s.w} {
		if db != nil {
			errs = append(errs, db.Close())
		}
	}
	return errors.Join(errs...)
}

// prepare prepares the login path's statements on the reader pool.
func (s *Store) prepare(ctx context.Context) error {
	var err error
	if s.userStmt, err = s.r.PrepareContext(ctx, userByAddress); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	if s.appPassStmt, err = s.r.PrepareContext(ctx, appPasswordsOf); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	for i, n := range auditChunks {
		if s.auditStmts[i], err = s.w.PrepareContext(ctx, auditInsert(n)); err != nil {
			return fmt.Errorf("prepare: %w", err)
		}
	}
	return nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Generation returns a number that changes whenever a change to the
// directory or credentials (anything a service may cache) has been
// committed, by this process or any other, before the call. The common case,
// no commit at all, costs one read of the WAL-index header (see shmWatch);
// after some commit, one PRAGMA data_version, and only when that moved, one
// row read. The login audit and last-use times do not change the number, so
// logins do not flush caches.
func (s *Store) Generation(ctx context.Context) (int64, error) {
	s.watchMu.Lock()
	defer s.watchMu.Unlock()
	// The header is read before SQLite is asked: a commit that lands after
	// this read changes the header and is caught by the next call.
	hdr, hdrOK := s.shm.header()
	if hdrOK && s.gen != 0 && hdr == s.lastHdr {
		return s.gen, nil
	}
	s.slow++
	var dv int64
	if err := s.dvStmt.QueryRowContext(ctx).Scan(&dv); err != nil {
		return 0, fmt.Errorf("store generation: %w", err)
	}
	if dv != s.lastData || s.gen == 0 {
		var n int64
		if err := s.watch.QueryRowContext(ctx, "SELECT n FROM generation WHERE id = 1").Scan(&n); err != nil {
			return 0, fmt.Errorf("store generation: %w", err)
		}
		// Our own counter, not n itself: a restored backup may bring back
		// an n this process has already handed out, with other data.
		if n != s.lastN || s.gen == 0 {
			s.gen++
		}
		s.lastData, s.lastN = dv, n
	}
	if hdrOK {
		s.lastHdr = hdr
	}
	return s.gen, nil
}

// CheckFile reports an error when the database file at the store's path is
// no longer the one this process opened (deleted, or replaced by a restore):
// the open connections would go on using the old inode while new ones use
// the new file. serve stops on it and systemd restarts it.
func (s *Store) CheckFile() error {
	fi, err := os.Stat(s.path)
	if err != nil {
		return fmt.Errorf("store file %s: %w", s.path, err)
	}
	if !os.SameFile(fi, s.file) {
		return fmt.Errorf("store file %s was replaced while open; restart to use the new one", s.path)
	}
	return nil
}

// Ping checks that the store answers a read.
func (s *Store) Ping(ctx context.Context) error {
	var n int
	if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM generation").Scan(&n); err != nil {
		return fmt.Errorf("store ping: %w", err)
	}
	return nil
}

// migrate applies the embedded migrations newer than PRAGMA user_version, in
// one immediate transaction, so two processes starting at once cannot both
// apply one.
func (s *Store) migrate(ctx context.Context) error {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	defer tx.Rollback()
	var have int
	if err := tx.QueryRowContext(ctx, "PRAGMA user_version").Scan(&have); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if have > len(names) {
		return fmt.Errorf("version %d, this program knows up to %d: %w", have, len(names), ErrSchema)
	}
	for i, name := range names[have:] {
		v := have + i + 1
		if want := fmt.Sprintf("migrations/%04d_", v); !strings.HasPrefix(name, want) {
			return fmt.Errorf("migrate: %s does not start with %s", name, want)
		}
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, string(body)); err != nil {
			return fmt.Errorf("migrate %s: %w", name, err)
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", v)); err != nil {
			return fmt.Errorf("migrate %s: %w", name, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// SchemaVersion is the store's PRAGMA user_version.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.r.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v)
	return v, err
}

// write runs fn in one immediate write transaction.
func (s *Store) write(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() // a no-op after Commit
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit()
}

// now is seconds since the epoch, the unit of every stored time.
func now() int64 { return time.Now().Unix() }

func fromUnix(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(n, 0).UTC()
}

// isUnique reports a UNIQUE or PRIMARY KEY constraint failure. modernc's
// error carries the SQLite extended code; matching the code, not the text.
func isUnique(err error) bool {
	var e interface{ Code() int }
	if errors.As(err, &e) {
		// SQLITE_CONSTRAINT_UNIQUE (2067), SQLITE_CONSTRAINT_PRIMARYKEY (1555)
		return e.Code() == 2067 || e.Code() == 1555
	}
	return false
}
