package store

import (
	"os"
	"runtime/debug"
	"sync"
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
//
// The descriptor the mapping is made from is never closed. POSIX record
// locks belong to the process, and closing any descriptor of a file drops
// every lock the process holds on it (fcntl(2)): closing ours dropped
// SQLite's DMS lock on -shm, so the next process to open the store believed
// itself alone, truncated -shm, and this process's connections faulted on
// their wal-index mapping (SQLITE_IOERR_IN_PAGE, seen under load). SQLite
// itself defers such closes for the same reason (unixInodeInfo). One
// descriptor per -shm file is kept for the life of the process.
type shmWatch struct {
	mem    []byte
	broken atomic.Bool
}

// shmFiles are the -shm descriptors opened so far, by device and inode.
var shmFiles struct {
	sync.Mutex
	m map[[2]uint64]*os.File
}

func openSHM(path string) *shmWatch {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil || st.Size < walHeaderLen {
		return nil
	}
	key := [2]uint64{uint64(st.Dev), st.Ino}
	shmFiles.Lock()
	defer shmFiles.Unlock()
	f := shmFiles.m[key]
	if f == nil {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil
		}
		// Kept even when path now names another file than the one stat
		// saw: closing it would drop this process's locks on that one.
		if shmFiles.m == nil {
			shmFiles.m = map[[2]uint64]*os.File{}
		}
		shmFiles.m[key] = f
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
