package overlay

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Base gives read access to a base VM's memory and disk.
type Base interface {
	ID() string
	// Sizes returns the base VM's RAM and disk sizes in bytes; an overlay
	// must describe a VM of exactly these sizes.
	Sizes() (mem, disk uint64)
	ReadMemAt(p []byte, off int64) (int, error)
	ReadDiskAt(p []byte, off int64) (int, error)
}

// OpenFunc opens the base with the given ID (the overlay's base_id). Apply
// still checks the ID of what it returns.
type OpenFunc func(id string) (Base, error)

// readBase fills p from the base's memory or disk at off.
func readBase(b Base, src uint8, p []byte, off uint64) error {
	read, what := b.ReadMemAt, "memory"
	if src == sourceDisk {
		read, what = b.ReadDiskAt, "disk"
	}
	n, err := read(p, int64(off))
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		return fmt.Errorf("base %s: %s ends at offset %d, but the overlay reads %d bytes at %d; is this the base the overlay was made from?", b.ID(), what, off+uint64(n), len(p), off)
	}
	return fmt.Errorf("base %s: reading %s at offset %d: %w", b.ID(), what, off, err)
}

const (
	sourceMem  = 1
	sourceDisk = 2
)

// describe names a base for error messages: where it was found, if the
// base says (fmt.Stringer), and its ID.
func describe(b Base) string {
	if s, ok := b.(fmt.Stringer); ok {
		return fmt.Sprintf("the base at %s (ID %s)", s.String(), b.ID())
	}
	return "the base with ID " + b.ID()
}

func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }
