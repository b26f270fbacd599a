package events

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
)

// seedBodies are the testdata event bodies: the verified payloads of
// events-anchors §1.3 and the events of the actions it lists.
func seedBodies(f *testing.F) [][]byte {
	f.Helper()
	files, err := filepath.Glob("testdata/events/*.json")
	if err != nil || len(files) == 0 {
		f.Fatalf("no seeds: %v", err)
	}
	var out [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

func FuzzDatagram(f *testing.F) {
	for _, b := range seedBodies(f) {
		f.Add(wire(b))
	}
	dgrams, _ := filepath.Glob("testdata/datagrams/*.bin")
	for _, name := range dgrams {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("m\x00EVENT\x00\x00\x00\x003\x00a\x00b\x00c\x00{}\x00/f\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		d, err := DecodeDatagram(in)
		class, peeked := peekClass(in)
		if err != nil {
			if !errors.Is(err, ErrDatagramFraming) && !errors.Is(err, ErrDatagramTooLarge) {
				t.Fatalf("unnamed error %v", err)
			}
			return
		}
		// The reader's cheap look agrees with the full decode.
		if !peeked || string(class) != d.Class {
			t.Fatalf("peekClass = %q, %v; DecodeDatagram class %q", class, peeked, d.Class)
		}
		// Property: re-encoding gives back a prefix of the input.
		var out bytes.Buffer
		for _, s := range []string{d.Method, d.Class, d.Priority, d.User, d.Mailbox} {
			out.WriteString(s + "\x00")
		}
		out.WriteString(strconv.Itoa(len(d.Options)) + "\x00")
		for _, o := range d.Options {
			out.WriteString(o + "\x00")
		}
		out.Write(d.Message)
		out.WriteByte(0)
		if !bytes.HasPrefix(in, out.Bytes()) {
			t.Fatalf("accepted %q, re-encodes as %q", in, out.Bytes())
		}
	})
}

func FuzzParse(f *testing.F) {
	for _, b := range seedBodies(f) {
		f.Add(b)
	}
	p := testParser(f, nil)
	f.Fuzz(func(t *testing.T, body []byte) {
		evs, err := p.Parse(body, testReceived)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrIgnored) {
				t.Fatalf("unnamed error %v", err)
			}
			if evs != nil {
				t.Fatalf("events with an error: %v", evs)
			}
			return
		}
		if len(evs) == 0 || len(evs) > 2 {
			t.Fatalf("%d events", len(evs))
		}
		for _, ev := range evs {
			checkInvariants(t, ev)
			if ev.Type == "" || ev.Mailbox == "" || ev.CyrusEvent == "" {
				t.Fatalf("incomplete event %+v", ev)
			}
			if slices.Contains(ev.Readers, "") {
				t.Fatalf("empty reader in %q", ev.Readers)
			}
		}
	})
}
