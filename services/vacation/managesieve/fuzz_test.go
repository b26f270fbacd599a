package managesieve

import (
	"bytes"
	"reflect"
	"strconv"
	"testing"
)

// FuzzResponse feeds arbitrary server bytes to the reply reader and the
// parsers over its data lines. Rejecting is fine; panicking, hanging,
// over-allocating or accepting what does not read back the same is not.
func FuzzResponse(f *testing.F) {
	for _, seed := range []string{
		cyrusGreeting,
		"OK\r\n",
		"NO (ACTIVE) \"Active script cannot be deleted\"\r\n",
		"NO (QUOTA/MAXSCRIPTS) \"You are only allowed 5 scripts on this server\"\r\n",
		"NO (QUOTA/MAXSIZE) \"Script size is too large. Max script size is 32768 bytes\"\r\n",
		"NO (NONEXISTENT) \"Script does not exist\"\r\n",
		"NO {22}\r\nline 3: syntax error\r\n\r\n",
		"OK (TAG {17}\r\nsidecar-auth-sync) \"Done\"\r\n",
		"OK (SASL \"cnNwYXV0aD0=\")\r\n",
		"OK (WARNINGS) \"line 1: deprecated\"\r\n",
		"BYE (REFERRAL \"sieve://other\") \"Try Remote.\"\r\n",
		"NO (X-FOO (1 \"two\" (3 a))) \"m\"\r\n",
		"\"vacation\" ACTIVE\r\n\"old\"\r\n{5}\r\nnäme\r\nOK\r\n",
		"{9}\r\nkeep;\r\n.\n\r\nOK\r\n",
		"NO \"a \\\"b\\\" \\\\c\"\r\n",
		"\"\"\r\n",
		"{2000000}\r\n",
		"NO (\"x\")\r\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := newReader(bytes.NewReader(in))
		for range 3 { // replies follow each other on one stream
			resp, err := readResponse(r)
			if err != nil {
				return
			}
			if r.left < 0 || len(resp.data) > maxDataLines {
				t.Fatalf("limits broken: left %d, %d data lines", r.left, len(resp.data))
			}
			// Every parser over data lines takes any accepted reply.
			parseCapabilities(resp.data)
			parseScripts(resp.data)
			_ = resp.err()
			if len(in) > maxLine/8 {
				continue // re-encoding grows strings; keep clear of the limits
			}

			// Property: what we accepted reads back the same. Codes are
			// rendered for people (Go quoting), so they are compared
			// only when their rendering is itself a valid reply.
			code := resp.code
			resp.code = ""
			again, err := readResponse(newReader(bytes.NewReader(encodeResponse(resp))))
			if err != nil || !reflect.DeepEqual(again, resp) {
				t.Fatalf("accepted %q as %+v; re-encoded it reads as %+v, %v", in, resp, again, err)
			}
			resp.code = code
			if again, err := readResponse(newReader(bytes.NewReader(encodeResponse(resp)))); err == nil && again.code != code {
				t.Fatalf("code %q re-reads as %q", code, again.code)
			}
		}
	})
}

// encodeResponse writes a reply as a server could: strings as literals,
// which carry any bytes.
func encodeResponse(resp *response) []byte {
	var b []byte
	line := func(toks []token) {
		for i, t := range toks {
			if i > 0 {
				b = append(b, ' ')
			}
			switch t.kind {
			case tAtom:
				b = append(b, t.val...)
			case tString:
				b = append(b, '{')
				b = strconv.AppendInt(b, int64(len(t.val)), 10)
				b = append(b, "}\r\n"...)
				b = append(b, t.val...)
			case tOpen:
				b = append(b, '(')
			case tClose:
				b = append(b, ')')
			}
		}
		b = append(b, "\r\n"...)
	}
	for _, l := range resp.data {
		line(l)
	}
	final := []token{{tAtom, resp.kind}}
	if resp.code != "" {
		b = append(b, resp.kind+" ("+resp.code+")"...)
		final = final[:0]
	}
	if resp.msg != "" {
		final = append(final, token{tString, resp.msg})
	}
	if resp.code != "" && len(final) > 0 {
		b = append(b, ' ')
	}
	line(final)
	return b
}
