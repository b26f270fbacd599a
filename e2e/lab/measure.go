package lab

import (
	"bytes"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Helpers for benchmarks that compare our servers with real peers, each in a
// process of its own (perf-anchors.md §2: client and servers share the
// cores, server CPU is read from /proc at the edges of the measured time).

// StartNotify starts cmd (a server that sends READY=1 to $NOTIFY_SOCKET once
// it listens, as `cyrus-sidecar serve` does) with its output in dir/name.log,
// waits for READY=1 at most 3×timeout, and stops it with SIGTERM (then
// SIGKILL after timeout) at cleanup. It returns the process ID.
func StartNotify(t testing.TB, name string, cmd *exec.Cmd, dir string, timeout time.Duration) int {
	t.Helper()
	notify := filepath.Join(dir, name+".notify")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close() // the child has its own
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+notify)
	// Should the test binary die without cleanup (a -timeout panic), the
	// server goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(timeout):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop within %v of SIGTERM; killed", name, timeout)
		}
	})
	buf := make([]byte, 512)
	for deadline := time.Now().Add(3 * timeout); ; {
		nl.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if n, err := nl.Read(buf); err == nil && bytes.Contains(buf[:n], []byte("READY=1")) {
			return cmd.Process.Pid
		}
		select {
		case <-done:
			out, _ := os.ReadFile(logPath)
			t.Fatalf("%s exited during start: %v\n%s", name, cmd.ProcessState, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready within %v", name, 3*timeout)
		}
	}
}

// ProcStat is what the benchmarks read of /proc/PID/stat.
type ProcStat struct {
	State string
	Pgrp  int
	CPU   int64 // utime + stime of all threads, in clock ticks
}

// Stat reads /proc/PID/stat.
func Stat(pid int) (ProcStat, error) {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ProcStat{}, err
	}
	// proc(5): "pid (comm) state ppid pgrp ..."; comm may hold spaces, so
	// the fields are counted from the last ')'. state, pgrp, utime and
	// stime are fields 3, 5, 14 and 15, here 0, 2, 11 and 12.
	f := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(f) < 13 {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	pgrp, err1 := strconv.Atoi(f[2])
	utime, err2 := strconv.ParseInt(f[11], 10, 64)
	stime, err3 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return ProcStat{}, fmt.Errorf("/proc/%d/stat: pgrp %q, utime %q, stime %q", pid, f[2], f[11], f[12])
	}
	return ProcStat{State: f[0], Pgrp: pgrp, CPU: utime + stime}, nil
}

// PeakRSS is a process's peak resident set size (VmHWM) in KiB; 0 when it
// is gone.
func PeakRSS(pid int) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, nil
	}
	for l := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("/proc/%d/status: VmHWM %q", pid, v)
			}
			return kib, nil
		}
	}
	return 0, nil
}

// Percentile is the nearest-rank percentile of sorted durations.
func Percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(0, (len(sorted)*p+99)/100-1)]
}

// BenchTime is each target's measured time per case: -test.benchtime when
// it is a duration, else one second.
func BenchTime() time.Duration {
	if f := flag.Lookup("test.benchtime"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil && d > 0 {
			return d
		}
	}
	return time.Second
}

// NotifyReady sends READY=1 to $NOTIFY_SOCKET: the side of StartNotify a
// benchmark's own helper process (a do-nothing server) runs.
func NotifyReady(t testing.TB) {
	t.Helper()
	ready, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = ready.Write([]byte("READY=1"))
	ready.Close()
	if err != nil {
		t.Fatal(err)
	}
}
