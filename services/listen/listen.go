// Package listen opens the sockets the services serve on: "unix:/path" with
// the configured mode and group, or loopback "host:port". It is shared
// plumbing, not a service.
package listen

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxSunPath is sun_path's size on Linux less the terminating NUL.
const maxSunPath = 107

// Check explains what is wrong with an address, or returns "".
func Check(a string) string {
	if a == "" {
		return "must be set: \"unix:/absolute/path\" or \"host:port\""
	}
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		if !filepath.IsAbs(p) {
			return fmt.Sprintf("UNIX socket path must be absolute, got %q", p)
		}
		if len(p) > maxSunPath {
			return fmt.Sprintf("UNIX socket path is %d bytes, the limit is %d", len(p), maxSunPath)
		}
		return ""
	}
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" {
		return fmt.Sprintf("must be \"unix:/absolute/path\" or \"host:port\", got %q", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("port must be 1 to 65535, got %q", port)
	}
	return ""
}

// CheckListen is Check for an address to listen on: TCP only on loopback.
// The services answer who exists and who may log in; on a public address
// they would tell the network (and LMTP would take mail from it).
func CheckListen(a string) string {
	if msg := Check(a); msg != "" {
		return msg
	}
	if network, addr := Split(a); network == "tcp" {
		host, _, _ := net.SplitHostPort(addr)
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return fmt.Sprintf("must be a loopback address (127.0.0.1, [::1], localhost) or a UNIX socket, got %q", a)
		}
	}
	return ""
}

// Split returns the network and address for net.Dial and net.Listen.
func Split(a string) (network, address string) {
	if p, ok := strings.CutPrefix(a, "unix:"); ok {
		return "unix", p
	}
	return "tcp", a
}

// Mode parses an octal permission string such as "0660".
func Mode(s string) (os.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("must be an octal mode such as \"0660\", got %q", s)
	}
	return os.FileMode(n), nil
}

// Options are what a UNIX socket gets after bind.
type Options struct {
	Mode  os.FileMode // 0 = leave as created
	Group string      // "" = leave as created
}

// Listen binds a. For a UNIX socket it removes a stale socket file left by a
// crash, refuses to start when a live process answers on it, creates the
// directory, and applies the mode and group, so that the peer's user (cyrus,
// postfix) can connect and nobody else can.
func Listen(a string, opt Options) (net.Listener, error) {
	network, addr := Split(a)
	if network == "tcp" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen %s: %w", a, err)
		}
		return ln, nil
	}
	if err := os.MkdirAll(filepath.Dir(addr), 0o755); err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	if fi, err := os.Lstat(addr); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen %s: %s exists and is not a socket", a, addr)
		}
		c, err := net.DialTimeout("unix", addr, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process is serving this socket", a)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("listen %s: probing the existing socket: %w", a, err)
		}
		if err := os.Remove(addr); err != nil {
			return nil, fmt.Errorf("listen %s: removing the stale socket: %w", a, err)
		}
	}
	ln, err := net.Listen("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	// Close removes the file; a restart must not find it in the way.
	ln.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := apply(addr, opt); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen %s: %w", a, err)
	}
	return ln, nil
}

// ListenAll binds every address of a service's listen list with one socket
// mode and group (mode as configured, "0660"), logging each; on an error it
// closes what it had bound.
func ListenAll(addrs []string, mode, group string, log *slog.Logger) ([]net.Listener, error) {
	m, err := Mode(mode)
	if err != nil {
		return nil, err
	}
	var lns []net.Listener
	for _, a := range addrs {
		ln, err := Listen(a, Options{Mode: m, Group: group})
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, err
		}
		lns = append(lns, ln)
		log.Info("listening", "addr", a)
	}
	return lns, nil
}

func apply(path string, opt Options) error {
	if opt.Group != "" {
		g, err := user.LookupGroup(opt.Group)
		if err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
		gid, err := strconv.Atoi(g.Gid)
		if err != nil {
			return fmt.Errorf("socket group %s: %w", opt.Group, err)
		}
		if err := os.Chown(path, -1, gid); err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
	}
	if opt.Mode != 0 {
		if err := os.Chmod(path, opt.Mode); err != nil {
			return fmt.Errorf("socket mode: %w", err)
		}
	}
	return nil
}
