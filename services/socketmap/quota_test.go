package socketmap

import (
	"bufio"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// fakeSmmapd answers like Cyrus smmapd (cyrus-lab-facts.md §7) with a reply
// the test can change, and counts requests.
type fakeSmmapd struct {
	reply atomic.Value // string
	asked atomic.Int64
}

func startFakeSmmapd(t *testing.T) (*fakeSmmapd, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "smmapd")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSmmapd{}
	f.reply.Store("OK")
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					req, err := readNetstring(r, MaxRequest)
					if err != nil {
						return
					}
					f.asked.Add(1)
					reply := f.reply.Load().(string)
					if reply == "OK" {
						reply = "OK " + string(req[len("cyrus "):])
					}
					c.Write(appendNetstring(nil, reply))
				}
			})
		}
	})
	return f, sock
}

func TestQuotaCheck(t *testing.T) {
	st, c := testStore(t)
	fake, smmapd := startFakeSmmapd(t)
	_, sock := start(t, st, c, func(c *Config) { c.QuotaCheck = "unix:" + smmapd })
	conn := dial(t, sock)
	r := bufio.NewReader(conn)
	if got := ask(t, conn, r, "mailbox Alice+x@example.com"); got != "OK Alice+x@example.com" {
		t.Errorf("under quota: %q", got)
	}
	fake.reply.Store("TEMP Over quota")
	// Same key, no store change: the quota answer must not come from the cache.
	if got := ask(t, conn, r, "mailbox Alice+x@example.com"); got != "TEMP Over quota" {
		t.Errorf("over quota: %q", got)
	}
	// Only users are asked about; aliases and catch-alls expand first.
	before := fake.asked.Load()
	ask(t, conn, r, "mailbox sales@example.com")
	ask(t, conn, r, "mailbox nobody@example.com")
	if n := fake.asked.Load() - before; n != 0 {
		t.Errorf("smmapd asked %d times for an alias and an unknown user", n)
	}
	// Cyrus's other answers do not override the store's verdict.
	fake.reply.Store("NOTFOUND Mailbox does not exist")
	if got := ask(t, conn, r, "mailbox alice@example.com"); got != "OK alice@example.com" {
		t.Errorf("smmapd NOTFOUND for a store user: %q", got)
	}
}

func TestQuotaCheckDown(t *testing.T) {
	st, c := testStore(t)
	gone := filepath.Join(t.TempDir(), "no-smmapd")
	_, sock := start(t, st, c, func(c *Config) { c.QuotaCheck = "unix:" + gone })
	conn := dial(t, sock)
	if got := ask(t, conn, bufio.NewReader(conn), "mailbox alice@example.com"); got != "TEMP quota check unavailable" {
		t.Errorf("smmapd down: %q, want TEMP", got)
	}
}
