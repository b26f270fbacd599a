package store

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// shmHelperEnv makes the test binary open a store in a process of its own
// (TestSHMLocksKept).
const shmHelperEnv = "SIDECAR_STORE_SHM_HELPER"

// TestSHMLocksKept: while a store is open in this process, another process
// opening the same store must see this one (SQLite's DMS lock on -shm) and
// leave -shm alone. The change detection's own descriptor on -shm once
// dropped that lock when it was closed (POSIX: closing any descriptor of a
// file drops the process's locks on it), and the other process truncated
// -shm under this one's connections: SQLITE_IOERR_IN_PAGE.
func TestSHMLocksKept(t *testing.T) {
	if path := os.Getenv(shmHelperEnv); path != "" {
		// Before opening: does another process hold a lock on the DMS
		// byte of -shm (os_unix.c: UNIX_SHM_DMS, byte 128)? If none does,
		// SQLite here would take this process for the first and truncate.
		f, err := os.Open(path + "-shm")
		if err != nil {
			fmt.Println("helper:", err)
			os.Exit(1)
		}
		lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 128, Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &lk); err != nil {
			fmt.Println("helper: F_GETLK:", err)
			os.Exit(1)
		}
		if lk.Type == unix.F_UNLCK {
			fmt.Println("helper: no process holds SQLite's DMS lock on -shm: it would be truncated under the store's connections")
			os.Exit(2)
		}
		st, err := Open(context.Background(), path, Options{})
		if err != nil {
			fmt.Println("helper:", err)
			os.Exit(1)
		}
		if _, err := st.AddOrg(context.Background(), "Helper"+os.Getenv(shmHelperEnv+"_N")); err != nil {
			fmt.Println("helper:", err)
			os.Exit(1)
		}
		st.Close()
		os.Exit(0)
	}
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "store.db")
	st, err := Open(ctx, path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.AddOrg(ctx, "Acme"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSHMLocksKept$", "-test.count=1")
		cmd.Env = append(os.Environ(), shmHelperEnv+"="+path, fmt.Sprint(shmHelperEnv, "_N=", i))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("helper process %d: %v\n%s", i, err, out)
		}
		// This process's connections still work, and see the other's write.
		if _, err := st.AddOrg(ctx, fmt.Sprint("Org", i)); err != nil {
			t.Fatalf("write after helper %d: %v", i, err)
		}
		orgs, err := st.Orgs(ctx)
		if err != nil || len(orgs) != 1+2*(i+1) {
			t.Fatalf("after helper %d: %d organisations, %v", i, len(orgs), err)
		}
		if _, err := st.Generation(ctx); err != nil {
			t.Fatalf("generation after helper %d: %v", i, err)
		}
	}
}
