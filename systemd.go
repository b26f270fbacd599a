package main

import (
	"log/slog"
	"net"
	"strings"
)

// notifier sends sd_notify(3) messages to $NOTIFY_SOCKET: READY=1 once every
// listener is bound, RELOADING=1 around a reload, STOPPING=1 on shutdown.
// Without $NOTIFY_SOCKET (not under systemd) it does nothing. A dozen lines
// of protocol, so no library.
type notifier struct {
	addr *net.UnixAddr
	log  *slog.Logger
}

func newNotifier(socket string, log *slog.Logger) *notifier {
	n := &notifier{log: log}
	if socket == "" {
		return n
	}
	// A leading '@' names a Linux abstract socket; Go spells it the same way.
	if !strings.HasPrefix(socket, "/") && !strings.HasPrefix(socket, "@") {
		log.Warn("NOTIFY_SOCKET is neither a path nor an abstract socket, ignoring it", "notify_socket", socket)
		return n
	}
	n.addr = &net.UnixAddr{Name: socket, Net: "unixgram"}
	return n
}

// notify sends one state message. Failure is logged, never fatal: systemd
// will time the unit out if READY=1 never arrives.
func (n *notifier) notify(state string) {
	if n.addr == nil {
		return
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		n.log.Warn("sd_notify", "err", err)
		return
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		n.log.Warn("sd_notify", "err", err)
	}
}
