//go:build integration

package managesieve

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/e2e/lab"
)

// Replies of Cyrus timsieved 3.6.1 (Debian 3.6.1-4+deb12u5) observed by
// this test against the lab, verbatim (S: server, C: client):
//
//	greeting, no TLS configured: "IMPLEMENTATION" "Cyrus timsieved 3.6.1-Debian-3.6.1-4+deb12u5",
//	  "VERSION" "1.0", "SASL" "PLAIN LOGIN", "SIEVE" "<45 extensions, vacation date relational
//	  envelope include variables extlists fcc among them>", "NOTIFY" "mailto",
//	  "EXTLISTS" "urn:ietf:params:sieve:addrbook", "UNAUTHENTICATE", OK; no STARTTLS.
//	  With tls_server_cert/tls_server_key set, "STARTTLS" as well, and
//	  after STARTTLS (TLS 1.3) the list again without it.
//	C: AUTHENTICATE "PLAIN" <alice@example.com NUL admin NUL pw>
//	S: OK -- admins alone allows acting for another user; proxyservers is
//	  not needed. Nothing follows unasked; CAPABILITY then lists no SASL and
//	  "OWNER" "alice" (the default domain dropped).
//	  A bad password, a non-admin acting for someone else, or a user with no
//	  mailbox: NO "Authentication Error" (parser.c replaces SASL's text).
//	C: NOOP "x"                S: OK (TAG {1}CRLF x) "Done"
//	PUTSCRIPT/CHECKSCRIPT with a syntax error: NO {22} CRLF "line 2: syntax error" CRLF, CRLF
//	  (the literal ends in CRLF); an unknown extension:
//	  NO {..} "line 1: Unsupported feature(s) in \"require\": \"nosuch\"" CRLF
//	PUTSCRIPT over 32 KiB:      NO "Did not specify legal script data length"
//	GETSCRIPT/SETACTIVE/DELETESCRIPT of a missing script:
//	                            NO (NONEXISTENT) "Script does not exist"
//	DELETESCRIPT of the active: NO (ACTIVE) "Active script cannot be deleted"
//	RENAMESCRIPT onto a name:   NO (ALREADYEXISTS) "Script vacation already exists."
//	RENAMESCRIPT of a missing:  NO (NONEXISTENT) "Script nope does not exist"
//	HAVESPACE "s" 100000:       NO (QUOTA/MAXSIZE) "Script size is too large. Max script size is 32768 bytes"
//	6th PUTSCRIPT, HAVESPACE with 5 scripts, and also PUTSCRIPT/HAVESPACE of an
//	  existing name with 5 scripts (counted before the name is looked up):
//	                            NO (QUOTA/MAXSCRIPTS) "You are only allowed 5 scripts on this server"
//	a quoted string with 8-bit octets: NO "Did not specify script name"
//	a non-ASCII name sent as a literal: stored and listed as
//	  "=?UTF-8?Q?Urlaub-=C3=BC?=", found only under that form afterwards.
//	Script bodies come back byte for byte (CRLF or bare LF, UTF-8, "." lines).
//	A client that closes an authenticated session without LOGOUT makes
//	  timsieved die of SIGSEGV in its shutdown (master logs "signaled to death
//	  by signal 11"; cyrus-imapd#4537, fixed in 3.6.3 by 72df81f3); after
//	  LOGOUT it exits cleanly. Scripts already stored are not affected.

const labUser = "alice@example.com"

// startCyrus starts a lab Cyrus with alice's mailbox.
func startCyrus(t *testing.T, conf map[string]string) *lab.Cyrus {
	t.Helper()
	c := lab.StartCyrus(t, lab.CyrusOptions{Users: map[string]string{"alice": "secret"}, Conf: conf})
	c.CreateMailbox(t, "alice")
	return c
}

// login opens a session as the admin acting for user.
func login(t *testing.T, c *lab.Cyrus, user string, opt Options) *Client {
	t.Helper()
	cl, err := Dial(t.Context(), "tcp", c.SieveAddr, opt)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	// LOGOUT, not just Close: see the SIGSEGV note above. A test that
	// logged out already gets an error here, which is of no interest.
	t.Cleanup(func() { _ = cl.Logout() })
	if err := cl.AuthenticatePlain(user, c.Admin, c.AdminPassword); err != nil {
		t.Fatalf("AuthenticatePlain(%s as %s): %v", user, c.Admin, err)
	}
	return cl
}

// wantReply fails unless err is exactly the *Error want, and logs it.
func wantReply(t *testing.T, what string, err error, want *Error) {
	t.Helper()
	t.Logf("%s: %v", what, err)
	if want == nil {
		if err != nil {
			t.Errorf("%s: %v; want OK", what, err)
		}
		return
	}
	if got, ok := errors.AsType[*Error](err); !ok || *got != *want {
		t.Errorf("%s: %v; want %#v", what, err, want)
	}
}

func TestCyrus(t *testing.T) {
	c := startCyrus(t, nil)

	t.Run("greeting", func(t *testing.T) {
		cl, err := Dial(t.Context(), "tcp", c.SieveAddr, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		caps := cl.Capabilities()
		t.Logf("greeting capabilities: %q", caps.Raw)
		if !strings.HasPrefix(caps.Implementation, "Cyrus timsieved 3.6") || caps.Version != "1.0" ||
			!reflect.DeepEqual(caps.SASL, []string{"PLAIN", "LOGIN"}) || caps.StartTLS ||
			!reflect.DeepEqual(caps.Notify, []string{"mailto"}) {
			t.Errorf("capabilities %+v", caps)
		}
		for _, ext := range []string{"vacation", "vacation-seconds", "date", "relational", "envelope", "include", "variables", "extlists", "fcc", "copy"} {
			if !caps.HasExtension(ext) {
				t.Errorf("SIEVE lacks %q: %v", ext, caps.Sieve)
			}
		}
		if _, ok := caps.Raw["UNAUTHENTICATE"]; !ok {
			t.Errorf("no UNAUTHENTICATE")
		}
		if err := cl.Logout(); err != nil {
			t.Errorf("Logout: %v", err)
		}
	})

	t.Run("proxy authentication", func(t *testing.T) {
		// admins alone allows it (imap/global.c mysasl_proxy_policy);
		// proxyservers is not needed.
		cl := login(t, c, labUser, Options{})
		caps := cl.Capabilities()
		t.Logf("capabilities after AUTHENTICATE: %q", caps.Raw)
		// OWNER is Cyrus's canonical user id: the default domain dropped.
		if caps.Owner != "alice" || caps.SASL != nil || !caps.HasExtension("vacation") {
			t.Errorf("capabilities after AUTHENTICATE %+v", caps)
		}
		// The tag comes back as a literal (prot_printliteral).
		resp, err := cl.cmd("NOOP tagged", []byte("NOOP \"x\"\r\n"))
		if err != nil || resp.code != `TAG "x"` || resp.msg != "Done" {
			t.Errorf("NOOP \"x\" = %+v, %v; want OK (TAG \"x\") \"Done\"", resp, err)
		}
	})

	t.Run("authentication failures", func(t *testing.T) {
		for _, tt := range []struct {
			name, authzid, authcid, password string
			want                             *Error
		}{
			{"bad password", labUser, c.Admin, "wrong", &Error{Kind: "NO", Msg: "Authentication Error"}},
			{"user may not proxy", "bob@example.com", "alice", "secret", &Error{Kind: "NO", Msg: "Authentication Error"}},
			{"no such mailbox", "nobody@example.com", c.Admin, c.AdminPassword, &Error{Kind: "NO", Msg: "Authentication Error"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				cl, err := Dial(t.Context(), "tcp", c.SieveAddr, Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				err = cl.AuthenticatePlain(tt.authzid, tt.authcid, tt.password)
				wantReply(t, "AUTHENTICATE", err, tt.want)
				if err != nil && strings.Contains(err.Error(), tt.password) {
					t.Errorf("error shows the password")
				}
				if err := cl.Noop(); err != nil {
					t.Errorf("NOOP after a failed login: %v", err)
				}
			})
		}
	})

	cl := login(t, c, labUser, Options{})
	// A line holding only "." ends a text: block; "..": a dot-stuffed ".".
	script := "require [\"vacation\", \"date\", \"relational\"];\r\n" +
		"# Grüße – ☀\r\n" +
		"vacation :days 3 :subject \"Abwesend ☀\" text:\r\n" +
		"Ich bin bis Montag nicht da.\r\n" +
		"..\r\n" +
		".\r\n" +
		";\r\n"

	t.Run("round trip", func(t *testing.T) {
		for _, tt := range []struct{ name, content string }{
			{"vacation", script},
			{"lf only", strings.ReplaceAll(script, "\r\n", "\n")},
			{"no final newline", "keep;"},
		} {
			if err := cl.PutScript(tt.name, tt.content); err != nil {
				t.Fatalf("PUTSCRIPT %q: %v", tt.name, err)
			}
			got, err := cl.GetScript(tt.name)
			if err != nil {
				t.Fatalf("GETSCRIPT %q: %v", tt.name, err)
			}
			if got != tt.content {
				t.Errorf("GETSCRIPT %q = %q; want %q", tt.name, got, tt.content)
			}
		}
		scripts, err := cl.ListScripts()
		t.Logf("LISTSCRIPTS: %+v, %v", scripts, err)
		want := []Script{{"vacation", false}, {"lf only", false}, {"no final newline", false}}
		if err != nil || !sameScripts(scripts, want) {
			t.Errorf("LISTSCRIPTS = %+v, %v; want %+v in some order", scripts, err, want)
		}
	})

	// Cyrus 3.6.1 keeps a non-ASCII name as a MIME encoded-word (the
	// source is a message in #sieve), lists it so, and knows the script
	// only by that form afterwards: such names do not round-trip.
	t.Run("non-ASCII name", func(t *testing.T) {
		const name, stored = "Urlaub-ü", "=?UTF-8?Q?Urlaub-=C3=BC?="
		wantReply(t, "PUTSCRIPT "+name, cl.PutScript(name, "keep;\r\n"), nil)
		scripts, err := cl.ListScripts()
		t.Logf("LISTSCRIPTS: %+v, %v", scripts, err)
		if !slices.Contains(scripts, Script{Name: stored}) {
			t.Errorf("LISTSCRIPTS = %+v; want %q listed", scripts, stored)
		}
		_, err = cl.GetScript(name)
		wantReply(t, "GETSCRIPT "+name, err, &Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"})
		if got, err := cl.GetScript(stored); err != nil || got != "keep;\r\n" {
			t.Errorf("GETSCRIPT %s = %q, %v", stored, got, err)
		}
		// timsieved's lexer refuses 8-bit octets in quoted strings
		// (timsieved/lex.c), which is why such names go as literals.
		_, err = cl.cmd("GETSCRIPT quoted UTF-8", []byte("GETSCRIPT \"Urlaub-ü\"\r\n"))
		wantReply(t, "GETSCRIPT \"Urlaub-ü\" as a quoted string", err, &Error{Kind: "NO", Msg: "Did not specify script name"})
		if err := cl.Noop(); err != nil {
			t.Errorf("NOOP after the refused quoted name: %v", err)
		}
	})

	t.Run("checkscript", func(t *testing.T) {
		wantReply(t, "CHECKSCRIPT good", cl.CheckScript(script), nil)
		wantReply(t, "CHECKSCRIPT bad", cl.CheckScript("require [\"vacation\"];\r\nvacation :days \"x\";\r\n"),
			&Error{Kind: "NO", Msg: "line 2: syntax error\r\n"})
		wantReply(t, "CHECKSCRIPT unknown extension", cl.CheckScript("require [\"nosuch\"];\r\n"),
			&Error{Kind: "NO", Msg: "line 1: Unsupported feature(s) in \"require\": \"nosuch\"\r\n"})
		wantReply(t, "PUTSCRIPT bad", cl.PutScript("bad", "keep\r\nstop;\r\n"),
			&Error{Kind: "NO", Msg: "line 2: syntax error\r\n"})
	})

	t.Run("setactive", func(t *testing.T) {
		wantReply(t, "SETACTIVE vacation", cl.SetActive("vacation"), nil)
		if s, _ := cl.ListScripts(); activeName(s) != "vacation" {
			t.Errorf("LISTSCRIPTS after SETACTIVE = %+v", s)
		}
		// Replacing the active script keeps it active (RFC 5804 §2.6).
		wantReply(t, "PUTSCRIPT over the active one", cl.PutScript("vacation", script), nil)
		if s, _ := cl.ListScripts(); activeName(s) != "vacation" {
			t.Errorf("LISTSCRIPTS after re-PUTSCRIPT = %+v", s)
		}
		wantReply(t, "DELETESCRIPT active", cl.DeleteScript("vacation"),
			&Error{Kind: "NO", Code: "ACTIVE", Msg: "Active script cannot be deleted"})
		wantReply(t, "SETACTIVE missing", cl.SetActive("nope"),
			&Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"})
		wantReply(t, "SETACTIVE \"\"", cl.SetActive(""), nil)
		if s, _ := cl.ListScripts(); activeName(s) != "" {
			t.Errorf("LISTSCRIPTS after SETACTIVE \"\" = %+v", s)
		}
		_, err := cl.GetScript("nope")
		wantReply(t, "GETSCRIPT missing", err, &Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"})
		wantReply(t, "DELETESCRIPT missing", cl.DeleteScript("nope"),
			&Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"})
	})

	t.Run("renamescript", func(t *testing.T) {
		wantReply(t, "RENAMESCRIPT", cl.RenameScript("no final newline", "keep"), nil)
		wantReply(t, "RENAMESCRIPT onto existing", cl.RenameScript("keep", "vacation"),
			&Error{Kind: "NO", Code: "ALREADYEXISTS", Msg: "Script vacation already exists."})
		wantReply(t, "RENAMESCRIPT missing", cl.RenameScript("nope", "nope2"),
			&Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script nope does not exist"})
	})

	t.Run("limits", func(t *testing.T) {
		wantReply(t, "HAVESPACE 1000", cl.HaveSpace("s", 1000), nil)
		wantReply(t, "HAVESPACE 100000", cl.HaveSpace("s", 100000),
			&Error{Kind: "NO", Code: "QUOTA/MAXSIZE", Msg: "Script size is too large. Max script size is 32768 bytes"})
		big := "#" + strings.Repeat("x", 40<<10) + "\r\nkeep;\r\n"
		wantReply(t, "PUTSCRIPT of 40 KiB", cl.PutScript("big", big), &Error{Kind: "NO", Msg: "Did not specify legal script data length"})
		if err := cl.Noop(); err != nil {
			t.Errorf("NOOP after the big script: %v", err)
		}
		scripts, err := cl.ListScripts()
		if err != nil {
			t.Fatal(err)
		}
		for i := len(scripts); i < 5; i++ {
			wantReply(t, fmt.Sprintf("PUTSCRIPT s%d", i), cl.PutScript(fmt.Sprintf("s%d", i), "keep;\r\n"), nil)
		}
		quota := &Error{Kind: "NO", Code: "QUOTA/MAXSCRIPTS", Msg: "You are only allowed 5 scripts on this server"}
		wantReply(t, "PUTSCRIPT 6th", cl.PutScript("sixth", "keep;\r\n"), quota)
		wantReply(t, "HAVESPACE 6th", cl.HaveSpace("sixth", 10), quota)
		// timsieved counts before it looks the name up (actions.c
		// putscript), so at the limit even replacing a script fails.
		wantReply(t, "PUTSCRIPT replacing at the limit", cl.PutScript("vacation", script), quota)
		wantReply(t, "HAVESPACE existing at the limit", cl.HaveSpace("vacation", 10), quota)
		wantReply(t, "DELETESCRIPT s4", cl.DeleteScript("keep"), nil)
		wantReply(t, "PUTSCRIPT replacing below the limit", cl.PutScript("vacation", script), nil)
	})

	t.Run("logout", func(t *testing.T) {
		if err := cl.Logout(); err != nil {
			t.Errorf("Logout: %v", err)
		}
	})
}

// TestCyrusSTARTTLS runs a Cyrus with a certificate: the greeting offers
// STARTTLS, and after it the capabilities come again without it.
func TestCyrusSTARTTLS(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	// timsieved runs as cyrus and reads the files itself.
	dir, err := os.MkdirTemp("", "mstls")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	writePEM(t, cert, "CERTIFICATE", srvTLS.Certificates[0].Certificate[0])
	writePEM(t, key, "PRIVATE KEY", marshalKey(t, srvTLS.Certificates[0]))
	c := startCyrus(t, map[string]string{"tls_server_cert": cert, "tls_server_key": key})

	plain, err := Dial(t.Context(), "tcp", c.SieveAddr, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("greeting with TLS configured: %q", plain.Capabilities().Raw)
	if !plain.Capabilities().StartTLS {
		t.Errorf("no STARTTLS offered: %+v", plain.Capabilities())
	}
	plain.Close()

	opt := Options{TLSConfig: &tls.Config{RootCAs: cliTLS.RootCAs}, RequireTLS: true, Timeout: 10 * time.Second}
	cl := login(t, c, labUser, opt)
	tc, ok := cl.conn.(*tls.Conn)
	if !ok {
		t.Fatalf("no TLS after Dial")
	}
	st := tc.ConnectionState()
	t.Logf("TLS %s, %s; capabilities after STARTTLS and AUTHENTICATE: %q",
		tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), cl.Capabilities().Raw)
	if cl.Capabilities().StartTLS || cl.Capabilities().Owner != "alice" {
		t.Errorf("capabilities %+v", cl.Capabilities())
	}
	if err := cl.PutScript("vacation", "keep;\r\n"); err != nil {
		t.Errorf("PUTSCRIPT over TLS: %v", err)
	}
	if err := cl.Logout(); err != nil {
		t.Errorf("Logout: %v", err)
	}
}

func sameScripts(got, want []Script) bool {
	if len(got) != len(want) {
		return false
	}
	for _, w := range want {
		if !slices.Contains(got, w) {
			return false
		}
	}
	return true
}

func activeName(scripts []Script) string {
	for _, s := range scripts {
		if s.Active {
			return s.Name
		}
	}
	return ""
}

func marshalKey(t *testing.T, cert tls.Certificate) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}
