package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrBackupExists is returned by Backup when the target exists and
// replacing it was not asked for.
var ErrBackupExists = errors.New("backup file exists")

// BackupInfo describes a backup that was written and checked.
type BackupInfo struct {
	Path         string `json:"path"`
	Bytes        int64  `json:"bytes"`
	Orgs         int    `json:"organisations"`
	Domains      int    `json:"domains"`
	Users        int    `json:"users"`
	Aliases      int    `json:"aliases"`
	AppPasswords int    `json:"app_passwords"`
	Vacations    int    `json:"vacations"`
	Logins       int    `json:"audit_entries"`
}

// Backup writes a consistent copy of the store to path. SQLite's VACUUM
// INTO reads one snapshot in one read transaction, so serve and the admin
// commands go on reading and writing meanwhile, and the copy is a single
// compact file with no -wal beside it. The copy is written under a
// temporary name in path's directory with mode 0600 (it holds password
// hashes and webhook secrets), synced, opened again and checked
// (PRAGMA quick_check), and only then given its name: an interrupted
// backup never leaves a file that looks complete. An existing path is
// replaced only with replace, and never when it is the store itself.
func (s *Store) Backup(ctx context.Context, path string, replace bool) (BackupInfo, error) {
	info, err := s.backup(ctx, path, replace)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("backup to %s: %w", path, err)
	}
	return info, nil
}

func (s *Store) backup(ctx context.Context, path string, replace bool) (BackupInfo, error) {
	// The copy is opened again as a file: URI, where these have meanings.
	if strings.ContainsAny(path, "?#%") {
		return BackupInfo{}, errors.New("path must not contain '?', '#' or '%'")
	}
	if err := s.notStoreFile(path); err != nil {
		return BackupInfo{}, err
	}
	if !replace {
		if _, err := os.Lstat(path); err == nil {
			return BackupInfo{}, ErrBackupExists
		}
	}
	dir := filepath.Dir(path)
	removeStaleTemps(dir, filepath.Base(path))
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*") // 0600
	if err != nil {
		return BackupInfo{}, err
	}
	tmp := f.Name()
	f.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	// VACUUM INTO accepts an empty file as its target, so the mode
	// CreateTemp gave it stays. The readers are query_only, which refuses
	// VACUUM INTO, and the writer is left to writes: a connection of its
	// own, which takes only a read transaction on the store.
	db, err := sql.Open("sqlite", "file:"+s.path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		return BackupInfo{}, err
	}
	_, err = db.ExecContext(ctx, "VACUUM INTO ?", tmp)
	db.Close()
	if err != nil {
		return BackupInfo{}, fmt.Errorf("copy: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return BackupInfo{}, err
	}
	info, err := checkBackup(ctx, tmp)
	if err != nil {
		return BackupInfo{}, err
	}
	if replace {
		err = os.Rename(tmp, path)
	} else {
		err = renameNoReplace(tmp, path) // fails if path appeared meanwhile
	}
	if err != nil {
		return BackupInfo{}, err
	}
	done = true
	if err := syncDir(dir); err != nil {
		return BackupInfo{}, err
	}
	info.Path = path
	return info, nil
}

// notStoreFile refuses the store's own files as a backup target, however
// named: through a symbolic link to the file or to its directory.
func (s *Store) notStoreFile(path string) error {
	db, err := filepath.Abs(s.path)
	if err != nil {
		return err
	}
	own := []string{db, db + "-wal", db + "-shm", db + "-journal"}
	target, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(target)); err == nil {
		target = filepath.Join(dir, filepath.Base(target))
	}
	fi, statErr := os.Stat(target)
	for _, p := range own {
		if target == p {
			return fmt.Errorf("%s is the store itself", path)
		}
		if statErr != nil {
			continue
		}
		if ofi, err := os.Stat(p); err == nil && os.SameFile(fi, ofi) {
			return fmt.Errorf("%s is the store itself", path)
		}
	}
	return nil
}

// renameNoReplace gives tmp the name path unless path exists
// (renameat2 RENAME_NOREPLACE, atomic); where the file system cannot do
// that, a hard link does the same.
func renameNoReplace(tmp, path string) error {
	err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		if err = os.Link(tmp, path); err == nil {
			os.Remove(tmp)
		}
	}
	if errors.Is(err, fs.ErrExist) {
		return ErrBackupExists
	}
	return err
}

// staleTempAge is when a leftover temporary copy (the backup was killed)
// may go: no backup of a store this size takes that long.
const staleTempAge = time.Hour

// removeStaleTemps deletes the temporary copies killed backups to name left
// in dir: they hold password hashes like the store.
func removeStaleTemps(dir, name string) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	prefix := "." + name + ".tmp-"
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), prefix) || !e.Type().IsRegular() {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTempAge {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// checkBackup opens the copy read-only, checks it and counts what it holds.
func checkBackup(ctx context.Context, path string) (BackupInfo, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		return BackupInfo{}, err
	}
	defer db.Close()
	var check string
	if err := db.QueryRowContext(ctx, "PRAGMA quick_check").Scan(&check); err != nil {
		return BackupInfo{}, fmt.Errorf("check the copy: %w", err)
	}
	if check != "ok" {
		return BackupInfo{}, fmt.Errorf("check the copy: %s", check)
	}
	var info BackupInfo
	err = db.QueryRowContext(ctx, `SELECT
		(SELECT count(*) FROM organisations), (SELECT count(*) FROM domains),
		(SELECT count(*) FROM users), (SELECT count(*) FROM aliases),
		(SELECT count(*) FROM app_passwords), (SELECT count(*) FROM vacations),
		(SELECT count(*) FROM login_audit)`).Scan(&info.Orgs, &info.Domains, &info.Users, &info.Aliases,
		&info.AppPasswords, &info.Vacations, &info.Logins)
	if err != nil {
		return BackupInfo{}, fmt.Errorf("check the copy: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return BackupInfo{}, err
	}
	info.Bytes = fi.Size()
	return info, nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// syncDir makes a new name in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
