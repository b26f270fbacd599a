package store

import (
	"bufio"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTest(t testing.TB) (*Store, Canon) {
	t.Helper()
	st, err := Open(t.Context(), filepath.Join(t.TempDir(), "store.db"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, mustCanon(t, "example.com", "+")
}

func addr(t testing.TB, c Canon, s string) Address {
	t.Helper()
	a, err := c.Address(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDirectory(t *testing.T) {
	ctx := t.Context()
	st, c := openTest(t)
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddOrg(ctx, "acme"); !errors.Is(err, ErrExists) {
		t.Errorf("AddOrg(acme) after Acme: %v, want ErrExists", err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddDomain with unknown org: %v, want ErrNotFound", err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Acme"); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate domain: %v, want ErrExists", err)
	}
	alice := addr(t, c, "alice@example.com")
	u, err := st.AddUser(ctx, NewUser{Address: alice, PasswordHash: "$argon2id$x", DisplayName: "Alice"})
	if err != nil {
		t.Fatal(err)
	}
	if u.Org != "Acme" || !u.HasPassword || !u.Allows("imap") || !u.Allows("HTTP") {
		t.Errorf("user = %+v", u)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: alice}); !errors.Is(err, ErrExists) {
		t.Errorf("duplicate user: %v, want ErrExists", err)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: addr(t, c, "bob@other.org")}); !errors.Is(err, ErrNotHosted) {
		t.Errorf("user in unhosted domain: %v, want ErrNotHosted", err)
	}
	svc, _ := ParseServices("imap, Sieve")
	if err := st.SetServices(ctx, alice, svc); err != nil {
		t.Fatal(err)
	}
	if err := st.SetDisabled(ctx, alice, true); err != nil {
		t.Fatal(err)
	}
	if u, _ = st.User(ctx, alice); !u.Disabled || u.Allows("pop") || !u.Allows("sieve") {
		t.Errorf("after disable and services: %+v", u)
	}

	sales := addr(t, c, "sales@example.com")
	if _, err := st.AddAlias(ctx, alice, []Address{sales}); !errors.Is(err, ErrExists) {
		t.Errorf("alias over a user: %v, want ErrExists", err)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: addr(t, c, "bob@example.com")}); err != nil {
		t.Fatal(err)
	}
	al, err := st.AddAlias(ctx, sales, []Address{alice, addr(t, c, "bob"), alice})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: sales}); !errors.Is(err, ErrExists) {
		t.Errorf("user over an alias: %v, want ErrExists", err)
	}
	if want := []string{"alice@example.com", "bob@example.com"}; !slices.Equal(al.Targets, want) {
		t.Errorf("alias targets = %q, want %q", al.Targets, want)
	}
	if err := st.DeleteDomain(ctx, "example.com"); !errors.Is(err, ErrInUse) {
		t.Errorf("DeleteDomain with users: %v, want ErrInUse", err)
	}
	if err := st.DeleteOrg(ctx, "Acme"); !errors.Is(err, ErrInUse) {
		t.Errorf("DeleteOrg with domains: %v, want ErrInUse", err)
	}
	dangling, err := st.DeleteUser(ctx, alice)
	if err != nil || !slices.Equal(dangling, []string{"sales@example.com"}) {
		t.Errorf("DeleteUser = %q, %v; want the alias that still names alice", dangling, err)
	}
	if _, err := st.User(ctx, alice); !errors.Is(err, ErrNotFound) {
		t.Errorf("User after delete: %v", err)
	}
	if gone, err := st.DeleteAlias(ctx, sales, []Address{alice}); gone || err != nil {
		t.Errorf("DeleteAlias one target = %v, %v", gone, err)
	}
	if gone, err := st.DeleteAlias(ctx, sales, []Address{addr(t, c, "bob")}); !gone || err != nil {
		t.Errorf("DeleteAlias last target = %v, %v; want the alias gone", gone, err)
	}
	if _, err := st.DeleteUser(ctx, addr(t, c, "bob")); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteDomain(ctx, "example.com"); err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteOrg(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if orgs, err := st.Orgs(ctx); err != nil || len(orgs) != 0 {
		t.Errorf("Orgs at the end = %v, %v", orgs, err)
	}
}

func TestGenerationInProcess(t *testing.T) {
	ctx := t.Context()
	st, _ := openTest(t)
	g1, err := st.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := st.Generation(ctx); g != g1 {
		t.Errorf("generation moved with no change: %d -> %d", g1, g)
	}
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	g2, _ := st.Generation(ctx)
	if g2 == g1 {
		t.Errorf("generation did not move after AddOrg")
	}
	// The audit is not cached data: recording a login must not flush caches.
	if err := st.RecordLogin(ctx, LoginEvent{Login: "alice@example.com", Service: "imap", Result: ResultOK}); err != nil {
		t.Fatal(err)
	}
	if g3, _ := st.Generation(ctx); g3 != g2 {
		t.Errorf("generation moved after RecordLogin: %d -> %d", g2, g3)
	}
}

// TestGenerationOtherProcess is the contract serve relies on: an admin
// command in another process edits the store, and a long-running reader sees
// it on its very next read, with no restart and no polling delay.
func TestGenerationOtherProcess(t *testing.T) {
	if os.Getenv("STORE_TEST_CHILD") != "" {
		t.Skip("child")
	}
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := mustCanon(t, "example.com", "+")
	g1, _ := st.Generation(ctx)
	if _, err := st.User(ctx, addr(t, c, "alice")); !errors.Is(err, ErrNotFound) {
		t.Fatalf("alice before: %v", err)
	}
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildEdit$")
	cmd.Env = append(os.Environ(), "STORE_TEST_CHILD="+path)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	g2, err := st.Generation(ctx)
	if err != nil || g2 == g1 {
		t.Errorf("generation after the other process's edit = %d, %v; was %d", g2, err, g1)
	}
	if u, err := st.User(ctx, addr(t, c, "alice")); err != nil || u.Address != "alice@example.com" {
		t.Errorf("alice after the other process's edit: %+v, %v", u, err)
	}
}

// TestGenerationEveryCommit: another process commits 200 times and tells
// us after each commit returned; each time the very next Generation must
// have moved and the data must be there. This is what a cache keyed on
// Generation relies on, with no polling window.
func TestGenerationEveryCommit(t *testing.T) {
	if os.Getenv("STORE_TEST_CHILD") != "" {
		t.Skip("child")
	}
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestChildCommits$")
	cmd.Env = append(os.Environ(), "STORE_TEST_CHILD="+path)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		// On failure the child waits for a line that never comes.
		stdin.Close()
		cmd.Process.Kill()
		cmd.Wait()
	}()
	r := bufio.NewScanner(stdout)
	prev, _ := st.Generation(ctx)
	seen := 0
	for r.Scan() {
		line := r.Text()
		if !strings.HasPrefix(line, "committed ") {
			continue
		}
		k, _ := strconv.Atoi(strings.TrimPrefix(line, "committed "))
		g, err := st.Generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if g == prev {
			t.Fatalf("commit %d: Generation still %d", k, g)
		}
		if orgs, _ := st.Orgs(ctx); len(orgs) != k {
			t.Fatalf("commit %d: %d organisations visible", k, len(orgs))
		}
		prev = g
		seen++
		// Let the child go on only now, so each commit is checked alone.
		fmt.Fprintln(stdin)
	}
	if seen != 200 {
		t.Errorf("checked %d commits, want 200", seen)
	}
	// With no commits, Generation must not ask SQLite: that is what makes
	// it cheap enough for every request.
	before := st.slow
	for range 100 {
		st.Generation(ctx)
	}
	if st.slow != before {
		t.Errorf("%d of 100 unchanged Generation calls queried SQLite", st.slow-before)
	}
}

// TestChildCommits runs only as TestGenerationEveryCommit's child.
func TestChildCommits(t *testing.T) {
	path := os.Getenv("STORE_TEST_CHILD")
	if path == "" {
		t.Skip("only run as a child process")
	}
	st, err := Open(t.Context(), path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	in := bufio.NewReader(os.Stdin)
	for i := 1; i <= 200; i++ {
		if _, err := st.AddOrg(t.Context(), fmt.Sprintf("org-%03d", i)); err != nil {
			t.Fatal(err)
		}
		// Checkpoints reset the WAL, and the next commit starts writing it
		// from the beginning: the header must still change.
		if i%20 == 0 {
			mode := map[bool]string{true: "TRUNCATE", false: "RESTART"}[i%40 == 0]
			if _, err := st.w.ExecContext(t.Context(), "PRAGMA wal_checkpoint("+mode+")"); err != nil {
				t.Fatal(err)
			}
		}
		fmt.Printf("committed %d\n", i)
		if _, err := in.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChildEdit runs only as TestGenerationOtherProcess's child.
func TestChildEdit(t *testing.T) {
	path := os.Getenv("STORE_TEST_CHILD")
	if path == "" {
		t.Skip("only run as a child process")
	}
	ctx := t.Context()
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	c := mustCanon(t, "example.com", "+")
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddUser(ctx, NewUser{Address: addr(t, c, "alice")}); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentWriters: two handles on one file (as serve and an admin
// command are) writing at once must queue on the lock, not fail.
func TestConcurrentWriters(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	var stores []*Store
	for range 2 {
		st, err := Open(ctx, path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		stores = append(stores, st)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i, st := range stores {
		wg.Go(func() {
			for j := range 25 {
				if _, err := st.AddOrg(ctx, fmt.Sprintf("org-%d-%d", i, j)); err != nil {
					errs <- err
				}
				if err := st.RecordLogin(ctx, LoginEvent{Login: "x", Service: "imap", Result: ResultFail}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if orgs, _ := stores[0].Orgs(ctx); len(orgs) != 50 {
		t.Errorf("%d organisations, want 50", len(orgs))
	}
}

func TestSchemaNewerRefused(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec("PRAGMA user_version = 99"); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := Open(ctx, path, Options{}); !errors.Is(err, ErrSchema) {
		t.Errorf("Open of a newer schema: %v, want ErrSchema", err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	st.Close()
	st, err = Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if orgs, err := st.Orgs(ctx); err != nil || len(orgs) != 1 {
		t.Errorf("after reopen: %v, %v", orgs, err)
	}
	if v, _ := st.SchemaVersion(ctx); v != 4 {
		t.Errorf("schema version %d", v)
	}
}

func TestPruneAudit(t *testing.T) {
	ctx := t.Context()
	st, _ := openTest(t)
	old := time.Now().Add(-48 * time.Hour)
	for i := range 1500 {
		at := time.Now()
		if i < 1200 {
			at = old
		}
		if err := st.RecordLogin(ctx, LoginEvent{At: at, Login: "a", Service: "imap", Result: ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := st.PruneAudit(ctx, time.Now().Add(-24*time.Hour), 100)
	if err != nil || n != 1400 {
		t.Errorf("PruneAudit = %d, %v; want 1400", n, err)
	}
	if es, _ := st.Logins(ctx, "a", 1000); len(es) != 100 {
		t.Errorf("%d entries left, want 100", len(es))
	}
}

func TestWriteFailsWhileLocked(t *testing.T) {
	// Another process holding the write lock past busy_timeout makes a
	// write fail with an error (which services map to TEMP/451/NO), not hang.
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{BusyTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db, err := sql.Open("sqlite", "file:"+path+"?_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	start := time.Now()
	if _, err := st.AddOrg(ctx, "Acme"); err == nil || !strings.Contains(err.Error(), "SQLITE_BUSY") {
		t.Errorf("AddOrg while another connection holds the write lock: %v, want SQLITE_BUSY", err)
	}
	// It waited for the lock (busy_timeout) before giving up, and no longer.
	if d := time.Since(start); d < 90*time.Millisecond || d > 5*time.Second {
		t.Errorf("AddOrg gave up after %v, want about the 100ms busy timeout", d)
	}
	// Reads still work while a writer holds the lock (WAL).
	if err := st.Ping(ctx); err != nil {
		t.Errorf("Ping while locked: %v", err)
	}
}

func TestStoreFile(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	real := filepath.Join(dir, "real.db")
	link := filepath.Join(dir, "link.db")
	if err := os.WriteFile(link+"-shm", []byte("stale"), 0o644); err != nil { // a leftover next to the link
		t.Fatal(err)
	}
	fresh, err := Open(ctx, real, Options{})
	if err != nil {
		t.Fatal(err)
	}
	fresh.Close()
	if fi, err := os.Stat(real); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("new store file mode = %v, %v; want 0640 (it holds password hashes)", fi.Mode().Perm(), err)
	}
	os.Symlink(real, link)
	st, err := Open(ctx, link, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	g1, _ := st.Generation(ctx)
	other, err := Open(ctx, real, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	if g2, _ := st.Generation(ctx); g2 == g1 {
		t.Errorf("through a symlink: Generation did not see the other handle's commit")
	}
	if err := st.CheckFile(); err != nil {
		t.Errorf("CheckFile on the file as opened: %v", err)
	}
	os.Rename(real, real+".old")
	os.WriteFile(real, nil, 0o640)
	if err := st.CheckFile(); err == nil {
		t.Errorf("CheckFile after the file was replaced: no error")
	}
}

func BenchmarkGenerationUnchanged(b *testing.B) {
	st, _ := openTest(b)
	ctx := b.Context()
	for b.Loop() {
		if _, err := st.Generation(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGenerationQuery is the same check without the header shortcut:
// what every request would pay if it asked SQLite (PRAGMA data_version).
func BenchmarkGenerationQuery(b *testing.B) {
	st, _ := openTest(b)
	ctx := b.Context()
	for b.Loop() {
		st.lastHdr = [walHeaderLen]byte{} // forces the query path
		if _, err := st.Generation(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUserLookup(b *testing.B) {
	st, c := openTest(b)
	ctx := b.Context()
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		b.Fatal(err)
	}
	if _, err := st.AddDomain(ctx, "example.com", "Acme"); err != nil {
		b.Fatal(err)
	}
	a := addr(b, c, "alice")
	if _, err := st.AddUser(ctx, NewUser{Address: a}); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := st.User(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
}
