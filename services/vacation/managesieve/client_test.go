package managesieve

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// greet is the fake's first step: Cyrus's greeting.
var greet = "S= " + strconv.Quote(cyrusGreeting) + "\n"

// checkErr fails unless err matches want: nil, a sentinel (errors.Is) or
// an *Error (compared by value).
func checkErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if we, ok := want.(*Error); ok {
		ge, ok := errors.AsType[*Error](err)
		if !ok || *ge != *we {
			t.Errorf("%s: error %v; want *Error %#v", what, err, we)
		}
		return
	}
	if !errors.Is(err, want) || (want == nil) != (err == nil) {
		t.Errorf("%s: error %v; want %v", what, err, want)
	}
}

func TestGreeting(t *testing.T) {
	c, _ := connect(t, greet, Options{})
	caps := c.Capabilities()
	if caps.Implementation != "Cyrus timsieved 3.6.1-Debian-3.6.1-4+deb12u5" || caps.Version != "1.0" ||
		!reflect.DeepEqual(caps.SASL, []string{"PLAIN", "LOGIN"}) || !reflect.DeepEqual(caps.Notify, []string{"mailto"}) ||
		caps.StartTLS || caps.Owner != "" || caps.Raw["EXTLISTS"] != "urn:ietf:params:sieve:addrbook" {
		t.Errorf("capabilities %+v", caps)
	}
	if _, ok := caps.Raw["UNAUTHENTICATE"]; !ok {
		t.Errorf("Raw lacks UNAUTHENTICATE: %v", caps.Raw)
	}
	for _, ext := range []string{"vacation", "vacation-seconds", "date", "relational", "envelope", "include", "extlists", "fcc"} {
		if !caps.HasExtension(ext) {
			t.Errorf("HasExtension(%q) = false", ext)
		}
	}
	if caps.HasExtension("Vacation") || caps.HasExtension("vac") {
		t.Errorf("HasExtension matches loosely")
	}
	// The copy is the caller's.
	caps.Sieve[0], caps.Raw["SASL"] = "changed", "changed"
	if again := c.Capabilities(); again.Sieve[0] == "changed" || again.Raw["SASL"] == "changed" {
		t.Errorf("Capabilities shares its slices or map")
	}
}

func TestGreetingRefused(t *testing.T) {
	for _, tt := range []struct {
		name, transcript string
		want             error
	}{
		{"bye", `S: BYE "Too many connections"`, &Error{Kind: "BYE", Msg: "Too many connections"}},
		{"no", `S: NO (TRYLATER) "Maintenance"`, &Error{Kind: "NO", Code: "TRYLATER", Msg: "Maintenance"}},
		{"garbage", `S: 220 smtp.example.com ESMTP`, errSyntax},
		{"bad capability", `S: "SIEVE" fileinto` + "\nS: OK", errSyntax},
		{"closed", `CLOSE`, io.EOF},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, nil, tt.transcript)
			c, err := Dial(t.Context(), "tcp", f.addr, Options{})
			if c != nil {
				c.Close()
			}
			checkErr(t, "Dial", err, tt.want)
		})
	}
}

// TestCommands runs each command against a scripted reply; a NOOP after
// each shows the client is still in step with the server.
func TestCommands(t *testing.T) {
	script := "require \"vacation\";\r\n# ü\r\n.\r\nvacation \"x\";\n" // a lone ".", UTF-8, a bare LF
	tests := []struct {
		name, transcript string
		call             func(*Client) (any, error)
		want             any
		wantErr          error
	}{
		{"listscripts", `C: LISTSCRIPTS
			S: "vacation" ACTIVE
			S: "old"
			S= "{5}\r\nnäme\r\n"
			S= "{3}\r\na b active\r\n"
			S: OK`,
			func(c *Client) (any, error) { return c.ListScripts() },
			[]Script{{"vacation", true}, {"old", false}, {"näme", false}, {"a b", true}}, nil},
		{"listscripts empty", "C: LISTSCRIPTS\nS: OK",
			func(c *Client) (any, error) { return c.ListScripts() }, []Script{}, nil},
		{"listscripts bad line", "C: LISTSCRIPTS\nS: \"a\" INACTIVE\nS: OK",
			func(c *Client) (any, error) { return c.ListScripts() }, []Script(nil), errSyntax},
		{"getscript", `C: GETSCRIPT "vacation"` + "\nS= " + strconv.Quote(fmt.Sprintf("{%d}\r\n%s\r\nOK\r\n", len(script), script)),
			func(c *Client) (any, error) { return c.GetScript("vacation") }, script, nil},
		{"getscript quoted", "C: GETSCRIPT \"v\"\nS: \"keep;\"\nS: OK",
			func(c *Client) (any, error) { return c.GetScript("v") }, "keep;", nil},
		{"getscript utf-8 name", "C= \"GETSCRIPT {9+}\\r\\nUrlaub-ü\\r\\n\"\nS: \"keep;\"\nS: OK",
			func(c *Client) (any, error) { return c.GetScript("Urlaub-ü") }, "keep;", nil},
		{"getscript missing", `C: GETSCRIPT "nope"` + "\nS: NO (NONEXISTENT) \"Script does not exist\"",
			func(c *Client) (any, error) { return c.GetScript("nope") }, "",
			&Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"}},
		{"getscript no data", "C: GETSCRIPT \"v\"\nS: OK",
			func(c *Client) (any, error) { return c.GetScript("v") }, "", errSyntax},
		{"putscript", "C= " + strconv.Quote(fmt.Sprintf("PUTSCRIPT \"vacation\" {%d+}\r\n%s\r\n", len(script), script)) + "\nS: OK",
			func(c *Client) (any, error) { return nil, c.PutScript("vacation", script) }, nil, nil},
		{"putscript quoted name", "",
			func(c *Client) (any, error) { return nil, c.PutScript(`a "b"`, "") }, nil, errArg},
		{"putscript utf-8 name", "C= \"PUTSCRIPT {9+}\\r\\nUrlaub-ü {5+}\\r\\nkeep;\\r\\n\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.PutScript("Urlaub-ü", "keep;") }, nil, nil},
		// Cyrus's parse error: a literal ending in CRLF (cyrus-lab-facts.md §5).
		{"putscript syntax error", "C= \"PUTSCRIPT \\\"v\\\" {4+}\\r\\nkeep\\r\\n\"\nS= \"NO {22}\\r\\nline 1: syntax error\\r\\n\\r\\n\"",
			func(c *Client) (any, error) { return nil, c.PutScript("v", "keep") }, nil,
			&Error{Kind: "NO", Msg: "line 1: syntax error\r\n"}},
		{"putscript quota", "C= \"PUTSCRIPT \\\"v6\\\" {5+}\\r\\nkeep;\\r\\n\"\nS: NO (QUOTA/MAXSCRIPTS) \"You are only allowed 5 scripts on this server\"",
			func(c *Client) (any, error) { return nil, c.PutScript("v6", "keep;") }, nil,
			&Error{Kind: "NO", Code: "QUOTA/MAXSCRIPTS", Msg: "You are only allowed 5 scripts on this server"}},
		{"checkscript warnings", "C= \"CHECKSCRIPT {5+}\\r\\nkeep;\\r\\n\"\nS: OK (WARNINGS) \"line 1: deprecated\"",
			func(c *Client) (any, error) { return nil, c.CheckScript("keep;") }, nil, nil},
		{"checkscript bad", "C= \"CHECKSCRIPT {4+}\\r\\nkeep\\r\\n\"\nS: NO \"line 1: syntax error\"",
			func(c *Client) (any, error) { return nil, c.CheckScript("keep") }, nil,
			&Error{Kind: "NO", Msg: "line 1: syntax error"}},
		{"setactive", "C: SETACTIVE \"vacation\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.SetActive("vacation") }, nil, nil},
		{"setactive none", "C: SETACTIVE \"\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.SetActive("") }, nil, nil},
		{"setactive missing", "C: SETACTIVE \"nope\"\nS: NO (NONEXISTENT) \"Script does not exist\"",
			func(c *Client) (any, error) { return nil, c.SetActive("nope") }, nil,
			&Error{Kind: "NO", Code: "NONEXISTENT", Msg: "Script does not exist"}},
		{"deletescript", "C: DELETESCRIPT \"old\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.DeleteScript("old") }, nil, nil},
		{"deletescript active", "C: DELETESCRIPT \"v\"\nS: NO (ACTIVE) \"Active script cannot be deleted\"",
			func(c *Client) (any, error) { return nil, c.DeleteScript("v") }, nil,
			&Error{Kind: "NO", Code: "ACTIVE", Msg: "Active script cannot be deleted"}},
		{"renamescript", "C: RENAMESCRIPT \"a\" \"b\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.RenameScript("a", "b") }, nil, nil},
		{"renamescript exists", "C: RENAMESCRIPT \"a\" \"b\"\nS: NO (ALREADYEXISTS) \"Script b already exists.\"",
			func(c *Client) (any, error) { return nil, c.RenameScript("a", "b") }, nil,
			&Error{Kind: "NO", Code: "ALREADYEXISTS", Msg: "Script b already exists."}},
		{"havespace", "C: HAVESPACE \"v\" 1000\nS: OK",
			func(c *Client) (any, error) { return nil, c.HaveSpace("v", 1000) }, nil, nil},
		{"havespace too big", "C: HAVESPACE \"v\" 100000\nS: NO (QUOTA/MAXSIZE) \"Script size is too large. Max script size is 32768 bytes\"",
			func(c *Client) (any, error) { return nil, c.HaveSpace("v", 100000) }, nil,
			&Error{Kind: "NO", Code: "QUOTA/MAXSIZE", Msg: "Script size is too large. Max script size is 32768 bytes"}},
		{"havespace negative", "",
			func(c *Client) (any, error) { return nil, c.HaveSpace("v", -1) }, nil, errArg},
		{"noop", "C: NOOP\nS: OK \"Done\"",
			func(c *Client) (any, error) { return nil, c.Noop() }, nil, nil},
		{"code with arguments and literal text", "C: NOOP\nS= \"NO (X-FOO (1 \\\"two\\\" {1}\\r\\n3)) {5}\\r\\nline\\n\\r\\n\"",
			func(c *Client) (any, error) { return nil, c.Noop() }, nil,
			&Error{Kind: "NO", Code: `X-FOO (1 "two" "3")`, Msg: "line\n"}},
		{"data before ok", "C: DELETESCRIPT \"x\"\nS: \"surprise\"\nS: OK",
			func(c *Client) (any, error) { return nil, c.DeleteScript("x") }, nil, errSyntax},
		{"bad names", "",
			func(c *Client) (any, error) {
				return nil, errors.Join(c.PutScript("a\nb", ""), getErr(c, "\x00"), c.SetActive("a\rb"),
					c.DeleteScript(""), c.RenameScript("a", "\u2028"), c.HaveSpace("\x7f", 1))
			}, nil, errArg},
		{"script too large", "",
			func(c *Client) (any, error) {
				big := strings.Repeat("#", maxScript+1)
				return nil, errors.Join(c.PutScript("v", big), c.CheckScript(big))
			}, nil, errArg},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			transcript := greet + tt.transcript + "\nC: NOOP\nS: OK"
			if tt.transcript == "" {
				transcript = greet + "C: NOOP\nS: OK"
			}
			c, _ := connect(t, transcript, Options{})
			got, err := tt.call(c)
			checkErr(t, tt.name, err, tt.wantErr)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s = %#v; want %#v", tt.name, got, tt.want)
			}
			if err := c.Noop(); err != nil {
				t.Errorf("NOOP afterwards: %v", err)
			}
		})
	}
}

// getErr drops GetScript's string, for errors.Join above.
func getErr(c *Client, name string) error {
	_, err := c.GetScript(name)
	return err
}

func TestAuthenticatePlain(t *testing.T) {
	ir := base64.StdEncoding.EncodeToString([]byte("alice@example.com\x00admin\x00s3cret"))
	auth := `C: AUTHENTICATE "PLAIN" "` + ir + `"` + "\n"
	after := `C: NOOP "sidecar-auth-sync"
		C: CAPABILITY
		S= "OK (TAG {17}\r\nsidecar-auth-sync) \"Done\"\r\n"
		S: "IMPLEMENTATION" "Cyrus timsieved"
		S: "VERSION" "1.0"
		S: "SIEVE" "fileinto vacation"
		S: "OWNER" "alice@example.com"
		S: "UNAUTHENTICATE"
		S: OK
		C: NOOP
		S: OK`
	wantOwner := func(t *testing.T, c *Client) {
		t.Helper()
		if caps := c.Capabilities(); caps.Owner != "alice@example.com" || caps.SASL != nil ||
			!reflect.DeepEqual(caps.Sieve, []string{"fileinto", "vacation"}) {
			t.Errorf("capabilities after AUTHENTICATE: %+v", caps)
		}
		if err := c.Noop(); err != nil {
			t.Errorf("NOOP: %v", err)
		}
	}

	t.Run("ok", func(t *testing.T) {
		c, _ := connect(t, greet+auth+"S: OK\n"+after, Options{})
		if err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret"); err != nil {
			t.Fatal(err)
		}
		wantOwner(t, c)
	})
	t.Run("ok with SASL data", func(t *testing.T) {
		c, _ := connect(t, greet+auth+"S: OK (SASL \"AAAA\")\n"+after, Options{})
		if err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret"); err != nil {
			t.Fatal(err)
		}
		wantOwner(t, c)
	})
	// RFC 5804 §2.1: capabilities may follow the OK unasked.
	t.Run("unasked capabilities", func(t *testing.T) {
		c, _ := connect(t, greet+auth+"S: OK\nS: \"IMPLEMENTATION\" \"early\"\nS: \"VERSION\" \"1.0\"\nS: OK\n"+after, Options{})
		if err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret"); err != nil {
			t.Fatal(err)
		}
		wantOwner(t, c)
	})
	t.Run("pre-RFC server", func(t *testing.T) {
		old := "S: \"IMPLEMENTATION\" \"Cyrus timsieved v2.2\"\nS: \"SASL\" \"PLAIN\"\nS: OK\n"
		c, _ := connect(t, old+auth+"S: OK\nC: NOOP\nS: OK", Options{})
		if err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret"); err != nil {
			t.Fatal(err)
		}
		if err := c.Noop(); err != nil {
			t.Errorf("NOOP: %v", err)
		}
	})
	for _, tt := range []struct{ name, reply string }{
		{"rejected", `S: NO "Authentication Error"`},
		{"rejected literal", `S= "NO (SASL \"eA==\") {22}\r\nauthentication failure\r\n"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := connect(t, greet+auth+tt.reply+"\nC: NOOP\nS: OK", Options{})
			err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret")
			e, ok := errors.AsType[*Error](err)
			if !ok || e.Kind != "NO" || e.Msg == "" {
				t.Fatalf("AuthenticatePlain: %v; want a NO *Error with the server's text", err)
			}
			if s := fmt.Sprintf("%v %+v %#v", err, err, e); strings.Contains(s, "s3cret") || strings.Contains(s, ir) {
				t.Errorf("error shows the password: %s", s)
			}
			if !strings.Contains(err.Error(), strconv.Quote(e.Msg)) {
				t.Errorf("error %q does not quote the server's text", err)
			}
			if err := c.Noop(); err != nil { // a failed login leaves the session usable
				t.Errorf("NOOP: %v", err)
			}
		})
	}
	t.Run("challenge is cancelled", func(t *testing.T) {
		c, _ := connect(t, greet+auth+"S: \"\"\nC: \"*\"\nS: NO \"Authentication cancelled\"\nC: NOOP\nS: OK", Options{})
		err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret")
		checkErr(t, "AuthenticatePlain", err, &Error{Kind: "NO", Msg: "Authentication cancelled"})
		if err := c.Noop(); err != nil {
			t.Errorf("NOOP: %v", err)
		}
	})
	t.Run("bye", func(t *testing.T) {
		c, _ := connect(t, greet+auth+`S: BYE "Too many failures"`, Options{})
		err := c.AuthenticatePlain("alice@example.com", "admin", "s3cret")
		checkErr(t, "AuthenticatePlain", err, &Error{Kind: "BYE", Msg: "Too many failures"})
		checkErr(t, "NOOP after BYE", c.Noop(), errBroken)
	})
	t.Run("bad arguments", func(t *testing.T) {
		c, _ := connect(t, greet, Options{})
		for _, a := range [][3]string{{"a", "", "pw"}, {"a", "b", ""}, {"a\x00", "b", "pw"}, {"a", "b", "p\x00w"}} {
			checkErr(t, fmt.Sprintf("AuthenticatePlain(%q)", a[:2]), c.AuthenticatePlain(a[0], a[1], a[2]), errArg)
		}
	})
}

func TestBYEMidSession(t *testing.T) {
	c, _ := connect(t, greet+"C: LISTSCRIPTS\nS: \"a\"\nS: BYE (REFERRAL \"sieve://other.example\") \"Try Remote.\"", Options{})
	_, err := c.ListScripts()
	checkErr(t, "LISTSCRIPTS", err, &Error{Kind: "BYE", Code: `REFERRAL "sieve://other.example"`, Msg: "Try Remote."})
	// The session is over; nothing more is sent (the fake would see it).
	checkErr(t, "NOOP after BYE", c.Noop(), errBroken)
	checkErr(t, "LOGOUT after BYE", c.Logout(), errBroken)
}

func TestEOFMidReply(t *testing.T) {
	c, _ := connect(t, greet+"C: LISTSCRIPTS\nS: \"a\"\nCLOSE", Options{})
	_, err := c.ListScripts()
	checkErr(t, "LISTSCRIPTS", err, io.ErrUnexpectedEOF)
	checkErr(t, "NOOP", c.Noop(), errBroken)
}

// TestLimits: over-long replies end the session with errTooLong at once,
// without waiting for the rest.
func TestLimits(t *testing.T) {
	for _, tt := range []struct{ name, reply string }{
		{"long line", "S: " + strings.Repeat("x", maxLine+10)},
		{"long quoted", "S: \"" + strings.Repeat("x", maxLine+10) + "\""},
		{"huge literal announced", "S: {2000000}"},
		{"huge literal sent", "S: {1048577}\nS: " + strings.Repeat("x", maxScript+1)},
		{"many lines", strings.Repeat("S: \"a\"\n", maxDataLines+1) + "S: OK"},
		{"large response", strings.Repeat("S: {1000000}\nS= "+strconv.Quote(strings.Repeat("y", 1000000))+"\n", 5) + "S: OK"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, f := connect(t, greet+"C: LISTSCRIPTS\n"+tt.reply, Options{Timeout: 5 * time.Second})
			f.lenient = true // it may be writing when the client hangs up
			start := time.Now()
			_, err := c.ListScripts()
			checkErr(t, "LISTSCRIPTS", err, errTooLong)
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("took %v", d)
			}
			checkErr(t, "NOOP", c.Noop(), errBroken)
		})
	}
}

func TestTimeout(t *testing.T) {
	c, _ := connect(t, greet+"C: NOOP", Options{Timeout: 200 * time.Millisecond})
	start := time.Now()
	err := c.Noop()
	checkErr(t, "NOOP", err, os.ErrDeadlineExceeded)
	if d := time.Since(start); d < 150*time.Millisecond || d > 2*time.Second {
		t.Errorf("NOOP gave up after %v; want about 200ms", d)
	}
	checkErr(t, "NOOP again", c.Noop(), errBroken)
}

func TestGreetingTimeout(t *testing.T) {
	f := newFake(t, nil, "") // accepts, says nothing
	start := time.Now()
	_, err := Dial(t.Context(), "tcp", f.addr, Options{Timeout: 200 * time.Millisecond})
	checkErr(t, "Dial", err, os.ErrDeadlineExceeded)
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Dial took %v", d)
	}
}

// TestDialContext: ctx bounds Dial even when Options.Timeout is long.
func TestDialContext(t *testing.T) {
	t.Run("deadline", func(t *testing.T) {
		f := newFake(t, nil, "")
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := Dial(ctx, "tcp", f.addr, Options{})
		checkErr(t, "Dial", err, context.DeadlineExceeded)
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Dial took %v", d)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		f := newFake(t, nil, "")
		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(200*time.Millisecond, cancel)
		_, err := Dial(ctx, "tcp", f.addr, Options{})
		checkErr(t, "Dial", err, context.Canceled)
	})
	t.Run("cancelled before", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		_, err := Dial(ctx, "tcp", "127.0.0.1:1", Options{})
		checkErr(t, "Dial", err, context.Canceled)
	})
	t.Run("after Dial ctx no longer matters", func(t *testing.T) {
		f := newFake(t, nil, greet+"C: NOOP\nS: OK")
		ctx, cancel := context.WithCancel(t.Context())
		c, err := Dial(ctx, "tcp", f.addr, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cancel()
		if err := c.Noop(); err != nil {
			t.Errorf("NOOP after cancelling Dial's ctx: %v", err)
		}
	})
}

// TestCloseAborts: Close from another goroutine ends a command waiting
// for its reply.
func TestCloseAborts(t *testing.T) {
	c, f := connect(t, greet+"C: NOOP", Options{})
	f.lenient = true
	time.AfterFunc(100*time.Millisecond, func() { c.Close() })
	start := time.Now()
	if err := c.Noop(); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("NOOP = %v after %v; want an error at once", err, time.Since(start))
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestConcurrentCommands(t *testing.T) {
	c, _ := connect(t, greet+strings.Repeat("C: NOOP\nS: OK\n", 8), Options{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := c.Noop(); err != nil {
				t.Errorf("NOOP: %v", err)
			}
		})
	}
	wg.Wait()
}

func TestLogout(t *testing.T) {
	c, _ := connect(t, greet+"C: LOGOUT\nS: OK \"Logout Complete\"", Options{})
	if err := c.Logout(); err != nil {
		t.Fatal(err)
	}
	checkErr(t, "NOOP after LOGOUT", c.Noop(), errBroken)
	if err := c.Close(); err != nil {
		t.Errorf("Close after Logout: %v", err)
	}
}

func TestErrorString(t *testing.T) {
	for _, tt := range []struct {
		e    Error
		want string
	}{
		{Error{Kind: "NO", Code: "ACTIVE", Msg: "Active script cannot be deleted"}, `NO (ACTIVE) "Active script cannot be deleted"`},
		{Error{Kind: "NO", Msg: "line 3: syntax error\r\n"}, `NO "line 3: syntax error\r\n"`},
		{Error{Kind: "BYE"}, `BYE ""`},
		{Error{Kind: "NO", Code: "QUOTA"}, `NO (QUOTA)`},
	} {
		if got := tt.e.Error(); got != tt.want {
			t.Errorf("%#v.Error() = %s; want %s", tt.e, got, tt.want)
		}
	}
}

// Dial over an address with no listener fails with the dial error.
func TestDialRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	_, err = Dial(t.Context(), "tcp", addr, Options{Timeout: time.Second})
	if _, ok := errors.AsType[*net.OpError](err); !ok {
		t.Errorf("Dial = %v; want a *net.OpError", err)
	}
}

func TestSTARTTLS(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	offer := "S= " + strconv.Quote(strings.TrimSuffix(cyrusGreeting, "OK\r\n")+"\"STARTTLS\"\r\nOK\r\n") + "\n"
	// RFC 5804 §2.2: capabilities again after the handshake.
	afterTLS := "C: STARTTLS\nS: OK \"Begin TLS negotiation now\"\nTLS\n" +
		"S: \"IMPLEMENTATION\" \"Cyrus timsieved\"\nS: \"VERSION\" \"1.0\"\nS: \"SASL\" \"PLAIN\"\nS: OK\n"
	noServerName := cliTLS.Clone()
	noServerName.ServerName = "" // Dial takes it from the address
	untrusted := cliTLS.Clone()
	untrusted.RootCAs = nil
	tests := []struct {
		name, transcript string
		opt              Options
		wantTLS          bool
		wantErr          error
	}{
		{"upgrade", offer + afterTLS + "C: NOOP\nS: OK", Options{TLSConfig: cliTLS, RequireTLS: true}, true, nil},
		{"server name from address", offer + afterTLS + "C: NOOP\nS: OK", Options{TLSConfig: noServerName}, true, nil},
		{"not offered", greet + "C: NOOP\nS: OK", Options{TLSConfig: cliTLS}, false, nil},
		{"not offered but required", greet, Options{TLSConfig: cliTLS, RequireTLS: true}, false, errNoTLS},
		{"required without config", greet, Options{RequireTLS: true}, false, errArg},
		{"offered but no config", offer + "C: NOOP\nS: OK", Options{}, false, nil},
		{"refused", offer + "C: STARTTLS\nS: NO \"Error initializing TLS\"", Options{TLSConfig: cliTLS}, false,
			&Error{Kind: "NO", Msg: "Error initializing TLS"}},
		{"untrusted certificate", offer + "C: STARTTLS\nS: OK\nTLS", Options{TLSConfig: untrusted}, false, nil},
		// Plaintext injected after OK must not be taken as if it came over TLS.
		{"injection", offer + "C: STARTTLS\nS= \"OK\\r\\n\\\"IMPLEMENTATION\\\" \\\"evil\\\"\\r\\n\"", Options{TLSConfig: cliTLS}, false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake(t, srvTLS, tt.transcript)
			c, err := Dial(t.Context(), "tcp", f.addr, tt.opt)
			if tt.name == "untrusted certificate" || tt.name == "injection" {
				f.lenient = true
				if err == nil {
					c.Close()
					t.Fatalf("Dial succeeded; want an error")
				}
				t.Logf("Dial: %v", err)
				return
			}
			checkErr(t, "Dial", err, tt.wantErr)
			if err != nil {
				return
			}
			defer c.Close()
			tc, isTLS := c.conn.(*tls.Conn)
			if isTLS != tt.wantTLS || (isTLS && !tc.ConnectionState().HandshakeComplete) {
				t.Errorf("TLS = %v; want %v", isTLS, tt.wantTLS)
			}
			if caps := c.Capabilities(); tt.wantTLS && (caps.StartTLS || caps.Implementation != "Cyrus timsieved") {
				t.Errorf("capabilities after STARTTLS not re-read: %+v", caps)
			}
			if err := c.Noop(); err != nil {
				t.Errorf("NOOP: %v", err)
			}
		})
	}
}
