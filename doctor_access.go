package main

// Who can reach which socket: the permission walk the kernel does on
// connect(2) to a UNIX socket, done for another user (cyrus, postfix), and
// the reading of Cyrus's imapd.conf.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Permission bits as access(2) and the mode's classes use them.
const (
	permRead   = 4
	permWrite  = 2
	permSearch = 1
)

// maxImapdConf bounds the imapd.conf read; Debian's, all comments, is
// about 100 KiB.
const maxImapdConf = 1 << 20

// accessible reports whether this process may use path as mode asks
// (permRead|permWrite...), by access(2) with the real user.
func accessible(path string, mode uint32) error {
	if err := unix.Access(path, mode); err != nil {
		return &fs.PathError{Op: "access", Path: path, Err: err}
	}
	return nil
}

// identity is a system user as the kernel checks it: uid and every group.
type identity struct {
	name  string
	uid   uint32
	group string   // primary group's name
	gids  []uint32 // primary and supplementary
}

// lookupIdentity resolves a system user and its groups (/etc/passwd and
// /etc/group, or NSS).
func lookupIdentity(name string) (identity, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return identity{}, err
	}
	id := identity{name: name}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return identity{}, fmt.Errorf("user %s: uid %q: %w", name, u.Uid, err)
	}
	id.uid = uint32(uid)
	id.group = u.Gid
	if g, err := user.LookupGroupId(u.Gid); err == nil {
		id.group = g.Name
	}
	groups, err := u.GroupIds()
	if err != nil {
		groups = []string{u.Gid} // the primary group at least
	}
	for _, g := range append(groups, u.Gid) {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			id.gids = append(id.gids, uint32(n))
		}
	}
	return id, nil
}

func (id identity) inGroup(gid uint32) bool {
	for _, g := range id.gids {
		if g == gid {
			return true
		}
	}
	return false
}

// may reports whether id may do want to a file with st's owner and mode,
// as the kernel decides without ACLs: the owner's bits for the owner, else
// the group's for a member, else the others'. Root may do anything.
func (id identity) may(st *syscall.Stat_t, want uint32) bool {
	if id.uid == 0 {
		return true
	}
	mode := st.Mode & 0o777
	var bits uint32
	switch {
	case st.Uid == id.uid:
		bits = mode >> 6
	case id.inGroup(st.Gid):
		bits = mode >> 3
	default:
		bits = mode
	}
	return bits&want == want
}

// blocker is the path component that keeps a user from a socket.
type blocker struct {
	path    string
	socket  bool // the socket itself (write), else a directory (search)
	missing bool
	st      *syscall.Stat_t
	acl     bool // it carries a POSIX ACL, which may allow what the mode bits refuse
}

// describe renders the component: "drwx------ root:root /run/x".
func (b *blocker) describe() string {
	if b.missing {
		return b.path + " does not exist"
	}
	s := fmt.Sprintf("%s %s %s:%s", b.path, fs.FileMode(b.st.Mode & 0o777).String()[1:], userName(b.st.Uid), groupName(b.st.Gid))
	if b.acl {
		s += " (has a POSIX ACL, not evaluated)"
	}
	return s
}

// reachSocket walks what connect(2) checks for id: search permission on
// each directory from / down, for the path as written and, when it runs
// through symbolic links, as resolved; then write permission on the
// socket. It returns the first component that stops id, or nil.
func reachSocket(path string, id identity) *blocker {
	paths := []string{filepath.Clean(path)}
	if real, err := filepath.EvalSymlinks(path); err == nil && real != paths[0] {
		paths = append(paths, real)
	}
	for _, p := range paths {
		if b := walkDirs(p, id); b != nil {
			return b
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return &blocker{path: path, socket: true, missing: true}
	}
	if !id.may(&st, permWrite) {
		return &blocker{path: path, socket: true, st: &st, acl: hasACL(path)}
	}
	return nil
}

// walkDirs checks search permission on every directory above p.
func walkDirs(p string, id identity) *blocker {
	var dirs []string
	for d := filepath.Dir(p); ; d = filepath.Dir(d) {
		dirs = append(dirs, d)
		if d == "/" || d == "." {
			break
		}
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		var st syscall.Stat_t
		if err := syscall.Stat(dirs[i], &st); err != nil {
			return &blocker{path: dirs[i], missing: true}
		}
		if !id.may(&st, permSearch) {
			// Name the directory itself, not a symbolic link to it: that
			// is the one to chmod.
			p := dirs[i]
			if real, err := filepath.EvalSymlinks(p); err == nil {
				p = real
			}
			return &blocker{path: p, st: &st, acl: hasACL(p)}
		}
	}
	return nil
}

// hasACL reports whether path carries an access ACL beyond its mode bits.
func hasACL(path string) bool {
	_, err := unix.Getxattr(path, "system.posix_acl_access", nil)
	return err == nil
}

// reachFixes are the commands that let id through b. section is the
// sidecar configuration section whose socket_mode and socket_group set the
// socket's permissions at each start, unit the systemd socket unit that
// does it under socket activation.
func reachFixes(b *blocker, id identity, section, unit string) []string {
	if b.missing {
		return nil // the serve check says why it is missing
	}
	group := groupName(b.st.Gid)
	if !b.socket {
		if b.st.Mode&0o010 != 0 && !id.inGroup(b.st.Gid) {
			return []string{fmt.Sprintf("usermod -a -G %s %s   (then restart what runs as %s), or: chmod o+x %s", group, id.name, id.name, b.path)}
		}
		return []string{"chmod o+x " + b.path + "   (search only: nobody can list it)"}
	}
	fixes := []string{fmt.Sprintf("chgrp %s %s && chmod 0660 %s   (until serve restarts; then:)", id.group, b.path, b.path),
		fmt.Sprintf("config: [%s] socket_mode = \"0660\"  socket_group = \"%s\"", section, id.group)}
	if unit != "" {
		fixes = append(fixes, fmt.Sprintf("with socket activation: SocketMode=0660 SocketGroup=%s in %s", id.group, unit))
	}
	return fixes
}

func userName(uid uint32) string {
	if u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10)); err == nil {
		return u.Username
	}
	return strconv.FormatUint(uint64(uid), 10)
}

func groupName(gid uint32) string {
	if g, err := user.LookupGroupId(strconv.FormatUint(uint64(gid), 10)); err == nil {
		return g.Name
	}
	return strconv.FormatUint(uint64(gid), 10)
}

// parseImapdConf reads imapd.conf's "key: value" lines (Cyrus's
// lib/libconfig.c: '#' starts a comment line, the key ends at the first
// ':', the value is trimmed). Keys are lower-cased, as Cyrus matches them.
func parseImapdConf(r io.Reader) (map[string]string, error) {
	conf := make(map[string]string)
	sc := bufio.NewScanner(io.LimitReader(r, maxImapdConf))
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: no ':' in %q", n, clip(line))
		}
		conf[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return conf, nil
}

// imapdBool reads a Cyrus switch: 1, t, true, y, yes, on (libconfig.c).
func imapdBool(v string) bool {
	switch strings.ToLower(v) {
	case "1", "t", "true", "y", "yes", "on":
		return true
	}
	return false
}

// isNotExist also covers a path running through a file (ENOTDIR).
func isNotExist(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}
