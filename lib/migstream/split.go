package migstream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Split parses a full QEMU 7.2 migration stream from r, hands every RAM
// page record to pages (in stream order) and writes the device state (the
// same stream with all page records removed) to devstate. It returns the
// stream's RAM description. pages and devstate may be nil (discarded).
func Split(r io.Reader, devstate io.Writer, pages PageSink) (*RAMInfo, error) {
	if devstate == nil {
		devstate = io.Discard
	}
	p := newParser(r, devstate)
	defer p.release()
	p.sink = pages
	if err := p.run(); err != nil {
		return nil, err
	}
	return &p.info, nil
}

// ReadInfo reads a stream's header up to the end of the RAM block list and
// returns what it found (no pages are read; Pages and ZeroPages are 0).
// It reads ahead of the block list through a buffer, so r is not left
// positioned right after it.
func ReadInfo(r io.Reader) (*RAMInfo, error) {
	p := newParser(r, nil)
	defer p.release()
	p.stopAtBlockList = true
	if err := p.run(); err != nil {
		return nil, err
	}
	if !p.stopped {
		return nil, errors.New("migstream: RAM section has no MEM_SIZE block list")
	}
	return &p.info, nil
}

// Inject copies the device-state stream devstate to out and inserts the
// pages from pages right after the RAM section's block list. Each page must
// name a block of that list and lie within its used length. Pages already
// in devstate (QEMU's own ROM pages in an x-ignore-shared stream) are kept
// and, coming later, win over injected pages at the same place. A nil
// pages injects nothing.
func Inject(devstate io.Reader, out io.Writer, pages PageSource) error {
	if out == nil {
		out = io.Discard
	}
	p := newParser(devstate, out)
	defer p.release()
	p.onBlockList = func() error { return injectPages(p, pages) }
	if err := p.run(); err != nil {
		return err
	}
	if !p.stopped {
		return errors.New("migstream: RAM section has no MEM_SIZE block list to inject pages after")
	}
	return nil
}

func injectPages(p *parser, src PageSource) error {
	if src == nil {
		return nil
	}
	w := p.w
	last := -1
	var hdr [8 + 1 + 255]byte
	for n := 0; ; n++ {
		pg, err := src.NextPage()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("migstream: page source: %w", err)
		}
		bi, ok := p.blocks[pg.Block]
		if !ok {
			return fmt.Errorf("migstream: injected page %d: RAM block %q is not in the stream's block list", n, pg.Block)
		}
		blk := &p.info.Blocks[bi]
		if pg.Offset%PageSize != 0 || pg.Offset >= blk.Length || blk.Length-pg.Offset < PageSize {
			return fmt.Errorf("migstream: injected page %d: offset 0x%x is not a page inside RAM block %q of length 0x%x", n, pg.Offset, pg.Block, blk.Length)
		}
		if pg.Data != nil && len(pg.Data) != PageSize {
			return fmt.Errorf("migstream: injected page %d: %d bytes of data, want %d", n, len(pg.Data), PageSize)
		}
		flags := uint64(flagPage)
		if pg.Data == nil {
			flags = flagZero
		}
		h := hdr[:8]
		if bi == last {
			flags |= flagContinue
		} else {
			h = append(h, byte(len(blk.ID)))
			h = append(h, blk.ID...)
			last = bi
		}
		binary.BigEndian.PutUint64(h, pg.Offset|flags)
		if pg.Data == nil {
			h = append(h, pg.Fill)
		}
		if _, err := w.Write(h); err != nil {
			return err
		}
		if pg.Data != nil {
			if _, err := w.Write(pg.Data); err != nil {
				return err
			}
		}
		if pg.Data == nil {
			p.info.ZeroPages++
		} else {
			p.info.Pages++
		}
	}
}
