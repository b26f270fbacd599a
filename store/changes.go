package store

import (
	"os"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// walHeaderLen is the first copy of the WAL-index header at the start of
// the -shm file (SQLite file format §4.5, "WAL-Index Format"): 48 bytes
// including iChange, which every commit increments, and mxFrame.
const walHeaderLen = 48

// shmWatch reads the WAL-index header that SQLite keeps in the -shm file,
// which every connection of every process maps and which every commit
// rewrites before it returns (walIndexWriteHdr). Equal bytes mean nothing
// committed since the last look; different or torn bytes only mean "ask
// SQLite". It maps the file read-only, as SQLite itself does, so a look is a
// few loads (tens of nanoseconds) where a query through database/sql costs
// about 10 µs; unlike polling it has no window in which a committed change
// goes unseen.
//
// The file cannot shrink under the mapping while the store's watcher
// connection is open: SQLite truncates -shm only when it is the sole user
// (its DMS lock). Should it happen anyway, the fault is caught
// (debug.SetPanicOnFault) and the watch falls back to asking SQLite.
type shmWatch struct {
	mem    []byte
	broken atomic.Bool
}

func openSHM(path string) *shmWatch {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close() // the mapping outlives the descriptor
	fi, err := f.Stat()
	if err != nil || fi.Size() < walHeaderLen {
		return nil
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, walHeaderLen, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil
	}
	return &shmWatch{mem: mem}
}

// header returns the current header; ok is false when it cannot be read,
// and callers then ask SQLite.
func (w *shmWatch) header() (h [walHeaderLen]byte, ok bool) {
	if w == nil || w.broken.Load() {
		return h, false
	}
	defer func() {
		if recover() != nil { // a fault on the mapping: stop trusting it
			w.broken.Store(true)
			ok = false
		}
	}()
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	// Word loads: another process writes the header concurrently; a torn
	// copy only differs from the last one, which is safe.
	for i := 0; i < walHeaderLen; i += 4 {
		v := atomic.LoadUint32((*uint32)(unsafe.Pointer(&w.mem[i])))
		h[i], h[i+1], h[i+2], h[i+3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24)
	}
	return h, true
}

func (w *shmWatch) close() error {
	if w == nil {
		return nil
	}
	w.broken.Store(true)
	return unix.Munmap(w.mem)
}
