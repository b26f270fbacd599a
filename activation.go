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
var activationNames = []string{"saslauthd", "lmtp", "socketmap"}

// listenFDs takes the listening sockets systemd passed (sd_listen_fds(3)
// with names, sd_listen_fds_with_names(3)) and returns them by
// FileDescriptorName=. It returns nil when none were passed to this
// process: LISTEN_PID must be our pid, so a child never takes its parent's
// sockets. Like sd_listen_fds(…, unset_environment=1) it removes LISTEN_PID,
// LISTEN_FDS and LISTEN_FDNAMES from the environment, and it marks the
// descriptors close-on-exec.
func listenFDs(getenv func(string) string) (map[string][]net.Listener, error) {
	pid, fds, names := getenv("LISTEN_PID"), getenv("LISTEN_FDS"), getenv("LISTEN_FDNAMES")
	if fds == "" {
		return nil, nil
	}
	for _, k := range []string{"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} {
		os.Unsetenv(k)
	}
	if p, err := strconv.Atoi(pid); err != nil || p != os.Getpid() {
		return nil, nil // meant for another process
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a count", fds)
	}
	var nameOf []string
	if names != "" {
		nameOf = strings.Split(names, ":")
	}
	out := make(map[string][]net.Listener)
	closeAll := func() {
		for _, lns := range out {
			for _, ln := range lns {
				ln.Close()
			}
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
		ln, err := net.FileListener(f) // a duplicate; f is closed below
		f.Close()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("socket activation: descriptor %d (%s) is not a listening stream socket: %w", fd, name, err)
		}
		out[name] = append(out[name], ln)
	}
	return out, nil
}
