package migstream

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
)

const ioBufSize = 256 << 10

// reader reads a stream through a bufio.Reader and counts the offset.
// Slices returned by take are only valid until the next read.
type reader struct {
	br  *bufio.Reader
	off int64
}

var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, ioBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, ioBufSize) }}
)

func newReader(r io.Reader) reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return reader{br: br}
}

// take returns the next n bytes (n <= ioBufSize) without copying them.
func (r *reader) take(n int, what string) ([]byte, error) {
	b, err := r.br.Peek(n)
	if len(b) < n {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, &FormatError{Offset: r.off, Msg: "reading " + what, Err: err}
	}
	r.br.Discard(n)
	r.off += int64(n)
	return b, nil
}

func (r *reader) u8(what string) (byte, error) {
	b, err := r.take(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (r *reader) peek() (byte, bool) {
	b, err := r.br.Peek(1)
	if err != nil {
		return 0, false
	}
	return b[0], true
}

// parser walks a stream up to the end of the RAM section, copying what it
// reads to w (when w is not nil) except page records, which go to sink.
type parser struct {
	r    reader
	w    *bufio.Writer
	werr error
	sink PageSink

	info    RAMInfo
	blocks  map[string]int
	last    int // index of the block of the last page record, -1 if none
	ramSeen bool
	ramEnd  bool
	lastSec uint32

	// onBlockList, when set, is called right after the RAM block list
	// has been copied; parsing then stops and the rest is copied verbatim.
	onBlockList func() error
	stopped     bool
	// stopAtBlockList ends parsing after the block list (ReadInfo).
	stopAtBlockList bool
}

func newParser(r io.Reader, w io.Writer) *parser {
	p := &parser{r: newReader(r), last: -1, blocks: map[string]int{}}
	if w != nil {
		p.w = writerPool.Get().(*bufio.Writer)
		p.w.Reset(w)
	}
	return p
}

// release returns the buffers to their pools; p must not be used after.
func (p *parser) release() {
	p.r.br.Reset(nil)
	readerPool.Put(p.r.br)
	p.r.br = nil
	if p.w != nil {
		p.w.Reset(nil)
		writerPool.Put(p.w)
		p.w = nil
	}
}

func (p *parser) emit(b []byte) {
	if p.w != nil && p.werr == nil {
		_, p.werr = p.w.Write(b)
	}
}

func (p *parser) errAt(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Msg: fmt.Sprintf(format, args...)}
}

// field reads n bytes and copies them to the output.
func (p *parser) field(n int, what string) ([]byte, error) {
	b, err := p.r.take(n, what)
	if err == nil {
		p.emit(b)
	}
	return b, err
}

func (p *parser) u8(what string) (byte, error) {
	b, err := p.field(1, what)
	if err != nil {
		return 0, err
	}
	return b[0], nil
}

func (p *parser) be16(what string) (uint16, error) {
	b, err := p.field(2, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint16(b), nil
}

func (p *parser) be32(what string) (uint32, error) {
	b, err := p.field(4, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b), nil
}

func (p *parser) be64(what string) (uint64, error) {
	b, err := p.field(8, what)
	if err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint64(b), nil
}

// str reads a u8-length-prefixed string; empty strings are rejected.
func (p *parser) str(what string) (string, error) {
	off := p.r.off
	n, err := p.u8(what + " length")
	if err != nil {
		return "", err
	}
	if n == 0 {
		return "", p.errAt(off, "empty %s", what)
	}
	b, err := p.field(int(n), what)
	return string(b), err
}

// run parses the stream up to the end of the RAM section, then copies the
// rest verbatim (checking its trailer) unless stopAtBlockList is set.
func (p *parser) run() error {
	if err := p.header(); err != nil {
		return err
	}
	for !p.ramEnd && !p.stopped {
		if p.werr != nil {
			return p.werr
		}
		off := p.r.off
		t, err := p.u8("section type")
		if err != nil {
			return err
		}
		switch t {
		case secConfiguration:
			err = p.config()
		case secCommand:
			err = p.command(off)
		case secStart:
			err = p.sectionStart(off)
		case secPart, secEnd:
			err = p.sectionPart(off, t)
		case secFooter:
			err = p.footer(off)
		case secEOF:
			if !p.ramSeen {
				return p.errAt(off, "QEMU_VM_EOF before any RAM section")
			}
			return p.errAt(off, "QEMU_VM_EOF before the end of the RAM section")
		case secFull:
			return p.errAt(off, "device section (QEMU_VM_SECTION_FULL) before the end of the RAM section is not supported")
		default:
			return p.errAt(off, "unknown section type 0x%02x", t)
		}
		if err != nil {
			return err
		}
	}
	if p.stopAtBlockList {
		return nil
	}
	if len(p.info.Blocks) == 0 {
		return p.errAt(p.r.off, "RAM section ended without a MEM_SIZE block list")
	}
	if !p.stopped {
		// The footer of the RAM end section, when the machine sends footers.
		if b, ok := p.r.peek(); ok && b == secFooter {
			off := p.r.off
			p.u8("section type")
			if err := p.footer(off); err != nil {
				return err
			}
		}
	}
	return p.copyRest()
}

func (p *parser) header() error {
	off := p.r.off
	magic, err := p.be32("file magic")
	if err != nil {
		return err
	}
	if magic != fileMagic {
		return p.errAt(off, "bad magic 0x%08x, want 0x%08x (\"QEVM\")", magic, fileMagic)
	}
	off = p.r.off
	v, err := p.be32("file version")
	if err != nil {
		return err
	}
	if v != fileVersion {
		return p.errAt(off, "unsupported stream version %d, want %d", v, fileVersion)
	}
	return nil
}

// config parses the configuration section and its subsections.
func (p *parser) config() error {
	off := p.r.off
	n, err := p.be32("machine name length")
	if err != nil {
		return err
	}
	if n > MaxMachineName {
		return p.errAt(off, "machine name length %d exceeds %d", n, MaxMachineName)
	}
	name, err := p.field(int(n), "machine name")
	if err != nil {
		return err
	}
	p.info.Machine = string(name)
	for {
		b, ok := p.r.peek()
		if !ok || b != secSubsection {
			return nil
		}
		p.u8("subsection marker")
		off := p.r.off
		sub, err := p.str("configuration subsection name")
		if err != nil {
			return err
		}
		if _, err := p.be32("subsection version"); err != nil {
			return err
		}
		switch sub {
		case "configuration/target-page-bits":
			boff := p.r.off
			bits, err := p.be32("target page bits")
			if err != nil {
				return err
			}
			if bits != 12 {
				return p.errAt(boff, "target page bits %d, only 12 (4096-byte pages) is supported", bits)
			}
		case "configuration/capabilities":
			coff := p.r.off
			cnt, err := p.be32("capability count")
			if err != nil {
				return err
			}
			if cnt > MaxCapabilities {
				return p.errAt(coff, "capability count %d exceeds %d", cnt, MaxCapabilities)
			}
			for range cnt {
				c, err := p.str("capability name")
				if err != nil {
					return err
				}
				p.info.Capabilities = append(p.info.Capabilities, c)
				if c == CapIgnoreShared {
					p.info.IgnoreShared = true
				}
			}
		case "configuration/uuid":
			if _, err := p.field(16, "uuid"); err != nil {
				return err
			}
		default:
			return p.errAt(off, "unknown configuration subsection %q", sub)
		}
	}
}

func (p *parser) command(off int64) error {
	cmd, err := p.be16("command")
	if err != nil {
		return err
	}
	n, err := p.be16("command length")
	if err != nil {
		return err
	}
	if _, err := p.field(int(n), "command data"); err != nil {
		return err
	}
	switch {
	case cmd == cmdPostcopyAdvise && n > 0:
		return p.errAt(off, "postcopy-ram stream (POSTCOPY_ADVISE command) is not supported")
	case cmd == cmdPackaged:
		return p.errAt(off, "packaged (postcopy) command is not supported")
	}
	return nil
}

func (p *parser) sectionStart(off int64) error {
	id, err := p.be32("section id")
	if err != nil {
		return err
	}
	name, err := p.str("section name")
	if err != nil {
		return err
	}
	if _, err := p.be32("instance id"); err != nil {
		return err
	}
	voff := p.r.off
	ver, err := p.be32("version id")
	if err != nil {
		return err
	}
	if name != ramSectionName {
		return p.errAt(off, "iterable section %q (id %d) before the end of the RAM section is not supported", name, id)
	}
	if p.ramSeen {
		return p.errAt(off, "second RAM section start (id %d)", id)
	}
	if ver != ramSectionVersion {
		return p.errAt(voff, "RAM section version %d, want %d", ver, ramSectionVersion)
	}
	p.ramSeen = true
	p.info.SectionID = id
	p.lastSec = id
	return p.ramRecords()
}

func (p *parser) sectionPart(off int64, t byte) error {
	id, err := p.be32("section id")
	if err != nil {
		return err
	}
	kind := "QEMU_VM_SECTION_PART"
	if t == secEnd {
		kind = "QEMU_VM_SECTION_END"
	}
	if !p.ramSeen {
		return p.errAt(off, "%s (id %d) before the RAM section start", kind, id)
	}
	if id != p.info.SectionID {
		return p.errAt(off, "%s for section id %d, not the RAM section (id %d): other iterable sections are not supported", kind, id, p.info.SectionID)
	}
	p.lastSec = id
	if err := p.ramRecords(); err != nil {
		return err
	}
	if t == secEnd {
		p.ramEnd = true
	}
	return nil
}

func (p *parser) footer(off int64) error {
	id, err := p.be32("footer section id")
	if err != nil {
		return err
	}
	if id != p.lastSec {
		return p.errAt(off, "section footer for id %d, want %d", id, p.lastSec)
	}
	return nil
}

// ramRecords parses RAM records up to and including EOS.
func (p *parser) ramRecords() error {
	for !p.stopped {
		if p.werr != nil {
			return p.werr
		}
		off := p.r.off
		b, err := p.r.take(8, "RAM record")
		if err != nil {
			return err
		}
		v := binary.BigEndian.Uint64(b)
		flags, addr := v&flagMask, v&^flagMask
		switch flags &^ flagContinue {
		case flagEOS:
			p.emit(b)
			return nil
		case flagMemSize:
			p.emit(b)
			if err := p.memSize(off, addr); err != nil {
				return err
			}
		case flagPage, flagZero:
			if err := p.page(off, flags, addr); err != nil {
				return err
			}
		case flagXBZRLE:
			return p.errAt(off, "XBZRLE page record (flags 0x%x) is not supported: turn the xbzrle capability off", flags)
		case flagCompressPage:
			return p.errAt(off, "compressed page record (flags 0x%x) is not supported: turn the compress capability off", flags)
		case flagHook:
			return p.errAt(off, "RDMA hook record (flags 0x%x) is not supported", flags)
		default:
			return p.errAt(off, "unknown RAM flags 0x%x%s", flags, p.lastBlockNote())
		}
	}
	return nil
}

func (p *parser) lastBlockNote() string {
	if p.last < 0 {
		return ""
	}
	return fmt.Sprintf(" (after a page of block %q)", p.info.Blocks[p.last].ID)
}

func (p *parser) memSize(off int64, total uint64) error {
	if p.info.Blocks != nil {
		return p.errAt(off, "second MEM_SIZE record")
	}
	if total > MaxRAMBytes {
		return p.errAt(off, "total RAM size %d exceeds %d", total, uint64(MaxRAMBytes))
	}
	p.info.TotalBytes = total
	p.info.Blocks = []Block{}
	for rest := total; rest > 0; {
		boff := p.r.off
		if len(p.info.Blocks) >= MaxBlocks {
			return p.errAt(boff, "more than %d RAM blocks", MaxBlocks)
		}
		id, err := p.str("RAM block id")
		if err != nil {
			return err
		}
		loff := p.r.off
		n, err := p.be64("RAM block length")
		if err != nil {
			return err
		}
		switch {
		case n == 0 || n%PageSize != 0:
			return p.errAt(loff, "RAM block %q length 0x%x is not a positive multiple of %d", id, n, PageSize)
		case n > rest:
			return p.errAt(loff, "RAM block %q length 0x%x exceeds the 0x%x bytes left of the MEM_SIZE total 0x%x", id, n, rest, total)
		}
		if _, dup := p.blocks[id]; dup {
			return p.errAt(boff, "duplicate RAM block %q", id)
		}
		rest -= n
		blk := Block{ID: id, Length: n}
		if p.info.IgnoreShared {
			a, err := p.be64("RAM block guest address")
			if err != nil {
				return err
			}
			blk.Addr, blk.HasAddr = a, true
		}
		p.blocks[id] = len(p.info.Blocks)
		p.info.Blocks = append(p.info.Blocks, blk)
	}
	if p.stopAtBlockList {
		p.stopped = true
		return nil
	}
	if p.onBlockList != nil {
		if p.werr != nil {
			return p.werr
		}
		if err := p.onBlockList(); err != nil {
			return err
		}
		p.stopped = true
	}
	return nil
}

// page parses a PAGE or ZERO record (header already read) and hands the
// page to the sink; page records are not copied to the output.
func (p *parser) page(off int64, flags, addr uint64) error {
	if p.info.Blocks == nil {
		return p.errAt(off, "page record before the MEM_SIZE block list")
	}
	var bi int
	if flags&flagContinue != 0 {
		if p.last < 0 {
			return p.errAt(off, "CONTINUE page record without a previous block")
		}
		bi = p.last
	} else {
		ioff := p.r.off
		n, err := p.r.take(1, "page block id length")
		if err != nil {
			return err
		}
		if n[0] == 0 {
			return p.errAt(ioff, "empty page block id")
		}
		id, err := p.r.take(int(n[0]), "page block id")
		if err != nil {
			return err
		}
		i, ok := p.blocks[string(id)]
		if !ok {
			return p.errAt(ioff, "page record for unknown RAM block %q", id)
		}
		bi = i
		p.last = i
	}
	blk := &p.info.Blocks[bi]
	if addr >= blk.Length || blk.Length-addr < PageSize {
		return p.errAt(off, "page offset 0x%x beyond RAM block %q of length 0x%x", addr, blk.ID, blk.Length)
	}
	pg := Page{Block: blk.ID, Offset: addr}
	if flags&^flagContinue == flagPage {
		data, err := p.r.take(PageSize, "page data")
		if err != nil {
			return err
		}
		pg.Data = data
		p.info.Pages++
	} else {
		fill, err := p.r.take(1, "zero page fill byte")
		if err != nil {
			return err
		}
		pg.Fill = fill[0]
		p.info.ZeroPages++
	}
	if p.sink == nil {
		return nil
	}
	if err := p.sink.WritePage(pg); err != nil {
		return fmt.Errorf("migstream: offset %d: page sink: %w", off, err)
	}
	return nil
}

// copyRest copies the remainder of the stream verbatim and checks that it
// ends with QEMU_VM_EOF and a matching VM description.
func (p *parser) copyRest() error {
	var tc trailerCheck
	start := p.r.off
	for {
		n := p.r.br.Buffered()
		if n == 0 {
			if _, err := p.r.br.Peek(1); err != nil {
				if err == io.EOF {
					break
				}
				return &FormatError{Offset: p.r.off, Msg: "reading device state", Err: err}
			}
			continue
		}
		b, _ := p.r.br.Peek(n)
		tc.Write(b)
		p.emit(b)
		p.r.br.Discard(n)
		p.r.off += int64(n)
		if p.werr != nil {
			return p.werr
		}
	}
	if !tc.complete() {
		return &FormatError{Offset: p.r.off, Msg: fmt.Sprintf("stream does not end with QEMU_VM_EOF and a VM description (%d bytes after the RAM section)", p.r.off-start), Err: io.ErrUnexpectedEOF}
	}
	if p.w != nil {
		if err := p.w.Flush(); err != nil {
			return err
		}
	}
	return p.werr
}
