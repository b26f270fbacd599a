package main

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// notifier sends sd_notify(3) messages to $NOTIFY_SOCKET: READY=1 once every
// listener is bound, RELOADING=1 around a reload, STOPPING=1 on shutdown,
// WATCHDOG=1 while the self-check passes.
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

// watchdogInterval is how often to send WATCHDOG=1: half of $WATCHDOG_USEC
// (sd_watchdog_enabled(3)), or 0 when systemd expects no pings (unset, or
// $WATCHDOG_PID names another process).
func watchdogInterval(getenv func(string) string) time.Duration {
	usec, err := strconv.ParseInt(getenv("WATCHDOG_USEC"), 10, 64)
	if err != nil || usec <= 0 {
		return 0
	}
	if pid := getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

// watchdog sends WATCHDOG=1 every interval until ctx is done, but only
// when check passes within the interval: a process that is alive but
// cannot serve (a stopped service loop, a store that does not answer)
// stops pinging and systemd restarts it after WatchdogSec. A check that
// hangs past the interval counts as failing, and no second one starts
// until it returns (a check stuck for good outlives watchdog, as the
// process does not: systemd kills it).
func (n *notifier) watchdog(ctx context.Context, every time.Duration, check func(context.Context) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	var pending chan error // the check still running, if any
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if pending == nil {
			pending = make(chan error, 1)
			go func(c chan<- error) {
				cctx, cancel := context.WithTimeout(ctx, every/2)
				defer cancel()
				c <- check(cctx)
			}(pending)
		}
		var err error
		select {
		case err = <-pending:
			pending = nil
		case <-time.After(every / 2):
			err = context.DeadlineExceeded
		case <-ctx.Done():
			return
		}
		if err != nil {
			if !failing {
				n.log.Error("self-check failed, withholding watchdog pings", "err", err)
			}
			failing = true
			continue
		}
		if failing {
			n.log.Info("self-check passes again, watchdog pings resume")
		}
		failing = false
		n.notify("WATCHDOG=1")
	}
}
