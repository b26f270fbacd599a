package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// listenFDsStart is SD_LISTEN_FDS_START: systemd passes sockets from fd 3.
const listenFDsStart = 3

// activationNames are the FileDescriptorName= values serve understands,
// one per service that listens; the .socket units in systemd/ set them.
var activationNames = []string{"saslauthd", "lmtp", "socketmap", "events"}

// passedSockets are the sockets systemd passed, by FileDescriptorName=:
// listening stream sockets, and datagram sockets (ListenDatagram=, the
// events service's notify socket).
type passedSockets struct {
	streams map[string][]net.Listener
	dgrams  map[string][]net.PacketConn
}

func (p passedSockets) close(name string) {
	for _, ln := range p.streams[name] {
		ln.Close()
	}
	for _, pc := range p.dgrams[name] {
		pc.Close()
	}
}

func (p passedSockets) names() []string {
	var out []string
	for n := range p.streams {
		out = append(out, n)
	}
	for n := range p.dgrams {
		if _, dup := p.streams[n]; !dup {
			out = append(out, n)
		}
	}
	return out
}

// listenFDs takes the listening sockets systemd passed (sd_listen_fds(3)
// with names, sd_listen_fds_with_names(3)) and returns them by
// FileDescriptorName=. It returns nil when none were passed to this
// process: LISTEN_PID must be our pid, so a child never takes its parent's
// sockets. Like sd_listen_fds(…, unset_environment=1) it removes LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES from the environment, and it marks the
// descriptors close-on-exec.
func listenFDs(getenv func(string) string) (passedSockets, error) {
	pid, fds, names := getenv("LISTEN_PID"), getenv("LISTEN_FDS"), getenv("LISTEN_FDNAMES")
	out := passedSockets{streams: map[string][]net.Listener{}, dgrams: map[string][]net.PacketConn{}}
	if fds == "" {
		return out, nil
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return out, nil // meant for another process
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return out, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a count", fds)
	}
	var nameOf []string
	if names != "" {
		nameOf = strings.Split(names, ":")
	}
	closeAll := func() {
		for _, name := range out.names() {
			out.close(name)
		}
	}
	for i := range n {
		fd := listenFDsStart + i
		syscall.CloseOnExec(fd)
		name := "unknown" // systemd's name when FileDescriptorName= is unset
		if i < len(nameOf) && nameOf[i] != "" {
			name = nameOf[i]
		}
		f := os.NewFile(uintptr(fd), name)
		typ, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE)
		if err == nil && typ == syscall.SOCK_DGRAM {
			var pc net.PacketConn
			pc, err = net.FilePacketConn(f) // a duplicate; f is closed below
			if err == nil {
				out.dgrams[name] = append(out.dgrams[name], pc)
			}
		} else {
			var ln net.Listener
			ln, err = net.FileListener(f)
			if err == nil {
				out.streams[name] = append(out.streams[name], ln)
			}
		}
		f.Close()
		if err != nil {
			closeAll()
			return passedSockets{}, fmt.Errorf("socket activation: descriptor %d (%s) is neither a listening stream socket nor a datagram socket: %w", fd, name, err)
		}
	}
	return out, nil
}
