package diff

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"slices"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/delta"

	"github.com/cespare/xxhash/v2"
)

const (
	runNone = iota
	runRaw
	runZero
	runCopy
)

// Engine diffs one space (memory or disk) of a stream against a base.
type Engine struct {
	Stats Stats

	space  uint8
	bb     []byte // the base's bytes of this space
	idx    *base.Index
	b      *base.Base
	self   *Self
	w      *format.Writer
	opt    Options
	cursor uint64 // memory of a full stream: everything below was seen

	kind    int
	runOff  uint64
	runLen  uint64
	raw     []byte
	copySrc uint8
	copyOff uint64
}

func (e *Engine) size() uint64 { return uint64(len(e.bb)) }

// Data diffs bytes the VM has at off.
func (e *Engine) Data(off uint64, data []byte) error {
	e.Stats.In += uint64(len(data))
	for len(data) > 0 {
		n := min(Page-off%Page, uint64(len(data)))
		if err := e.chunk(off, data[:n]); err != nil {
			return err
		}
		off, data = off+n, data[n:]
	}
	return nil
}

// Zero diffs a range the VM has as zeros.
func (e *Engine) Zero(off, n uint64) error {
	e.Stats.In += n
	for end := off + n; off < end; {
		c := min(Page-off%Page, end-off)
		if base.IsZero(e.bb[off : off+c]) {
			e.Stats.Unchanged += c
			if err := e.flush(); err != nil {
				return err
			}
		} else if err := e.zero(off, c); err != nil {
			return err
		}
		off += c
	}
	return nil
}

func (e *Engine) chunk(off uint64, p []byte) error {
	bp := e.bb[off : off+uint64(len(p))]
	if bytes.Equal(p, bp) {
		e.Stats.Unchanged += uint64(len(p))
		return e.flush()
	}
	if base.IsZero(p) {
		return e.zero(off, uint64(len(p)))
	}
	if len(p) == Page && off%Page == 0 {
		if !e.opt.NoDedup {
			h := xxhash.Sum64(p)
			if loc, ok := e.idx.Lookup(h); ok {
				src, so, from := format.SourceBaseMem, loc, e.b.Mem
				if loc&base.LocDisk != 0 {
					src, so, from = format.SourceBaseDisk, loc&^base.LocDisk, e.b.Disk
				}
				if so+Page <= uint64(len(from)) && bytes.Equal(from[so:so+Page], p) {
					if src == format.SourceBaseMem {
						e.Stats.CopyMem += Page
					} else {
						e.Stats.CopyDisk += Page
					}
					return e.copy(off, src, so)
				}
			}
			if l, ok := e.self.find(h, p); ok {
				e.Stats.CopySelf += Page
				src := format.SourceStreamMem
				if l.space == format.SpaceDisk {
					src = format.SourceStreamDisk
				}
				return e.copy(off, src, l.off)
			}
		}
		if d, method := e.delta(bp, p); method != 0 {
			if err := e.flush(); err != nil {
				return err
			}
			e.Stats.Delta += Page
			e.Stats.DeltaOut += uint64(len(d))
			return e.w.WriteDelta(format.Delta{Space: e.space, Method: method, Offset: off, Length: Page, Delta: d})
		}
		if err := e.self.Add(e.space, off, p); err != nil {
			return err
		}
	}
	return e.rawAppend(off, p)
}

func (e *Engine) delta(bp, p []byte) ([]byte, uint8) {
	switch e.opt.Delta {
	case DeltaXOR:
		if base.IsZero(bp) {
			return nil, 0
		}
		d, err := delta.Encode(format.DeltaXOR, bp, p)
		if err != nil {
			return nil, 0
		}
		return d, format.DeltaXOR
	case DeltaOps:
		d, err := delta.Encode(format.DeltaOps, bp, p)
		if err != nil || len(d) >= len(p) {
			return nil, 0
		}
		return d, format.DeltaOps
	case DeltaBest:
		m, d := delta.Best(bp, p)
		return d, m
	}
	return nil, 0
}

func (e *Engine) rawAppend(off uint64, p []byte) error {
	if e.kind != runRaw || e.runOff+e.runLen != off || e.runLen+uint64(len(p)) > format.MaxRecordData {
		if err := e.flush(); err != nil {
			return err
		}
		e.kind, e.runOff, e.runLen, e.raw = runRaw, off, 0, e.raw[:0]
	}
	e.raw = append(e.raw, p...)
	e.runLen += uint64(len(p))
	e.Stats.Raw += uint64(len(p))
	return nil
}

func (e *Engine) zero(off, n uint64) error {
	e.Stats.Zero += n
	if e.kind == runZero && e.runOff+e.runLen == off {
		e.runLen += n
		return nil
	}
	if err := e.flush(); err != nil {
		return err
	}
	e.kind, e.runOff, e.runLen = runZero, off, n
	return nil
}

func (e *Engine) copy(off uint64, src uint8, from uint64) error {
	if e.kind == runCopy && e.copySrc == src && e.runOff+e.runLen == off && e.copyOff+e.runLen == from {
		e.runLen += Page
		return nil
	}
	if err := e.flush(); err != nil {
		return err
	}
	e.kind, e.runOff, e.runLen, e.copySrc, e.copyOff = runCopy, off, Page, src, from
	return nil
}

// flush writes the pending run.
func (e *Engine) flush() error {
	var err error
	switch e.kind {
	case runRaw:
		if e.space == format.SpaceMem {
			err = e.w.WriteMem(e.runOff, e.raw)
		} else {
			err = e.w.WriteDisk(e.runOff, e.raw)
		}
	case runZero:
		if e.space == format.SpaceMem {
			err = e.w.WriteMemZero(e.runOff, e.runLen)
		} else {
			err = e.w.WriteDiskZero(e.runOff, e.runLen)
		}
	case runCopy:
		err = e.w.WriteCopy(format.Copy{Space: e.space, Source: e.copySrc, Offset: e.runOff, SourceOffset: e.copyOff, Length: e.runLen})
	}
	e.kind = runNone
	return err
}

// gapTo handles memory of a full stream, where pages absent from the input
// are zero: everything between the cursor and off is diffed as zero.
func (e *Engine) gapTo(off uint64) error {
	if off < e.cursor {
		return fmt.Errorf("memory record at %d after one ending at %d: a full stream's memory must come in increasing order", off, e.cursor)
	}
	if off > e.cursor {
		in := e.Stats.In
		if err := e.Zero(e.cursor, off-e.cursor); err != nil {
			return err
		}
		e.Stats.In = in // absent pages are not input
	}
	return nil
}

// Config is what Run needs besides the streams.
type Config struct {
	// Ctx, when set, stops Run between records once it is done (SIGTERM).
	Ctx     context.Context
	Stage   string // "mem-diff" or "disk-diff", recorded in the header
	Space   uint8  // format.SpaceMem or format.SpaceDisk
	Options Options
	// Open returns the base for the stream's base ID (which is "" when the
	// stream does not name one).
	Open func(id string) (*base.Base, error)
}

// Run reads a stream from r and writes it to w with the records of its
// space diffed against the base and every other record passed through.
func Run(r *format.Reader, w *format.Writer, cfg Config) (*Stats, error) {
	h, err := r.Header()
	if err != nil {
		return nil, err
	}
	if h.Kind == format.KindOverlay {
		return nil, fmt.Errorf("input is a packed overlay; %s reads vm-capture's or another diff stage's output", cfg.Stage)
	}
	b, err := cfg.Open(h.BaseID)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	b.Prefault()
	if h.VM.MemSize != b.Meta.VM.MemSize || h.VM.DiskSize != b.Meta.VM.DiskSize {
		return nil, fmt.Errorf("the stream's VM has %d bytes of RAM and a %d-byte disk; base %s has %d and %d",
			h.VM.MemSize, h.VM.DiskSize, b.ID(), b.Meta.VM.MemSize, b.Meta.VM.DiskSize)
	}
	if h.VM.DiskBase != b.Meta.DiskSHA && h.VM.DiskSize > 0 {
		return nil, fmt.Errorf("the stream's disk is relative to image %s, not to base %s's disk %s: capture a VM resumed from this base",
			h.VM.DiskBase, b.ID(), b.Meta.DiskSHA)
	}
	idx, err := b.Index()
	if err != nil {
		return nil, err
	}
	self, err := NewSelf(cfg.Options.ScratchIn)
	if err != nil {
		return nil, err
	}
	defer self.Close()

	out := *h
	gaps := cfg.Space == format.SpaceMem && !h.MemRelative
	out.Kind, out.BaseID = format.KindDiff, b.ID()
	if cfg.Space == format.SpaceMem {
		out.MemRelative = true
	}
	out.Producer = append(slices.Clone(h.Producer), cfg.Stage)
	if err := w.WriteHeader(&out); err != nil {
		return nil, err
	}
	e := &Engine{space: cfg.Space, b: b, idx: idx, self: self, w: w, opt: cfg.Options, raw: make([]byte, 0, format.MaxRecordData)}
	e.bb = b.Mem
	dataT, zeroT, otherData := format.TypeMem, format.TypeMemZero, format.TypeDisk
	if cfg.Space == format.SpaceDisk {
		e.bb = b.Disk
		dataT, zeroT, otherData = format.TypeDisk, format.TypeDiskZero, format.TypeMem
	}
	gapsDone := !gaps
	ctx := cfg.Ctx
	if ctx == nil {
		ctx = context.Background()
	}
	for {
		if err := ctx.Err(); err != nil {
			return &e.Stats, err
		}
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return &e.Stats, err
		}
		switch rec.Type {
		case dataT, zeroT:
			var off, n uint64
			var data []byte
			if rec.Type == dataT {
				off, data, _ = rec.DataRecord()
				n = uint64(len(data))
			} else {
				off, n, _ = rec.ZeroRecord()
			}
			if gaps {
				if gapsDone {
					return &e.Stats, fmt.Errorf("memory record at %d after other records: a full stream's memory must come before its disk", off)
				}
				if err := e.gapTo(off); err != nil {
					return &e.Stats, err
				}
				e.cursor = off + n
			}
			if data != nil {
				err = e.Data(off, data)
			} else {
				err = e.Zero(off, n)
			}
			if err != nil {
				return &e.Stats, err
			}
			continue
		}
		if !gapsDone && rec.Type != format.TypeDevState {
			// memory is over: the rest of RAM was absent, so zero
			if err := e.gapTo(e.size()); err != nil {
				return &e.Stats, err
			}
			gapsDone = true
		}
		if err := e.flush(); err != nil {
			return &e.Stats, err
		}
		if rec.Type == otherData {
			off, data, _ := rec.DataRecord()
			other := format.SpaceDisk
			if cfg.Space == format.SpaceDisk {
				other = format.SpaceMem
			}
			if err := self.AddData(other, off, data); err != nil {
				return &e.Stats, err
			}
		}
		if err := w.WriteRecord(rec); err != nil {
			return &e.Stats, err
		}
	}
	if !gapsDone {
		if err := e.gapTo(e.size()); err != nil {
			return &e.Stats, err
		}
	}
	return &e.Stats, e.flush()
}
