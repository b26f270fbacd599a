package lab

import (
	"bytes"
	"errors"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// devLog is where syslog(3) sends; glibc has the path compiled in.
	devLog = "/dev/log"
	// maxSyslogDatagram bounds one syslog line; RFC 5426 §3.2 asks
	// receivers to take at least 2048 bytes.
	maxSyslogDatagram = 64 << 10
	// syslogTakeover is how often a lab whose /dev/log is served by another
	// lab checks whether that lab has gone and it must serve it instead;
	// lines sent in between are lost. A check is one failed connect.
	syslogTakeover = 20 * time.Millisecond
	// syslogDrain is how long a stopping lab keeps reading /dev/log after
	// removing it, for lines already queued or sent on connected sockets.
	// Being longer than syslogTakeover, it lets another lab bind the new
	// /dev/log before senders find the old one closed and reconnect.
	syslogDrain = 100 * time.Millisecond
	// syslogFile is each lab's syslog file, relative to the lab directory;
	// syslogOther gets the lines of no lab, from the lab that serves /dev/log.
	syslogFile  = "log/syslog"
	syslogOther = "log/syslog.other"
)

// syslogIdent finds the syslog_prefix in a line as glibc's syslog(3)
// writes it: "<PRI>Mmm dd hh:mm:ss prefix/service[pid]: text".
var syslogIdent = regexp.MustCompile(`^<\d+>\w{3} [ \d]\d \d\d:\d\d:\d\d ([A-Za-z0-9]+)/`)

// syslogCatcher makes sure /dev/log is served while its lab runs. Cyrus logs
// only through syslog (facts, pitfall 3) and a container has no syslogd.
//
// /dev/log is one socket for the whole machine, so labs share it: whichever
// lab serves it (in this or another test process) appends each line to the
// syslog file of the lab whose syslog_prefix (the lab directory's name) it
// carries, and other lines to its own log/syslog.other. When the serving
// lab stops it removes /dev/log, and another running lab takes over within
// syslogTakeover. A real syslogd, if one runs, is left alone.
type syslogCatcher struct {
	labDir string
	stopc  chan struct{}
	wg     sync.WaitGroup

	mu      sync.Mutex
	stopped bool
	conn    *net.UnixConn // non-nil while this lab serves /dev/log
	ino     uint64        // its inode, to remove it only if it is still ours
}

// startSyslog creates <labDir>/log/syslog and makes sure /dev/log is served
// before it returns, so that no start-up line is lost.
func startSyslog(t testing.TB, labDir string) *syslogCatcher {
	t.Helper()
	mkdirs(t, labDir, 0o755, ids{0, 0}, filepath.Dir(syslogFile))
	writeFile(t, filepath.Join(labDir, syslogFile), "", 0o644)
	writeFile(t, filepath.Join(labDir, syslogOther), "", 0o644)
	s := &syslogCatcher{labDir: labDir, stopc: make(chan struct{})}
	if err := s.serve(); err != nil {
		t.Logf("syslog catcher: %v; Cyrus's syslog lines may be lost", err)
	}
	s.wg.Go(func() {
		tick := time.NewTicker(syslogTakeover)
		defer tick.Stop()
		for {
			select {
			case <-s.stopc:
				return
			case <-tick.C:
				_ = s.serve() // retried on the next tick
			}
		}
	})
	return s
}

// serve starts serving /dev/log unless this lab or someone else does.
func (s *syslogCatcher) serve() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.conn != nil {
		return nil
	}
	if c, err := net.Dial("unixgram", devLog); err == nil {
		c.Close()
		return nil // served by syslogd or another lab
	}
	// Nobody answers: replace a stale socket left by a killed test. Losing
	// a race to another lab (EADDRINUSE) means that lab serves it.
	if fi, err := os.Lstat(devLog); err == nil && fi.Mode()&os.ModeSocket != 0 {
		_ = os.Remove(devLog) // another lab may have removed it first
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: devLog, Net: "unixgram"})
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil // another lab was quicker and serves it
	} else if err != nil {
		return err
	}
	// Cyrus's processes run as user cyrus and must be able to send.
	if err := os.Chmod(devLog, 0o666); err != nil {
		conn.Close()
		return err
	}
	s.conn, s.ino = conn, inode(devLog)
	s.wg.Go(func() { s.read(conn) })
	return nil
}

// read routes datagrams until conn is closed.
func (s *syslogCatcher) read(conn *net.UnixConn) {
	buf := make([]byte, maxSyslogDatagram)
	for {
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			return // drained by stop
		}
		line := append(bytes.TrimRight(buf[:n], "\n"), '\n')
		path := filepath.Join(s.labDir, syslogOther)
		if m := syslogIdent.FindSubmatch(line); m != nil {
			if p := labSyslog(string(m[1])); p != "" {
				path = p
			}
		}
		appendLine(path, line)
	}
}

// labSyslog finds the syslog file of the lab named prefix, which exists only
// while that lab runs, in any of the places newLabDir uses.
func labSyslog(prefix string) string {
	for _, base := range []string{os.TempDir(), "/tmp"} {
		p := filepath.Join(base, prefix, syslogFile)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// appendLine appends to an existing file; it never creates one, so that a
// late line cannot bring back a removed lab directory.
func appendLine(path string, line []byte) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return // the lab is gone; the line has no reader
	}
	defer f.Close()
	_, _ = f.Write(line) // as above
}

// stop (idempotent) ends the takeover loop, closes the socket, waits for every goroutine
// and removes /dev/log if this lab created it and it was not replaced since.
func (s *syslogCatcher) stop() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.stopped = true
	close(s.stopc)
	conn := s.conn
	if conn != nil && inode(devLog) == s.ino {
		_ = os.Remove(devLog) // gone already is fine
	}
	s.mu.Unlock()
	if conn != nil {
		// The reader drains until the deadline, then ends.
		_ = conn.SetReadDeadline(time.Now().Add(syslogDrain)) // fails only if closed
	}
	s.wg.Wait()
	if conn != nil {
		conn.Close()
	}
}

// lines returns the last lines of this lab's syslog file.
func (s *syslogCatcher) lines() string {
	return tail(filepath.Join(s.labDir, syslogFile), 80)
}

// inode returns path's inode number, 0 when it does not exist.
func inode(path string) uint64 {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}
