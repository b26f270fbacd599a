package store

import (
	"os"
)

// walHeaderLen is the first copy of the WAL-index header at the start of
// the -shm file (SQLite file format §4.5, "WAL-Index Format"): 48 bytes
// including iChange, which every commit increments, and mxFrame.
const walHeaderLen = 48

// shmWatch reads the WAL-index header that SQLite keeps in the -shm file,
// which every connection of every process maps and which every commit
// rewrites before it returns (walIndexWriteHdr). Equal bytes mean nothing
// committed since the last look; different or torn bytes only mean "ask
// SQLite". One pread(2) costs well under a microsecond, against about 8 µs
// for a PRAGMA through database/sql, and unlike polling it has no window in
// which a committed change goes unseen.
//
// pread rather than mmap: the page cache is the same memory, and a file
// that shrank under us gives a short read instead of SIGBUS.
type shmWatch struct {
	f *os.File
}

func openSHM(path string) *shmWatch {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	return &shmWatch{f: f}
}

// header returns the current header; ok is false when it cannot be read,
// and callers then ask SQLite.
func (w *shmWatch) header() (h [walHeaderLen]byte, ok bool) {
	if w == nil {
		return h, false
	}
	n, err := w.f.ReadAt(h[:], 0)
	return h, err == nil && n == walHeaderLen
}

func (w *shmWatch) close() error {
	if w == nil {
		return nil
	}
	return w.f.Close()
}
