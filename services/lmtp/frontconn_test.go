package lmtp

import (
	"net"
	"testing"
)

// recordConn is a net.Conn that records each Write.
type recordConn struct {
	net.Conn
	writes []string
}

func (r *recordConn) Write(p []byte) (int, error) {
	r.writes = append(r.writes, string(p))
	return len(p), nil
}

// TestFrontConnCoalescesReplies: go-smtp flushes each line of a multi-line
// reply; the client must get the reply in one write.
func TestFrontConnCoalescesReplies(t *testing.T) {
	rc := &recordConn{}
	fc := &frontConn{Conn: rc}
	for _, line := range []string{"250-Hello x\r\n", "250-PIPELINING\r\n", "250-8BITMIME\r\n", "250 SIZE 10\r\n",
		"220 ready\r\n", "550-Mailbox unknown.\r\n", "550 5.1.1 User unknown\r\n"} {
		if n, err := fc.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", line, n, err)
		}
	}
	want := []string{"250-Hello x\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10\r\n", "220 ready\r\n",
		"550-Mailbox unknown.\r\n550 5.1.1 User unknown\r\n"}
	if len(rc.writes) != len(want) {
		t.Fatalf("writes %q, want %q", rc.writes, want)
	}
	for i := range want {
		if rc.writes[i] != want[i] {
			t.Errorf("write %d = %q, want %q", i, rc.writes[i], want[i])
		}
	}
}

func TestIsContinuation(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"250-PIPELINING\r\n", true},
		{"250 PIPELINING\r\n", false},
		{"250-a\r\n250 b\r\n", false},
		{"250 a\r\n250-b\r\n", true},
		{"250-PIPELINING", false}, // a partial line goes out as it is
		{"25-x\r\n", false},
		{"abc-def\r\n", false},
		{"", false},
	} {
		if got := isContinuation([]byte(tc.in)); got != tc.want {
			t.Errorf("isContinuation(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
