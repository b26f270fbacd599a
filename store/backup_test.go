package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestBackup: the copy holds what the store held, opens as a store, is
// private, refuses to overwrite unless asked, never targets the store
// itself, and is consistent while another writer goes on.
func TestBackup(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, filepath.Join(dir, "store.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Acme"); err != nil {
		t.Fatal(err)
	}
	canon, err := NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"alice", "bob", "carol"} {
		a, err := canon.Exact(u + "@example.com")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.AddUser(ctx, NewUser{Address: a, PasswordHash: Secret("{PLAIN}" + u)}); err != nil {
			t.Fatal(err)
		}
	}

	// A writer goes on during the backups: each is one snapshot.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := st.RecordLogins(ctx, []LoginEvent{{Login: "alice@example.com", Service: "imap", Result: ResultOK}}); err != nil {
				t.Error(err)
				return
			}
		}
	})
	path := filepath.Join(dir, "backup.db")
	info, err := st.Backup(ctx, path, false)
	if err != nil {
		t.Fatal(err)
	}
	if info.Orgs != 1 || info.Domains != 1 || info.Users != 3 || info.Path != path || info.Bytes <= 0 {
		t.Errorf("info %+v, want 1 org, 1 domain, 3 users, a size", info)
	}
	if _, err := st.Backup(ctx, path, false); !errors.Is(err, ErrBackupExists) {
		t.Errorf("second backup to the same file: %v, want ErrBackupExists", err)
	}
	info2, err := st.Backup(ctx, path, true)
	if err != nil {
		t.Fatalf("backup with replace: %v", err)
	}
	close(stop)
	wg.Wait()
	if info2.Logins < info.Logins {
		t.Errorf("the replacing backup has %d audit rows, fewer than the first's %d", info2.Logins, info.Logins)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o600 {
		t.Errorf("backup mode %v, want 0600 (it holds password hashes)", m)
	}
	for _, suffix := range []string{"-wal", "-shm"} {
		if _, err := os.Stat(path + suffix); err == nil {
			t.Errorf("backup left %s beside it", path+suffix)
		}
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}

	// The copy is a store: it opens and answers.
	cp, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	a, _ := canon.Exact("bob@example.com")
	u, err := cp.User(ctx, a)
	if err != nil || u.Disabled || string(u.PasswordHash) != "{PLAIN}bob" {
		t.Errorf("bob in the copy: %+v, %v", u, err)
	}

	for _, own := range []string{filepath.Join(dir, "store.db"), filepath.Join(dir, "store.db-wal"), filepath.Join(dir, "./store.db")} {
		if _, err := st.Backup(ctx, own, true); err == nil || !strings.Contains(err.Error(), "is the store itself") {
			t.Errorf("backup onto %s: %v, want a refusal", own, err)
		}
	}
	link := filepath.Join(dir, "link.db")
	if err := os.Symlink(filepath.Join(dir, "store.db"), link); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Backup(ctx, link, true); err == nil {
		t.Errorf("backup onto a symlink to the store: no error")
	}
	// Through a symbolic link to the store's directory, the -wal too.
	if _, err := os.Stat(filepath.Join(dir, "store.db-wal")); err != nil {
		t.Fatalf("the store has no -wal to guard: %v", err)
	}
	linkDir := filepath.Join(t.TempDir(), "state")
	if err := os.Symlink(dir, linkDir); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"store.db", "store.db-wal", "store.db-shm"} {
		if _, err := st.Backup(ctx, filepath.Join(linkDir, name), true); err == nil || !strings.Contains(err.Error(), "is the store itself") {
			t.Errorf("backup onto %s through a linked directory: %v, want a refusal", name, err)
		}
	}
	if err := st.Ping(ctx); err != nil {
		t.Errorf("the store after the refusals: %v", err)
	}
	if _, err := st.Backup(ctx, filepath.Join(dir, "50%.db"), false); err == nil {
		t.Errorf("a '%%' in the name: no error")
	}
	if _, err := Open(ctx, filepath.Join(dir, "%41.db"), Options{}); err == nil {
		t.Errorf("a store path with '%%': no error")
	}
	// A killed backup's temporary copy goes on the next run, once old.
	stale := filepath.Join(dir, ".daily.db.tmp-123")
	fresh := filepath.Join(dir, ".daily.db.tmp-456")
	other := filepath.Join(dir, ".dai*.db.tmp-789") // another name's, matched by a glob of "dai*"
	for _, p := range []string{stale, fresh, other} {
		if err := os.WriteFile(p, []byte("hashes"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	os.Chtimes(other, old, old)
	if _, err := st.Backup(ctx, filepath.Join(dir, "dai*.db"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err != nil {
		t.Errorf("a backup named dai*.db removed daily.db's temporary copy: %v", err)
	}
	if _, err := st.Backup(ctx, filepath.Join(dir, "daily.db"), false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); err == nil {
		t.Errorf("a stale temporary copy stayed")
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a recent temporary copy (another backup's, maybe) was removed: %v", err)
	}
	if _, err := st.Backup(ctx, filepath.Join(dir, "no", "such", "dir.db"), false); err == nil {
		t.Errorf("backup into a missing directory: no error")
	}
	ctx2, cancel := context.WithTimeout(ctx, time.Nanosecond)
	defer cancel()
	<-ctx2.Done()
	if _, err := st.Backup(ctx2, filepath.Join(dir, "late.db"), false); err == nil {
		t.Errorf("backup with an expired context: no error")
	}
	if _, err := os.Stat(filepath.Join(dir, "late.db")); err == nil {
		t.Errorf("a failed backup left its file")
	}
}
