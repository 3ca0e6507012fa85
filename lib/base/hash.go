package base

import (
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"os"
	"syscall"
)

// zeros is what hashes a run of zero bytes without reading it.
var zeros = make([]byte, 1<<20)

// hashZeros feeds n zero bytes to h.
func hashZeros(h hash.Hash, n uint64) {
	for n > 0 {
		c := min(n, uint64(len(zeros)))
		h.Write(zeros[:c])
		n -= c
	}
}

// seqHash hashes a file of a known size as it is written, when writes come
// in ascending offset order over a file that starts all zero: the gaps
// between writes are hashed as zeros from memory, so the file is never
// read back (a base export's holes cost the hash's time, not a disk read).
// A write before the last one makes it give up; the file is then hashed
// after the fact (fileSHA).
type seqHash struct {
	h        hash.Hash
	at, size uint64
	broken   bool
}

func newSeqHash(size uint64) *seqHash { return &seqHash{h: sha256.New(), size: size} }

func (s *seqHash) write(off uint64, data []byte) {
	if s.broken || off < s.at {
		s.broken = true
		return
	}
	hashZeros(s.h, off-s.at)
	s.h.Write(data)
	s.at = off + uint64(len(data))
}

// sum returns the digest, or nil if the writes were out of order.
func (s *seqHash) sum() []byte {
	if s.broken || s.at > s.size {
		return nil
	}
	hashZeros(s.h, s.size-s.at)
	s.at = s.size
	return s.h.Sum(nil)
}

// fileSHA returns the sha256 of a file, reading only its data: the holes
// of a sparse file (SEEK_HOLE) are hashed as zeros from memory.
func fileSHA(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	size := st.Size()
	for at := int64(0); at < size; {
		data, err := f.Seek(at, seekData)
		if errors.Is(err, syscall.ENXIO) { // only a hole up to the end
			data = size
		} else if err != nil { // no SEEK_DATA here: read it all
			return readSHA(f, h, at)
		}
		hashZeros(h, uint64(data-at))
		if data >= size {
			break
		}
		hole, err := f.Seek(data, seekHole)
		if err != nil {
			return readSHA(f, h, data)
		}
		if _, err := f.Seek(data, io.SeekStart); err != nil {
			return nil, err
		}
		if _, err := io.CopyN(h, f, hole-data); err != nil {
			return nil, err
		}
		at = hole
	}
	return h.Sum(nil), nil
}

// readSHA hashes f from at to its end into h, reading every byte.
func readSHA(f *os.File, h hash.Hash, at int64) ([]byte, error) {
	if _, err := f.Seek(at, io.SeekStart); err != nil {
		return nil, err
	}
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// lseek whence values for sparse files (not in package io).
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// punchHole makes [off, off+n) of f read as zero without writing zeros
// (FALLOC_FL_PUNCH_HOLE); where the file system cannot, it writes them.
func punchHole(f *os.File, off, n uint64) error {
	const punchHole, keepSize = 0x02, 0x01 // FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE
	err := syscall.Fallocate(int(f.Fd()), punchHole|keepSize, int64(off), int64(n))
	if err == nil || !(errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS)) {
		return err
	}
	for n > 0 {
		c := min(n, uint64(len(zeros)))
		if _, err := f.WriteAt(zeros[:c], int64(off)); err != nil {
			return err
		}
		off, n = off+c, n-c
	}
	return nil
}
