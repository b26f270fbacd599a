//go:build integration

package socketmap

// Real peers against the responder: postfix's postmap, Exim's ${readsocket}
// and Cyrus smmapd. The MTA configuration each test uses is cut out of
// docs/socketmap.md (docSnippet), so the documentation and the tests cannot
// drift apart.

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
	"cyrus-sidecar/store"
)

// docSockPath is the socket path the snippets in docs/socketmap.md use; the
// tests put their own in its place.
const docSockPath = "/run/cyrus-sidecar/socketmap.sock"

// labStore is a real store with the directory every test here uses:
//
//	example.com (Acme): alice, bob (disabled), full, new; sales -> alice, friend@outside.org
//	other.org (Other):  carol; catch-all -> carol
func labStore(t testing.TB) (*store.Store, store.Canon) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, filepath.Join(t.TempDir(), "s.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() }) // a test may have closed it already
	c, err := store.NewCanon("example.com", "+")
	if err != nil {
		t.Fatal(err)
	}
	a := func(s string) store.Address {
		x, err := c.Exact(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []struct{ org, domain string }{{"Acme", "example.com"}, {"Other", "other.org"}} {
		_, err := st.AddOrg(ctx, d.org)
		must(err)
		_, err = st.AddDomain(ctx, d.domain, d.org)
		must(err)
	}
	for _, u := range []string{"alice@example.com", "bob@example.com", "full@example.com", "new@example.com", "carol@other.org"} {
		_, err := st.AddUser(ctx, store.NewUser{Address: a(u)})
		must(err)
	}
	must(st.SetDisabled(ctx, a("bob@example.com"), true))
	_, err = st.AddAlias(ctx, a("sales@example.com"), []store.Address{a("alice@example.com"), a("friend@outside.org")})
	must(err)
	must(st.SetCatchAll(ctx, "other.org", a("carol@other.org")))
	return st, c
}

// sockDir returns a new directory for sockets that every user may enter:
// Exim may run lookups as its own user, and t.TempDir is private. Short, for
// sun_path.
func sockDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "smit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// labServe runs the responder on a UNIX socket in its own directory until
// stop is called or the test ends; stop removes the socket.
func labServe(t testing.TB, st Store, c store.Canon, mod func(*Config)) (sock string, stop func()) {
	t.Helper()
	sock = filepath.Join(sockDir(t), "sm.sock")
	cfg := DefaultConfig("")
	cfg.Listen = []string{"unix:" + sock}
	if mod != nil {
		mod(&cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s := New(cfg, st, c, log)
	if err := s.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx, func() time.Duration { return 2 * time.Second }) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return sock, stop
}

// socketmapClient asks one socketmap server over one connection.
type socketmapClient struct {
	conn net.Conn
	r    *bufio.Reader
}

func dialSocketmap(t testing.TB, sock string) *socketmapClient {
	t.Helper()
	conn, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &socketmapClient{conn: conn, r: bufio.NewReader(conn)}
}

// ask sends "<map> <key>" and returns the reply.
func (c *socketmapClient) ask(t testing.TB, mapName, key string) string {
	t.Helper()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.conn.Write(appendNetstring(nil, mapName, " ", key)); err != nil {
		t.Fatalf("socketmap %s %q: %v", mapName, key, err)
	}
	reply, err := readNetstring(c.r, MaxReply)
	if err != nil {
		t.Fatalf("socketmap %s %q: %v", mapName, key, err)
	}
	return string(reply)
}

// verdict is a reply's status word: OK, NOTFOUND, TEMP, TIMEOUT or PERM.
func verdict(reply string) string {
	status, _, _ := strings.Cut(reply, " ")
	return status
}

// postfixTables reads the main.cf snippet: parameter -> socketmap table,
// with the socket path replaced by sock.
func postfixTables(t testing.TB, sock string) map[string]string {
	t.Helper()
	tables := map[string]string{}
	for line := range strings.Lines(docSnippet(t, "postfix-main-cf")) {
		name, value, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		value = strings.TrimSpace(value)
		if !strings.HasPrefix(value, "socketmap:unix:"+docSockPath+":") {
			t.Fatalf("postfix snippet: %q does not use %s", line, docSockPath)
		}
		tables[strings.TrimSpace(name)] = strings.Replace(value, docSockPath, sock, 1)
	}
	return tables
}

// countingProxy forwards UNIX connections to target and counts them, so a
// test can tell how many connections a client opened.
func countingProxy(t testing.TB, target string) (sock string, conns *atomic.Int32) {
	t.Helper()
	sock = filepath.Join(sockDir(t), "proxy.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conns = new(atomic.Int32)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return // closed at cleanup
			}
			conns.Add(1)
			out, err := net.Dial("unix", target)
			if err != nil {
				in.Close()
				continue
			}
			mu.Lock()
			open = append(open, in, out)
			mu.Unlock()
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src) // ends with either side; errors only mean closed
				dst.(*net.UnixConn).CloseWrite()
			}
			wg.Go(func() { pipe(out, in) })
			wg.Go(func() { pipe(in, out) })
		}
	})
	return sock, conns
}

// TestPostmap asks through the main.cf snippet's tables what Postfix's
// trivial-rewrite, smtpd and cleanup would ask, with the real postmap.
// postmap prints the value of an OK with rc 0, and nothing with rc 1 for
// NOTFOUND (cyrus-lab-facts.md §7).
func TestPostmap(t *testing.T) {
	t.Parallel()
	p := lab.NewPostmap(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, nil)
	tables := postfixTables(t, sock)
	type postmapCase struct{ param, key, want string } // want "": not found
	tests := []postmapCase{
		{"virtual_mailbox_domains", "example.com", "Acme"},
		{"virtual_mailbox_domains", "OTHER.org", "Other"},
		{"virtual_mailbox_domains", "outside.org", ""},
		{"virtual_mailbox_maps", "alice@example.com", "alice@example.com"},
		{"virtual_mailbox_maps", "Alice+Lists@Example.COM", "Alice+Lists@Example.COM"},
		{"virtual_mailbox_maps", "sales@example.com", "sales@example.com"},
		{"virtual_mailbox_maps", "anyone@other.org", "anyone@other.org"},
		{"virtual_mailbox_maps", "nobody@example.com", ""},
		{"virtual_mailbox_maps", "bob@example.com", ""},
		{"virtual_mailbox_maps", "x@outside.org", ""},
		{"virtual_alias_maps", "sales@example.com", "alice@example.com,friend@outside.org"},
		{"virtual_alias_maps", "sales+q3@example.com", "alice@example.com,friend@outside.org"},
		{"virtual_alias_maps", "anyone@other.org", "carol@other.org"},
		{"virtual_alias_maps", "alice@example.com", ""},
		{"virtual_alias_maps", "nobody@example.com", ""},
		{"smtpd_sender_login_maps", "alice@example.com", "alice@example.com,alice"},
		{"smtpd_sender_login_maps", "sales@example.com", "alice@example.com,alice"},
		{"smtpd_sender_login_maps", "anyone@other.org", ""},
		{"smtpd_sender_login_maps", "bob@example.com", ""},
	}
	for param := range tables {
		if !slices.ContainsFunc(tests, func(tt postmapCase) bool { return tt.param == param }) {
			t.Errorf("postfix snippet sets %s, which no test asks", param)
		}
	}
	for _, tt := range tests {
		table, ok := tables[tt.param]
		if !ok {
			t.Fatalf("postfix snippet does not set %s", tt.param)
		}
		stdout, stderr, rc := p.Query(t, tt.key, table)
		want, wantRC := tt.want+"\n", 0
		if tt.want == "" {
			want, wantRC = "", 1
		}
		if stdout != want || rc != wantRC || stderr != "" {
			t.Errorf("postmap -q %q %s = %q, stderr %q, rc %d; want %q, rc %d",
				tt.key, table, stdout, stderr, rc, want, wantRC)
		}
	}
}

// TestPostmapBatch: `postmap -q -` asks every key over one connection, as
// Postfix daemons do, and prints "key<TAB>value" for the keys found.
func TestPostmapBatch(t *testing.T) {
	t.Parallel()
	p := lab.NewPostmap(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, nil)
	proxy, conns := countingProxy(t, sock)
	table := postfixTables(t, proxy)["virtual_mailbox_maps"]
	keys := []string{"alice@example.com", "nobody@example.com", "sales@example.com", "bob@example.com",
		"Alice+x@Example.COM", "anyone@other.org", "x@outside.org", "carol"}
	stdout, stderr, rc := p.QueryBatch(t, keys, table)
	want := "alice@example.com\talice@example.com\n" +
		"sales@example.com\tsales@example.com\n" +
		"Alice+x@Example.COM\tAlice+x@Example.COM\n" +
		"anyone@other.org\tanyone@other.org\n"
	if stdout != want || rc != 0 || stderr != "" {
		t.Errorf("postmap -q - %s = %q, stderr %q, rc %d; want %q, rc 0", table, stdout, stderr, rc, want)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("postmap opened %d connections for %d keys, want 1", n, len(keys))
	}
}

// TestPostmapErrors: how postmap reports our TEMP (store trouble) and PERM
// (a map name we do not have): never as a missing key.
func TestPostmapErrors(t *testing.T) {
	t.Parallel()
	p := lab.NewPostmap(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, nil)
	table := strings.TrimSuffix(postfixTables(t, sock)["virtual_mailbox_maps"], ":mailbox") + ":nosuchmap"
	stdout, stderr, rc := p.Query(t, "alice@example.com", table)
	if want := "socketmap server permanent error: unknown map"; stdout != "" || rc != 1 || !strings.Contains(stderr, want) {
		t.Errorf("unknown map: %q, stderr %q, rc %d; want no output, %q, rc 1", stdout, stderr, rc, want)
	}

	st.Close() // every lookup now fails in the store
	table = postfixTables(t, sock)["virtual_mailbox_maps"]
	stdout, stderr, rc = p.Query(t, "alice@example.com", table)
	if want := "socketmap server temporary error: store unavailable"; stdout != "" || rc != 1 || !strings.Contains(stderr, want) {
		t.Errorf("broken store: %q, stderr %q, rc %d; want no output, %q, rc 1", stdout, stderr, rc, want)
	}
}

// TestSendmailSnippet: sendmail cannot be installed beside Exim, so its
// snippet is only checked for what would drift: the K line declares a socket
// map named after our mailbox map, on the documented socket.
func TestSendmailSnippet(t *testing.T) {
	t.Parallel()
	mc := docSnippet(t, "sendmail-mc")
	k := "K" + DefaultConfig("").Maps.Mailbox + " socket -T<TMPF> -a<OK> local:" + docSockPath + "\n"
	if !strings.Contains(mc, k) {
		t.Errorf("sendmail snippet has no line %q:\n%s", k, mc)
	}
	if !strings.Contains(mc, "$(mailbox $1 $: $)") {
		t.Errorf("sendmail snippet does not look the key up in the mailbox map:\n%s", mc)
	}
}

// eximConf is an Exim configuration made of the docs' snippets; the macro
// SIDECAR_SOCKETMAP (set with -D) names the socket.
func eximConf(t testing.TB) string {
	t.Helper()
	main := docSnippet(t, "exim-main")
	if !strings.Contains(main, "SIDECAR_SOCKETMAP = "+docSockPath) {
		t.Fatalf("exim-main snippet does not define SIDECAR_SOCKETMAP as %s:\n%s", docSockPath, main)
	}
	return "primary_hostname = exim.lab.localhost\nqualify_domain = example.com\ntls_advertise_hosts =\n\n" +
		main + "\nbegin acl\n\n" + docSnippet(t, "exim-acl")
}

// rcptReplies runs one -bhc session with a RCPT for each address and
// returns the RCPT replies, in order.
func rcptReplies(t testing.TB, e *lab.Exim, rcpts ...string) []string {
	t.Helper()
	var script strings.Builder
	script.WriteString("EHLO client.example\r\nMAIL FROM:<s@outside.org>\r\n")
	for _, r := range rcpts {
		script.WriteString("RCPT TO:<" + r + ">\r\n")
	}
	script.WriteString("QUIT\r\n")
	out := e.BHC(t, script.String())
	replies := lab.SMTPReplies(out)
	// greeting, EHLO, MAIL, the RCPTs, QUIT
	if len(replies) != 4+len(rcpts) {
		t.Fatalf("exim -bhc: %d replies %q, want %d\nexim output:\n%s", len(replies), replies, 4+len(rcpts), out)
	}
	return replies[3 : 3+len(rcpts)]
}

// TestEximACL runs the docs' ACL in a real Exim: known recipients 250,
// unknown 550, and lookup trouble 451, never 550.
func TestEximACL(t *testing.T) {
	t.Parallel()
	st, c := labStore(t)
	sock, stop := labServe(t, st, c, nil)
	e := lab.NewExim(t, lab.EximOptions{Conf: eximConf(t), Macros: map[string]string{"SIDECAR_SOCKETMAP": sock}})

	check := func(when string, rcpts []string, want []string) {
		t.Helper()
		got := rcptReplies(t, e, rcpts...)
		for i, r := range rcpts {
			if !strings.HasPrefix(got[i], want[i]) {
				t.Errorf("%s: RCPT TO:<%s> = %q, want %q...", when, r, got[i], want[i])
			}
		}
	}
	rcpts := []string{"alice@example.com", "nobody@example.com", "sales@example.com", "Alice+lists@Example.COM",
		"anyone@other.org", "bob@example.com", "x@outside.org"}
	check("store up", rcpts, []string{"250 Accepted", "550 5.1.1 <nobody@example.com>: unknown user", "250 ",
		"250 ", "250 ", "550 5.1.1", "550 5.1.1"})

	// A second store, closed: the responder answers TEMP store unavailable.
	broken, bc := labStore(t)
	brokenSock, _ := labServe(t, broken, bc, nil)
	broken.Close()
	eb := lab.NewExim(t, lab.EximOptions{Conf: eximConf(t), Macros: map[string]string{"SIDECAR_SOCKETMAP": brokenSock}})
	for i, r := range rcptReplies(t, eb, "alice@example.com", "nobody@example.com") {
		if !strings.HasPrefix(r, "451 4.3.0 ") {
			t.Errorf("store broken: RCPT %d = %q, want 451 4.3.0", i, r)
		}
	}

	// A map name the responder does not have: PERM, a configuration error,
	// must not bounce mail either.
	renamedSock, _ := labServe(t, st, c, func(cfg *Config) { cfg.Maps.Mailbox = "rcpt" })
	er := lab.NewExim(t, lab.EximOptions{Conf: eximConf(t), Macros: map[string]string{"SIDECAR_SOCKETMAP": renamedSock}})
	for i, r := range rcptReplies(t, er, "alice@example.com", "nobody@example.com") {
		if !strings.HasPrefix(r, "451 4.3.0 ") {
			t.Errorf("unknown map: RCPT %d = %q, want 451 4.3.0", i, r)
		}
	}

	stop() // the socket file goes with the listener
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket still there after stop: %v", err)
	}
	check("socket gone", rcpts[:2], []string{"451 4.3.0 ", "451 4.3.0 "})
}

// mailboxCase is one address asked of our mailbox map and of smmapd.
type mailboxCase struct{ name, key string }

// mailboxCases are the addresses TestMailboxMatchesSmmapd asks, with
// quota_check unset; the Cyrus side is built by startCyrusLike.
var mailboxCases = []mailboxCase{
	{"existing", "alice@example.com"},
	{"missing", "nobody@example.com"},
	{"alias", "sales@example.com"},
	{"catch-all", "anyone@other.org"},
	{"+detail, folder exists", "alice+tag@example.com"},
	{"+detail, folder missing", "alice+nofolder@example.com"},
	{"mixed case", "Alice@Example.COM"},
	{"mixed case, +detail, folder exists", "ALICE+tag@EXAMPLE.com"},
	{"default domain", "alice"},
	{"default domain, +detail, folder exists", "alice+tag"},
	{"other domain", "carol@other.org"},
	{"other domain, mixed case", "Carol@Other.ORG"},
	{"domain not hosted", "someone@outside.org"},
	{"empty key", ""},
	{"disabled user", "bob@example.com"},
	{"over quota, quota_check unset", "full@example.com"},
	{"mailbox in Cyrus only", "legacy@example.com"},
	{"user in the store only", "new@example.com"},
}

// quotaCases are the addresses TestOverQuotaMatchesSmmapd asks, with
// quota_check pointing at smmapd.
var quotaCases = []mailboxCase{
	{"over quota, quota_check set", "full@example.com"},
	{"over quota, mixed-case user", "Full@example.com"},
	{"over quota, default domain", "FULL"},
	{"over quota, domain not in lower case", "Full@Example.COM"},
	{"over quota, +detail, folder missing", "full+x@example.com"},
	{"under quota, quota_check set", "alice@example.com"},
	{"missing, quota_check set", "nobody@example.com"},
	{"disabled user, quota_check set", "bob@example.com"},
}

// smmapdDifference is an expected difference in verdict.
type smmapdDifference struct{ smmapd, ours string }

// smmapdDifferences are the deliberate differences, by case name; the
// smmapd-differences table in docs/socketmap.md must say the same.
var smmapdDifferences = map[string]smmapdDifference{
	"alias":                                {"NOTFOUND", "OK"},
	"catch-all":                            {"NOTFOUND", "OK"},
	"+detail, folder missing":              {"NOTFOUND", "OK"},
	"disabled user":                        {"OK", "NOTFOUND"},
	"mailbox in Cyrus only":                {"OK", "NOTFOUND"},
	"user in the store only":               {"NOTFOUND", "OK"},
	"over quota, quota_check unset":        {"TEMP", "OK"},
	"over quota, domain not in lower case": {"OK", "TEMP"},
	"over quota, +detail, folder missing":  {"NOTFOUND", "TEMP"},
	"disabled user, quota_check set":       {"OK", "NOTFOUND"},
}

// startCyrusLike starts Cyrus with the mailboxes that match labStore, plus
// the differences the cases need: alice's folder "tag", a full mailbox,
// a mailbox the store does not know (legacy) and none for new.
func startCyrusLike(t testing.TB) *lab.Cyrus {
	t.Helper()
	cy := lab.StartCyrus(t, lab.CyrusOptions{})
	for _, u := range []string{"alice@example.com", "alice/tag@example.com", "bob@example.com",
		"carol@other.org", "full@example.com", "legacy@example.com"} {
		cy.CreateMailbox(t, u)
	}
	// The message that crosses a 1 KiB quota is still taken; from then on
	// the mailbox is over quota (cyrus-lab-facts.md §4, lab TestCyrusQuota).
	cy.SetQuota(t, "full@example.com", 1)
	big := []byte("Subject: big\n\n" + strings.Repeat(strings.Repeat("x", 63)+"\n", 40))
	if r := cy.Deliver(t, "x@outside.org", []string{"full@example.com"}, big); !strings.HasPrefix(r[0], "250 ") {
		t.Fatalf("filling full@example.com: %q", r[0])
	}
	return cy
}

// checkAgainstSmmapd asks each key of our mailbox map (on sock) and of
// smmapd, and fails on any difference in verdict that smmapdDifferences
// does not list, and on any listed one that does not show. Where both say
// OK, the data (the key echoed) must be the same too.
func checkAgainstSmmapd(t *testing.T, cy *lab.Cyrus, sock string, cases []mailboxCase) {
	t.Helper()
	ours := dialSocketmap(t, sock)
	for _, tc := range cases {
		// smmapd ignores the map name. A fresh connection each time: it
		// closes the connection after a protocol error.
		theirs := dialSocketmap(t, cy.SmmapSocket).ask(t, "cyrus", tc.key)
		got := ours.ask(t, "mailbox", tc.key)
		t.Logf("%-40s %-28q smmapd %-36q ours %q", tc.name, tc.key, theirs, got)
		d := smmapdDifference{verdict(theirs), verdict(got)}
		want, documented := smmapdDifferences[tc.name]
		switch {
		case d.smmapd != d.ours && !documented:
			t.Errorf("%s (%q): smmapd %q, ours %q: an undocumented difference", tc.name, tc.key, theirs, got)
		case d.smmapd != d.ours && d != want:
			t.Errorf("%s (%q): smmapd %q, ours %q; documented as smmapd %s, ours %s",
				tc.name, tc.key, theirs, got, want.smmapd, want.ours)
		case d.smmapd == d.ours && documented:
			t.Errorf("%s (%q): documented as a difference (smmapd %s, ours %s), but both say %s",
				tc.name, tc.key, want.smmapd, want.ours, d.ours)
		case d == smmapdDifference{statusOK, statusOK} && got != theirs:
			t.Errorf("%s (%q): smmapd %q, ours %q; both OK must echo the key alike", tc.name, tc.key, theirs, got)
		}
	}
}

// docDifferences parses the smmapd-differences table of the docs: case ->
// verdicts.
func docDifferences(t testing.TB) map[string]smmapdDifference {
	t.Helper()
	diffs := map[string]smmapdDifference{}
	for line := range strings.Lines(docSnippet(t, "smmapd-differences")) {
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) != 5 || cells[0] == "case" || strings.HasPrefix(cells[0], "---") {
			continue
		}
		diffs[cells[0]] = smmapdDifference{cells[2], cells[3]}
	}
	return diffs
}

// TestMailboxMatchesSmmapd: our mailbox map and real Cyrus smmapd give the
// same verdict for the same addresses, except for the documented
// differences, each of which must show.
func TestMailboxMatchesSmmapd(t *testing.T) {
	t.Parallel()
	if doc := docDifferences(t); !maps.Equal(doc, smmapdDifferences) {
		t.Errorf("docs/socketmap.md lists the differences %v;\nthe test expects %v", doc, smmapdDifferences)
	}
	for name := range smmapdDifferences {
		has := func(tc mailboxCase) bool { return tc.name == name }
		if !slices.ContainsFunc(mailboxCases, has) && !slices.ContainsFunc(quotaCases, has) {
			t.Errorf("documented difference %q has no case", name)
		}
	}
	cy := startCyrusLike(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, nil) // quota_check unset: the default
	checkAgainstSmmapd(t, cy, sock, mailboxCases)
}

// TestOverQuotaMatchesSmmapd: with quota_check pointing at smmapd, a user
// whose mailbox is over quota gets smmapd's own TEMP Over quota, and the
// others are unaffected.
func TestOverQuotaMatchesSmmapd(t *testing.T) {
	t.Parallel()
	cy := startCyrusLike(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, func(cfg *Config) { cfg.QuotaCheck = "unix:" + cy.SmmapSocket })
	checkAgainstSmmapd(t, cy, sock, quotaCases)
	if got := dialSocketmap(t, sock).ask(t, "mailbox", "full@example.com"); got != "TEMP Over quota" {
		t.Errorf("mailbox full@example.com = %q, want smmapd's own %q", got, "TEMP Over quota")
	}
}

// TestQuotaCheckAfterCyrusReload: a reload of Cyrus (SIGHUP to master)
// ends its smmapd processes, as smmapd's own idle timeout and -U limit do;
// a connection the quota check kept to one of them must not turn the next
// lookups into TEMP (Postfix's own socketmap client retries once on EOF).
func TestQuotaCheckAfterCyrusReload(t *testing.T) {
	t.Parallel()
	cy := startCyrusLike(t)
	st, c := labStore(t)
	sock, _ := labServe(t, st, c, func(cfg *Config) { cfg.QuotaCheck = "unix:" + cy.SmmapSocket })
	ours := dialSocketmap(t, sock)
	if got := ours.ask(t, "mailbox", "alice@example.com"); got != "OK alice@example.com" {
		t.Fatalf("before the reload: %q", got)
	}
	master := masterPID(t, cy)
	old := children(t, master, "smmapd")
	if len(old) == 0 {
		t.Fatalf("no smmapd process under master %d", master)
	}
	if err := syscall.Kill(master, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for slices.ContainsFunc(old, alive) {
		if time.Now().After(deadline) {
			t.Fatalf("smmapd processes %v still there 10s after SIGHUP", old)
		}
		time.Sleep(20 * time.Millisecond) // nothing to wait on for another process's exit
	}
	for i := range maxIdleQuotaConns + 1 {
		if got := ours.ask(t, "mailbox", "alice@example.com"); got != "OK alice@example.com" {
			t.Errorf("lookup %d after the reload: %q, want OK alice@example.com", i+1, got)
		}
	}
}

// masterPID reads the pid file StartCyrus has master write.
func masterPID(t testing.TB, cy *lab.Cyrus) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(cy.Dir, "run/master.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatalf("master.pid: %v", err)
	}
	return pid
}

// children lists the live processes named comm whose parent is ppid.
func children(t testing.TB, ppid int, comm string) []int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range stats {
		data, err := os.ReadFile(f)
		if err != nil {
			continue // gone meanwhile
		}
		// "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
		j, i := strings.IndexByte(string(data), '('), strings.LastIndexByte(string(data), ')')
		if j < 0 || i < j {
			continue
		}
		fields := strings.Fields(string(data[i+1:]))
		if len(fields) < 2 || string(data[j+1:i]) != comm || fields[0] == "Z" {
			continue
		}
		if p, _ := strconv.Atoi(fields[1]); p == ppid {
			pid, _ := strconv.Atoi(strings.TrimSpace(string(data[:j])))
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid is a process that has not exited (a zombie has).
func alive(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	fields := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	return len(fields) > 0 && fields[0] != "Z"
}

// docSnippet is a snippet of docs/socketmap.md (see lab.DocSnippet).
func docSnippet(t testing.TB, name string) string {
	t.Helper()
	return lab.DocSnippet(t, "docs/socketmap.md", name)
}
