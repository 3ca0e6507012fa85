package migstream

import (
	"errors"
	"fmt"
	"io"
)

// PageSize is the size of a target page (x86) and of every page record.
const PageSize = 4096

// Limits applied to lengths read from a stream before anything is allocated.
const (
	// MaxRAMBytes caps the total RAM size and each block's used length.
	MaxRAMBytes = 1 << 40
	// MaxBlocks caps the number of RAM blocks in the block list.
	MaxBlocks = 4096
	// MaxMachineName caps the configuration section's machine name length.
	MaxMachineName = 256
	// MaxCapabilities caps the capability count in the configuration.
	MaxCapabilities = 128
	// MaxVMDesc caps the length of the trailing VM description accepted
	// as the end of a stream.
	MaxVMDesc = 64 << 20
)

// Stream and section markers.
const (
	fileMagic   = 0x5145564d // "QEVM"
	fileVersion = 3

	secEOF           = 0x00
	secStart         = 0x01
	secPart          = 0x02
	secEnd           = 0x03
	secFull          = 0x04
	secSubsection    = 0x05
	secVMDescription = 0x06
	secConfiguration = 0x07
	secCommand       = 0x08
	secFooter        = 0x7e

	ramSectionName    = "ram"
	ramSectionVersion = 4
)

// RAM record flags (low bits of the be64 record header).
const (
	flagFull         = 0x01
	flagZero         = 0x02
	flagMemSize      = 0x04
	flagPage         = 0x08
	flagEOS          = 0x10
	flagContinue     = 0x20
	flagXBZRLE       = 0x40
	flagHook         = 0x80
	flagCompressPage = 0x100
	flagMask         = PageSize - 1
)

// Migration commands (QEMU_VM_COMMAND) that matter here.
const (
	cmdPostcopyAdvise = 3
	cmdPackaged       = 7
)

// CapIgnoreShared is the capability name that makes QEMU skip shared RAM
// blocks and write each block's guest address in the block list.
const CapIgnoreShared = "x-ignore-shared"

// Page is one guest page record.
type Page struct {
	// Block is the RAM block id, e.g. "pc.ram" or "mem".
	Block string
	// Offset is the page's byte offset in the block, a multiple of PageSize.
	Offset uint64
	// Data holds PageSize bytes, or is nil for a page filled with Fill
	// (QEMU's ZERO record; QEMU itself only sends Fill == 0).
	Data []byte
	// Fill is the fill byte of a page without Data.
	Fill byte
}

// IsZero reports whether p is a fill page (a ZERO record).
func (p Page) IsZero() bool { return p.Data == nil }

// PageSink receives the page records of a stream, in stream order. A page
// may come more than once (QEMU resends pages dirtied during migration);
// the last one wins.
type PageSink interface {
	// WritePage receives one page. p.Data is only valid during the call.
	WritePage(p Page) error
}

// PageSinkFunc adapts a function to PageSink.
type PageSinkFunc func(p Page) error

// WritePage calls f(p).
func (f PageSinkFunc) WritePage(p Page) error { return f(p) }

// PageSource yields pages to inject, in any order.
type PageSource interface {
	// NextPage returns the next page, or io.EOF when there are no more.
	// The returned Data must stay valid until the next call.
	NextPage() (Page, error)
}

// PageSourceFunc adapts a function to PageSource.
type PageSourceFunc func() (Page, error)

// NextPage calls f().
func (f PageSourceFunc) NextPage() (Page, error) { return f() }

// SlicePages returns a PageSource that yields pages in order.
func SlicePages(pages []Page) PageSource {
	i := 0
	return PageSourceFunc(func() (Page, error) {
		if i >= len(pages) {
			return Page{}, io.EOF
		}
		i++
		return pages[i-1], nil
	})
}

// Block is one RAM block of the stream's block list.
type Block struct {
	// ID is the block id ("pc.ram", "mem", "/rom@etc/acpi/tables", ...).
	ID string
	// Length is the block's used length in bytes.
	Length uint64
	// Addr is the guest address QEMU sent for the block when
	// x-ignore-shared is on (HasAddr); 0 otherwise.
	Addr uint64
	// HasAddr reports whether Addr was present in the stream.
	HasAddr bool
}

// RAMInfo describes a stream's header and RAM section.
type RAMInfo struct {
	// Machine is the machine type from the configuration section.
	Machine string
	// Capabilities lists the capabilities announced in the configuration
	// section (QEMU 7.2 only announces x-ignore-shared there).
	Capabilities []string
	// IgnoreShared reports whether x-ignore-shared was on, i.e. whether
	// each block in Blocks carries a guest address.
	IgnoreShared bool
	// SectionID is the RAM section's id in the stream.
	SectionID uint32
	// TotalBytes is the MEM_SIZE total (sum of the blocks' used lengths).
	TotalBytes uint64
	// Blocks is the block list, in stream order.
	Blocks []Block
	// Pages and ZeroPages count the page records Split found.
	Pages, ZeroPages uint64
}

// Block returns the block with the given id.
func (ri *RAMInfo) Block(id string) (Block, bool) {
	for _, b := range ri.Blocks {
		if b.ID == id {
			return b, true
		}
	}
	return Block{}, false
}

// FormatError is a problem found in a stream at a byte offset.
type FormatError struct {
	// Offset is the stream offset where the problem was found.
	Offset int64
	// Msg says what was wrong.
	Msg string
	// Err is the underlying error, if any (e.g. io.ErrUnexpectedEOF).
	Err error
}

func (e *FormatError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("migstream: offset %d: %s: %v", e.Offset, e.Msg, e.Err)
	}
	return fmt.Sprintf("migstream: offset %d: %s", e.Offset, e.Msg)
}

// Unwrap returns the underlying error.
func (e *FormatError) Unwrap() error { return e.Err }

// IsTruncated reports whether err says the stream ended early.
func IsTruncated(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }
