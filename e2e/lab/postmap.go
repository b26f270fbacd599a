package lab

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// postmapTimeout bounds one postmap run; a TEMP reply alone costs 1 s
// (facts §7).
const postmapTimeout = 30 * time.Second

// Postmap runs postfix's postmap from a private unpack (postfix conflicts
// with exim4, so it is never installed; .ci/install-peers unpacks it into
// <repo>/var/peers/postfix/root) with its own configuration directory.
type Postmap struct {
	Bin, ConfDir string
	env          []string
}

// NewPostmap finds postmap ($SIDECAR_POSTMAP, PATH, or the repository's
// unpack) and writes a main.cf that passes postmap's start-up checks:
// compatibility_level = 3.6, mail_owner = daemon, setgid_group = mail
// (facts pitfall 6).
func NewPostmap(t testing.TB) *Postmap {
	t.Helper()
	bin := Tool(t, "SIDECAR_POSTMAP", "postmap",
		filepath.Join(RepoRoot(t), "var/peers/postfix/root/usr/sbin"))
	dir := newLabDir(t, "pm")
	p := &Postmap{Bin: bin, ConfDir: dir}
	p.WriteTable(t, "main.cf", "compatibility_level = 3.6\nmail_owner = daemon\nsetgid_group = mail\n")
	// <root>/usr/sbin/postmap needs <root>/usr/lib/postfix/libpostfix-*.so.
	libs := filepath.Join(filepath.Dir(filepath.Dir(bin)), "lib/postfix")
	if old := os.Getenv("LD_LIBRARY_PATH"); old != "" {
		libs += ":" + old
	}
	p.env = append(os.Environ(), "LD_LIBRARY_PATH="+libs)
	return p
}

// WriteTable writes a file into the postmap lab directory, such as a
// texthash: table, and returns its path. Postfix rereads a file modified in
// the last second, up to five times 300 ms apart, in case it is still
// being written (util/dict_thash.c, and dict_load_file_xt for main.cf), so
// a fresh file costs every query 1.5 s; WriteTable dates it an hour back.
func (p *Postmap) WriteTable(t testing.TB, name, content string) string {
	t.Helper()
	path := filepath.Join(p.ConfDir, name)
	writeFile(t, path, content, 0o644)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatalf("postmap table: %v", err)
	}
	return path
}

// Query runs `postmap -c <conf> -q key table` and returns its output and
// exit code: 0 with the value on stdout when found, 1 when not found or on
// error (the reason on stderr).
func (p *Postmap) Query(t testing.TB, key, table string) (stdout, stderr string, rc int) {
	t.Helper()
	return p.run(t, "", "-q", key, table)
}

// QueryBatch runs `postmap -q - table` with keys on stdin, one connection
// for all of them; stdout has "key<TAB>value" for each key found.
func (p *Postmap) QueryBatch(t testing.TB, keys []string, table string) (stdout, stderr string, rc int) {
	t.Helper()
	var in strings.Builder
	for _, k := range keys {
		in.WriteString(k + "\n")
	}
	return p.run(t, in.String(), "-q", "-", table)
}

func (p *Postmap) run(t testing.TB, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), postmapTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.Bin, append([]string{"-c", p.ConfDir}, args...)...)
	cmd.Env = p.env
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("postmap %v: %v\n%s", args, ctx.Err(), errOut.String())
	}
	if _, ok := errors.AsType[*exec.ExitError](err); err != nil && !ok {
		t.Fatalf("postmap %v: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}
