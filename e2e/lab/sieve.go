package lab

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"time"
)

// SieveAuth opens a ManageSieve session (RFC 5804), waits for the
// capabilities, sends AUTHENTICATE "PLAIN" with the base64 initial
// response resp and returns the server's final line (OK, NO or BYE ...).
// After an OK it runs LISTSCRIPTS, which needs an authenticated session,
// and logs out. It returns errors rather than failing a test, for use in
// goroutines.
func SieveAuth(addr, resp string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second)) // fresh conn: cannot fail
	r := bufio.NewReader(conn)
	final := func() (string, error) {
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			if l = strings.TrimRight(l, "\r\n"); strings.HasPrefix(l, "OK") ||
				strings.HasPrefix(l, "NO") || strings.HasPrefix(l, "BYE") {
				return l, nil
			}
		}
	}
	if l, err := final(); err != nil || !strings.HasPrefix(l, "OK") {
		return "", fmt.Errorf("managesieve capabilities: %q, %v", l, err)
	}
	// A failed write shows up as the read error that follows.
	fmt.Fprintf(conn, "AUTHENTICATE \"PLAIN\" \"%s\"\r\n", resp)
	l, err := final()
	if err != nil || !strings.HasPrefix(l, "OK") {
		return l, err
	}
	fmt.Fprintf(conn, "LISTSCRIPTS\r\n")
	if ls, err := final(); err != nil || !strings.HasPrefix(ls, "OK") {
		return "", fmt.Errorf("managesieve LISTSCRIPTS after %q: %q, %v", l, ls, err)
	}
	fmt.Fprintf(conn, "LOGOUT\r\n")
	return l, nil
}
