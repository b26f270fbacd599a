package lab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a peer process the lab started in its own process group, so that
// the helpers it forks can be found and stopped with it.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd.Wait returned
	err  error         // cmd.Wait's result, valid after done
	logf func(format string, args ...any)

	// aloneGrace, if set, lets stop SIGKILL the leader without calling it
	// an error once it has been the last live process of its group that
	// long after SIGTERM: a peer known to hang in shutdown (Cyrus master).
	aloneGrace time.Duration

	stopOnce sync.Once
	stopErr  error
}

// startProc starts cmd with stdout and stderr appended to the file out, in
// a new process group, and waits for it in a goroutine owned by the
// returned proc. The own group also matters to the peer: Cyrus's master
// sends SIGTERM to its whole process group when it shuts down, which would
// otherwise include the test binary.
func startProc(t testing.TB, name string, cmd *exec.Cmd, out string) *proc {
	t.Helper()
	f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	defer f.Close() // the child has its own descriptor
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), logf: t.Logf}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits up to grace for the process, then SIGKILLs
// it; later calls return the first one's result. Afterwards it waits for the rest of its process group (children the
// peer forked, such as imapd or an Exim delivery) and SIGKILLs what is left,
// so no test leaves processes behind. It returns what it had to force.
func (p *proc) stop(grace time.Duration) error {
	// Once only: afterwards the group id may belong to someone else.
	p.stopOnce.Do(func() { p.stopErr = p.terminate(grace) })
	return p.stopErr
}

func (p *proc) terminate(grace time.Duration) error {
	var errs []error
	pid := p.cmd.Process.Pid
	if !p.exited() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM) // fails only if it just exited
		deadline := time.Now().Add(grace)
		var alone time.Time // since when the leader has been the group's last live process
		for !p.waitFor(20 * time.Millisecond) {
			now := time.Now()
			switch {
			case now.After(deadline):
				errs = append(errs, fmt.Errorf("%s did not stop within %v of SIGTERM; killed; its group: %s",
					p.name, grace, describe(groupMembers(pid))))
			case p.aloneGrace > 0 && slices.Equal(groupMembers(pid), []int{pid}):
				if alone.IsZero() {
					alone = now
				}
				if now.Sub(alone) < p.aloneGrace {
					continue
				}
				p.logf("%s still running %v after its last child exited; killed (see aloneGrace)", p.name, now.Sub(alone))
			default:
				alone = time.Time{}
				continue
			}
			_ = p.cmd.Process.Kill() // fails only if it just exited
			<-p.done
		}
	}
	// The group id is the leader's pid (Setpgid); its members are our
	// descendants. They got SIGTERM from the peer; give them time to exit.
	deadline := time.Now().Add(grace)
	for len(groupMembers(pid)) > 0 {
		if time.Now().After(deadline) {
			errs = append(errs, fmt.Errorf("%s left processes %s; killed", p.name, describe(groupMembers(pid))))
			_ = syscall.Kill(-pid, syscall.SIGKILL) // ESRCH if they just exited
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	return errors.Join(errs...)
}

// waitFor waits up to d for the process to end and reports whether it has.
func (p *proc) waitFor(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// groupMembers lists the live processes in process group pgid, from /proc.
func groupMembers(pgid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// proc(5): "pid (comm) state ppid pgrp ..."; comm may hold spaces
		// and parentheses, so split after the last ')'.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 3 || f[0] == "Z" {
			continue // zombies are reaped by their parent, not killable
		}
		if g, _ := strconv.Atoi(f[2]); g == pgid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// describe renders pids with their command lines, for error messages.
func describe(pids []int) string {
	var b strings.Builder
	for _, pid := range pids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)) // gone: empty
		fmt.Fprintf(&b, "[%d %s] ", pid, bytes.ReplaceAll(bytes.TrimRight(cmdline, "\x00"), []byte{0}, []byte(" ")))
	}
	return strings.TrimSpace(b.String())
}
