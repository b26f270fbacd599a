package events

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"cyrus-sidecar/services/listen"
)

const (
	// maxDirty bounds the mailbox URLs remembered from overflow drops;
	// past it, everything is marked for re-check.
	maxDirty = 4096
	// relayWarnEvery rate-limits the warning about a failing relay: Sieve
	// notify may send many datagrams while notifyd is away.
	relayWarnEvery = time.Minute
	// maxSunPath is sun_path's size on Linux less the terminating NUL.
	maxSunPath = 107
)

// IngestConfig is the ingest part of the [events] section.
type IngestConfig struct {
	// Socket is where Cyrus sends events: imapd.conf's notifysocket
	// (a datagram socket; the dlist: transport is not supported).
	Socket      string `toml:"socket"`
	SocketMode  string `toml:"socket_mode"`
	SocketGroup string `toml:"socket_group"`
	// CyrusUser is the user Cyrus's services run as; datagrams from any
	// other uid are dropped (local users could otherwise fake events).
	CyrusUser string `toml:"cyrus_user"`
	// RelaySocket is notifyd's socket, moved aside in cyrus.conf
	// (events-anchors §1.7); non-EVENT datagrams (Sieve notify,
	// mailnotifier) go there unchanged. "" drops them, counted.
	RelaySocket string `toml:"relay_socket"`
	// RingSize and RingBytes bound the datagrams held between the reader
	// and the parser; beyond either, datagrams are dropped and their
	// accounts marked for re-check rather than slowing Cyrus down (B5).
	RingSize  int `toml:"ring_size"`
	RingBytes int `toml:"ring_bytes"`
	// ReceiveBuffer is asked for as SO_RCVBUF (SO_RCVBUFFORCE when
	// permitted), best effort. For AF_UNIX datagrams the kernel queue is
	// bounded mainly by net.unix.max_dgram_qlen (§1.5 B5).
	ReceiveBuffer int `toml:"receive_buffer"`
}

// DefaultIngestConfig binds notify in runtimeDir with the layout of
// events-anchors §1.7 (Debian's notifyd moved to /run/cyrus/socket/notifyd).
func DefaultIngestConfig(runtimeDir string) IngestConfig {
	return IngestConfig{
		Socket:        filepath.Join(runtimeDir, "notify"),
		SocketMode:    "0660",
		SocketGroup:   "mail",
		CyrusUser:     "cyrus",
		RelaySocket:   "/run/cyrus/socket/notifyd",
		RingSize:      8192,
		RingBytes:     32 << 20,
		ReceiveBuffer: 4 << 20,
	}
}

// Validate returns every problem as "key: message" lines, joined.
func (c IngestConfig) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	checkPath := func(key, p string) {
		if !filepath.IsAbs(p) {
			bad(key, "must be an absolute path, got %q", p)
		} else if len(p) > maxSunPath {
			bad(key, "socket path is %d bytes, the limit is %d", len(p), maxSunPath)
		}
	}
	checkPath("socket", c.Socket)
	if _, err := listen.Mode(c.SocketMode); err != nil {
		bad("socket_mode", "%v", err)
	}
	if c.CyrusUser == "" {
		bad("cyrus_user", "must name the user Cyrus runs as, such as \"cyrus\"")
	}
	if c.RelaySocket != "" {
		checkPath("relay_socket", c.RelaySocket)
		if filepath.Clean(c.RelaySocket) == filepath.Clean(c.Socket) {
			bad("relay_socket", "must differ from socket (it would relay to itself)")
		}
	}
	if c.RingSize < 16 || c.RingSize > 1_000_000 {
		bad("ring_size", "must be between 16 and 1000000, got %d", c.RingSize)
	}
	if c.RingBytes < MaxDatagram || c.RingBytes > 1<<30 {
		bad("ring_bytes", "must be between %d and %d, got %d", MaxDatagram, 1<<30, c.RingBytes)
	}
	if c.ReceiveBuffer < 0 || c.ReceiveBuffer > 256<<20 {
		bad("receive_buffer", "must be between 0 (leave as is) and %d, got %d", 256<<20, c.ReceiveBuffer)
	}
	return errors.Join(errs...)
}

// LookupUID resolves the user Cyrus runs as (IngestConfig.CyrusUser).
func LookupUID(name string) (int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, fmt.Errorf("cyrus user: %w", err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return 0, fmt.Errorf("cyrus user %s: uid %q: %w", name, u.Uid, err)
	}
	return uid, nil
}

// Raw is one event datagram as received, before parsing.
type Raw struct {
	Data     []byte // the whole datagram (DecodeDatagram's input)
	Received time.Time
}

// Dirty says which accounts lost events to overflow since the last
// TakeDirty: the reconciler re-checks them.
type Dirty struct {
	Accounts []string // owners of mailboxes whose events were dropped, sorted
	Shared   bool     // a shared folder's event was dropped
	All      bool     // a dropped event named no mailbox we could read: re-check everyone
}

// Ingest owns notifysocket: a reader that only copies datagrams from
// Cyrus into a bounded ring (and relays other classes to notifyd), and a
// consumer side (Next, Pump). Cyrus blocks, holding the mailbox lock,
// while the socket's queue is full (events-anchors §1.5 B5), so the reader
// never waits for anything: when the ring is full it drops and remembers.
type Ingest struct {
	cfg   IngestConfig
	uid   int
	log   *slog.Logger
	conn  *net.UnixConn
	owned bool // we bound the path: remove it on Close
	relay *relay
	ring  chan Raw
	bytes atomic.Int64 // bytes held in ring

	closeOnce sync.Once

	mu       sync.Mutex
	dirty    map[string]struct{} // mailbox URLs of dropped events
	dirtyAll bool
}

// NewIngest returns an Ingest accepting datagrams only from allowedUID
// (Cyrus's, see LookupUID). Nothing is bound until Listen or UseConn.
func NewIngest(cfg IngestConfig, allowedUID int, log *slog.Logger) (*Ingest, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("events ingest: %w", err)
	}
	return &Ingest{cfg: cfg, uid: allowedUID, log: log,
		ring: make(chan Raw, cfg.RingSize), dirty: map[string]struct{}{}}, nil
}

// Listen binds cfg.Socket as a datagram socket with the configured mode
// and group, replacing a stale socket file left by a crash and refusing
// to start when another process serves it.
func (in *Ingest) Listen() error {
	path := in.cfg.Socket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if err := removeStale(path); err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	in.owned = true
	if err := in.UseConn(conn); err != nil {
		in.Close()
		return err
	}
	// Cyrus (user cyrus, group mail) must write; other local users not.
	if err := applyModeGroup(path, in.cfg.SocketMode, in.cfg.SocketGroup); err != nil {
		in.Close()
		return fmt.Errorf("listen %s: %w", path, err)
	}
	in.log.Info("listening", "addr", "unixgram:"+path)
	return nil
}

// UseConn takes a datagram socket bound by someone else: systemd socket
// activation (ListenDatagram=, ideally with PassCredentials=yes), so that
// Cyrus's events queue in the kernel while the sidecar restarts. It turns
// SO_PASSCRED on and opens the relay socket.
func (in *Ingest) UseConn(conn *net.UnixConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("events socket: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		// SO_PASSCRED: the kernel attaches the sender's credentials to
		// every datagram (unix(7)); a datagram queued before this was set
		// carries none and is dropped as "uid".
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		if serr != nil || in.cfg.ReceiveBuffer == 0 {
			return
		}
		// Best effort: FORCE needs CAP_NET_ADMIN, plain SO_RCVBUF is
		// capped by net.core.rmem_max.
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, in.cfg.ReceiveBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, in.cfg.ReceiveBuffer) // best effort, see above
		}
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("events socket: SO_PASSCRED: %w", err)
	}
	in.conn = conn
	if in.cfg.RelaySocket != "" && in.relay == nil {
		r, err := newRelay(in.cfg.RelaySocket)
		if err != nil {
			return fmt.Errorf("events relay: %w", err)
		}
		in.relay = r
	}
	return nil
}

// Addr is the bound socket's path.
func (in *Ingest) Addr() string {
	if in.conn == nil {
		return ""
	}
	return in.conn.LocalAddr().String()
}

// Close closes the socket (removing it if Listen bound it) and the relay.
// Run calls it when its context ends; more calls do nothing.
func (in *Ingest) Close() error {
	var err error
	in.closeOnce.Do(func() {
		if in.conn != nil {
			err = in.conn.Close()
			if in.owned {
				os.Remove(in.cfg.Socket) // a restart binds it afresh; gone already is fine
			}
		}
		if in.relay != nil {
			in.relay.close()
		}
	})
	return err
}

// Run is the reader: it copies datagrams into the ring until ctx ends,
// then closes the socket and returns nil.
func (in *Ingest) Run(ctx context.Context) error {
	if in.conn == nil {
		return errors.New("events ingest: Run before Listen")
	}
	stop := context.AfterFunc(ctx, func() { in.Close() })
	defer stop()
	buf := make([]byte, MaxDatagram+1) // one more: a longer datagram shows as too long
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	var lastRelayWarn time.Time
	for {
		n, oobn, flags, _, err := in.conn.ReadMsgUnix(buf, oob)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, net.ErrClosed) {
			return nil // Close was called
		}
		if err != nil {
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) {
				continue // transient: keep reading, Cyrus is waiting
			}
			return fmt.Errorf("events socket read: %w", err)
		}
		now := time.Now()
		if uid, ok := senderUID(oob[:oobn]); !ok || int64(uid) != int64(in.uid) {
			droppedUID.Inc()
			continue
		}
		if flags&unix.MSG_TRUNC != 0 || n > MaxDatagram {
			droppedMalformed.Inc()
			continue
		}
		b := buf[:n]
		class, ok := peekClass(b)
		if !ok {
			droppedMalformed.Inc()
			continue
		}
		if string(class) != ClassEvent {
			if err := in.forward(b); err != nil && now.Sub(lastRelayWarn) >= relayWarnEvery {
				lastRelayWarn = now
				in.log.Warn("relay to notifyd failed; Sieve notify and mailnotifier messages are lost",
					"relay_socket", in.cfg.RelaySocket, "class", truncPeer(class), "err", err)
			}
			continue
		}
		evReceived.Inc()
		in.enqueue(b, now)
	}
}

// enqueue copies b into the ring, or drops it and marks its accounts.
func (in *Ingest) enqueue(b []byte, now time.Time) {
	if in.bytes.Add(int64(len(b))) > int64(in.cfg.RingBytes) {
		in.bytes.Add(-int64(len(b)))
		in.overflow(b)
		return
	}
	select {
	case in.ring <- Raw{Data: bytes.Clone(b), Received: now}:
	default:
		in.bytes.Add(-int64(len(b)))
		in.overflow(b)
	}
}

// overflow counts a dropped event and remembers its mailboxes for
// TakeDirty: the uri and, for a move or rename, the oldMailboxID, found
// with a byte search rather than a JSON parse (this runs on the reader).
func (in *Ingest) overflow(b []byte) {
	droppedOverflow.Inc()
	uris := make([]string, 0, 2)
	all := false
	for _, key := range [...]string{`"uri":"`, `"oldMailboxID":"`} {
		u, found, ok := jsonStringAfter(b, key)
		switch {
		case !found && key == `"uri":"`:
			all = true
		case found && !ok:
			all = true
		case found:
			uris = append(uris, u)
		}
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, u := range uris {
		if len(in.dirty) >= maxDirty {
			all = true
			break
		}
		in.dirty[u] = struct{}{}
	}
	if all {
		in.dirtyAll = true
	}
}

// jsonStringAfter returns the plain JSON string value following key.
// ok is false when it has escapes or no end (not worth decoding here).
func jsonStringAfter(b []byte, key string) (s string, found, ok bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 {
		return "", false, false
	}
	rest := b[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 || j > maxURI || bytes.IndexByte(rest[:j], '\\') >= 0 {
		return "", true, false
	}
	return string(rest[:j]), true, true
}

// TakeDirty returns and forgets what overflow dropped since the last
// call, with the mailbox URLs mapped to accounts by p.
func (in *Ingest) TakeDirty(p *Parser) Dirty {
	in.mu.Lock()
	uris, all := in.dirty, in.dirtyAll
	in.dirty, in.dirtyAll = map[string]struct{}{}, false
	in.mu.Unlock()
	d := Dirty{All: all}
	for u := range uris {
		ref, err := p.ParseURI(u)
		switch {
		case errors.Is(err, ErrIgnored):
			// #sieve or a deleted mailbox: nothing a consumer sees.
		case err != nil:
			d.All = true
		case ref.Account == "":
			d.Shared = true
		default:
			d.Accounts = append(d.Accounts, ref.Account)
		}
	}
	slices.Sort(d.Accounts)
	d.Accounts = slices.Compact(d.Accounts)
	return d
}

// Next returns the next datagram from the ring, waiting until one arrives
// or ctx ends.
func (in *Ingest) Next(ctx context.Context) (Raw, error) {
	select {
	case r := <-in.ring:
		in.bytes.Add(-int64(len(r.Data)))
		return r, nil
	case <-ctx.Done():
		return Raw{}, ctx.Err()
	}
}

// Pump is the consumer loop: it parses each datagram with p, merges with c
// and hands the events to emit, flushing c's held events on time, until
// ctx ends (then it returns nil; held events are dropped, the reconciler
// covers them at the next start). emit runs on this goroutine: while it
// blocks, the ring fills and then drops.
func (in *Ingest) Pump(ctx context.Context, p *Parser, c *Coalescer, emit func(Event)) error {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if at, ok := c.Next(); ok {
			timer.Reset(time.Until(at))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case r := <-in.ring:
			in.bytes.Add(-int64(len(r.Data)))
			evs, err := p.ParseDatagram(r.Data, r.Received)
			if err != nil {
				// The reason only: bodies may hold subjects with some
				// event_extra_params, and never go to logs.
				in.log.Debug("event not passed on", "err", err)
				continue
			}
			now := time.Now()
			for _, ev := range evs {
				for _, out := range c.Add(ev, now) {
					emit(out)
				}
			}
		case <-timer.C:
			for _, out := range c.Flush(time.Now()) {
				emit(out)
			}
		}
	}
}

// forward relays a non-EVENT datagram to notifyd.
func (in *Ingest) forward(b []byte) error {
	if in.relay == nil {
		relayDisabled.Inc()
		return nil
	}
	if err := in.relay.send(b); err != nil {
		relayError.Inc()
		return err
	}
	relayOK.Inc()
	return nil
}

// senderUID returns the uid in an SCM_CREDENTIALS control message.
func senderUID(oob []byte) (uint32, bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for i := range msgs {
		if cred, err := unix.ParseUnixCredentials(&msgs[i]); err == nil {
			return cred.Uid, true
		}
	}
	return 0, false
}

// relay writes datagrams to notifyd's socket without ever waiting: an
// unconnected socket (notifyd may restart and rebind), MSG_DONTWAIT. The
// mutex (never contended but at Close) keeps a send from using a closed,
// possibly reused, descriptor.
type relay struct {
	mu     sync.Mutex
	fd     int
	closed bool
	addr   *unix.SockaddrUnix
}

func newRelay(path string) (*relay, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	return &relay{fd: fd, addr: &unix.SockaddrUnix{Name: path}}, nil
}

func (r *relay) send(b []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return net.ErrClosed
	}
	if err := unix.Sendto(r.fd, b, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, r.addr); err != nil {
		return fmt.Errorf("sendto %s: %w", r.addr.Name, err)
	}
	return nil
}

func (r *relay) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.closed = true
		unix.Close(r.fd)
	}
}

// removeStale removes a socket file nobody serves; it refuses a live one
// and anything that is not a socket.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	// connect(2) on a datagram socket succeeds only when someone has the
	// path bound; ECONNREFUSED means a file left by a crash.
	c, err := net.Dial("unixgram", path)
	if err == nil {
		c.Close()
		return errors.New("another process is bound to this socket (notifyd still configured on it?)")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("probing the existing socket: %w", err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("removing the stale socket: %w", err)
	}
	return nil
}

// applyModeGroup gives the socket its group and mode.
func applyModeGroup(path, mode, group string) error {
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("socket group %s: %w", group, err)
		}
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
	}
	m, err := listen.Mode(mode)
	if err != nil {
		return fmt.Errorf("socket mode: %w", err)
	}
	if err := os.Chmod(path, m); err != nil {
		return fmt.Errorf("socket mode: %w", err)
	}
	return nil
}
