package diff

import (
	"bytes"
	"fmt"
	"os"

	"cloudlet/lib/base"

	"github.com/cespare/xxhash/v2"
)

// Page is the diff granularity.
const Page = base.PageSize

// Delta modes.
const (
	DeltaNone = "none"
	DeltaXOR  = "xor"
	DeltaOps  = "ops"
	DeltaBest = "best"
)

// Options tune an Engine.
type Options struct {
	Delta     string // DeltaNone (default), DeltaXOR, DeltaOps or DeltaBest
	NoDedup   bool   // skip step 3 (copies)
	ScratchIn string // folder for the scratch file of self-dedup (default os.TempDir)
}

// Stats counts what the engine did, in bytes of the target space.
type Stats struct {
	In        uint64 `json:"in"`        // bytes described by the input
	Unchanged uint64 `json:"unchanged"` // equal to the base at the same offset
	Zero      uint64 `json:"zero"`      // written as zero records
	CopyMem   uint64 `json:"copy_mem"`  // copied from base memory
	CopyDisk  uint64 `json:"copy_disk"` // copied from the base disk
	CopySelf  uint64 `json:"copy_self"` // copied from earlier in the stream
	Delta     uint64 `json:"delta"`     // bytes covered by DELTA records
	DeltaOut  uint64 `json:"delta_out"` // size of those deltas
	Raw       uint64 `json:"raw"`       // raw bytes written
}

// Self remembers pages written raw earlier in the stream, in either space,
// so later pages can copy them. Page bytes live in a scratch file, so memory
// use is ~24 bytes per page however large the stream.
type Self struct {
	m       map[uint64]selfLoc
	scratch *os.File
	next    int64
	buf     []byte
}

type selfLoc struct {
	space   uint8
	off     uint64
	scratch int64
}

// NewSelf returns an empty Self with its scratch file in dir.
func NewSelf(dir string) (*Self, error) {
	f, err := os.CreateTemp(dir, "cloudlet-diff-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name()) // unlinked: vanishes with the process, whatever happens
	return &Self{m: map[uint64]selfLoc{}, scratch: f, buf: make([]byte, Page)}, nil
}

// Close releases the scratch file.
func (s *Self) Close() error { return s.scratch.Close() }

// Add records a page written raw at off of space.
func (s *Self) Add(space uint8, off uint64, page []byte) error {
	h := xxhash.Sum64(page)
	if _, ok := s.m[h]; ok {
		return nil
	}
	if _, err := s.scratch.WriteAt(page, s.next); err != nil {
		return fmt.Errorf("diff scratch file: %w", err)
	}
	s.m[h] = selfLoc{space, off, s.next}
	s.next += Page
	return nil
}

// AddData records every whole, aligned page of a raw data run.
func (s *Self) AddData(space uint8, off uint64, data []byte) error {
	for o := uint64(0); o+Page <= uint64(len(data)); o += Page {
		if (off+o)%Page != 0 {
			continue
		}
		if err := s.Add(space, off+o, data[o:o+Page]); err != nil {
			return err
		}
	}
	return nil
}

// find returns an earlier page equal to page, verified byte for byte.
func (s *Self) find(h uint64, page []byte) (selfLoc, bool) {
	l, ok := s.m[h]
	if !ok {
		return l, false
	}
	if _, err := s.scratch.ReadAt(s.buf, l.scratch); err != nil || !bytes.Equal(s.buf, page) {
		return l, false
	}
	return l, true
}
