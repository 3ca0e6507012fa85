package overlay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"

	"cloudlet/format"
	"cloudlet/lib/codec"
)

// PackOptions configures Pack. Zero values take the defaults.
type PackOptions struct {
	// Codec is "zstd", "xz" or "auto" (default zstd).
	Codec string
	// Level is the codec's compression level (codec.Levels; 0: the codec's
	// default, zstd 3 and xz 9). "auto" picks it and wants 0.
	Level int
	// SegmentSize is the raw size of a segment (default 4 MiB, at most
	// format.MaxSegmentRaw, at least 64 KiB).
	SegmentSize int
	// Bandwidth is the link speed in Mbit/s that "auto" plans for
	// (default 100).
	Bandwidth float64
	// Workers compress in parallel (default GOMAXPROCS).
	Workers int
	// Producer is appended to the header's producer list (default
	// "overlay-pack").
	Producer string
	// Log, if set, receives one line saying what "auto" chose and why.
	Log io.Writer
}

// Defaults of PackOptions.
const (
	DefaultSegmentSize = 4 << 20
	MinSegmentSize     = 64 << 10
	DefaultBandwidth   = 100
)

func (o *PackOptions) fill() error {
	if o.Codec == "" {
		o.Codec = "zstd"
	}
	if o.Codec == "auto" {
		if o.Level != 0 {
			return fmt.Errorf("overlay: level %d with codec auto: auto picks the level itself", o.Level)
		}
	} else {
		c, err := codec.Parse(o.Codec)
		if err != nil {
			return fmt.Errorf("overlay: codec %q: want zstd, xz or auto", o.Codec)
		}
		lo, def, hi := codec.Levels(c)
		if o.Level == 0 {
			o.Level = def
		}
		if o.Level < lo || o.Level > hi {
			return fmt.Errorf("overlay: %s level %d: want %d-%d", o.Codec, o.Level, lo, hi)
		}
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = DefaultSegmentSize
	}
	if o.SegmentSize < MinSegmentSize || o.SegmentSize > format.MaxSegmentRaw {
		return fmt.Errorf("overlay: segment size %d: want %d-%d bytes", o.SegmentSize, MinSegmentSize, format.MaxSegmentRaw)
	}
	if o.Bandwidth == 0 {
		o.Bandwidth = DefaultBandwidth
	}
	if o.Bandwidth < 0 {
		return fmt.Errorf("overlay: bandwidth %g Mbit/s: want a positive number", o.Bandwidth)
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Producer == "" {
		o.Producer = "overlay-pack"
	}
	return nil
}

// packJob is one segment on its way through a compression worker.
type packJob struct {
	raw   []byte
	rng   segRanges
	codec uint8
	comp  []byte
	err   error
	done  chan struct{}
}

type packer struct {
	ctx     context.Context
	o       *PackOptions
	w       *format.Writer
	codec   uint8 // 0 until "auto" decided (it sets o.Level too)
	jobs    chan *packJob
	pending []*packJob
	free    [][]byte // raw buffers to reuse
	index   format.Index
}

// Pack reads a diff stream from r and writes it to w as an overlay (SPEC.md
// section 3): HEADER, SEGMENT frames, INDEX. The caller closes w, which
// writes END; Pack enables its sha256 (Writer.HashSHA256), so w must be
// fresh. Records keep their order.
func Pack(ctx context.Context, r *format.Reader, w *format.Writer, o PackOptions) error {
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindDiff {
		return fmt.Errorf("input is a %s stream; overlay-pack packs a diff stream (the output of mem-diff and disk-diff)", h.Kind)
	}
	return packAs(ctx, r, h, format.KindOverlay, w, o)
}

// PackBase packs a full stream holding a whole base (cloudlet-base export
// writes it: base_id set, disk_base empty, FILE records for the boot
// files) into a base export: segments, INDEX and sha256 as in an overlay.
func PackBase(ctx context.Context, r *format.Reader, w *format.Writer, o PackOptions) error {
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindFull || h.BaseID == "" || h.VM.DiskBase != "" {
		return fmt.Errorf("input is not a whole base (a full stream with base_id and no disk_base)")
	}
	return packAs(ctx, r, h, format.KindBase, w, o)
}

func packAs(ctx context.Context, r *format.Reader, h *format.Header, kind string, w *format.Writer, o PackOptions) error {
	if err := o.fill(); err != nil {
		return err
	}
	out := *h
	out.Kind = kind
	out.Producer = append(slices.Clone(h.Producer), o.Producer)
	w.HashSHA256()
	if err := w.WriteHeader(&out); err != nil {
		return err
	}
	p := &packer{ctx: ctx, o: &o, w: w, jobs: make(chan *packJob, o.Workers+2)}
	if o.Codec != "auto" {
		p.codec, _ = codec.Parse(o.Codec)
	}
	defer close(p.jobs)
	for range o.Workers {
		go p.worker()
	}
	var seg *bytes.Buffer
	var bw *format.Writer
	var rng segRanges
	flush := func() error {
		if bw == nil {
			return nil
		}
		if err := bw.Close(); err != nil {
			return err
		}
		raw := seg.Bytes()
		bw = nil
		j := &packJob{raw: raw, rng: rng, done: make(chan struct{})}
		rng = segRanges{}
		return p.submit(j)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		size := format.FrameHeadSize + len(rec.Payload) + format.FrameTailSize
		if size > format.MaxSegmentRaw {
			return fmt.Errorf("%s record at input offset %d is %d bytes, larger than a segment can hold (%d); split it upstream", rec.Type, r.Offset()-int64(size), size, format.MaxSegmentRaw)
		}
		if bw != nil && int(bw.Bytes())+size > o.SegmentSize {
			if err := flush(); err != nil {
				return err
			}
		}
		if bw == nil {
			seg = bytes.NewBuffer(p.buffer())
			bw = format.NewBodyWriter(seg)
		}
		if err := bw.WriteRecord(rec); err != nil {
			return err
		}
		rng.note(rec)
	}
	if err := flush(); err != nil {
		return err
	}
	if p.codec == 0 && len(p.pending) > 0 {
		if err := p.decide(); err != nil { // a stream shorter than the sample
			return err
		}
	}
	for len(p.pending) > 0 {
		if err := p.writeOldest(); err != nil {
			return err
		}
	}
	return p.writeIndex()
}

func (p *packer) buffer() []byte {
	if k := len(p.free); k > 0 {
		b := p.free[k-1]
		p.free = p.free[:k-1]
		return b[:0]
	}
	return make([]byte, 0, p.o.SegmentSize+format.MaxRecordData)
}

func (p *packer) worker() {
	for j := range p.jobs {
		j.comp, j.err = codec.Compress(j.codec, p.o.Level, j.comp, j.raw)
		close(j.done)
	}
}

// submit queues a segment for compression, first writing the oldest
// segments while too many are in flight. Under "auto", the first
// AutoSample segments wait until they decide.
func (p *packer) submit(j *packJob) error {
	if p.codec == 0 {
		p.pending = append(p.pending, j)
		if len(p.pending) < AutoSample {
			return nil
		}
		return p.decide()
	}
	for len(p.pending) >= cap(p.jobs) {
		if err := p.writeOldest(); err != nil {
			return err
		}
	}
	j.codec = p.codec
	j.comp = p.buffer()
	p.pending = append(p.pending, j)
	p.jobs <- j
	return nil
}

// decide picks codec and level for "auto" (planAuto) from the segments
// waiting in pending, which it compresses with the choice.
func (p *packer) decide() error {
	raws := make([][]byte, len(p.pending))
	size := 0
	for i, j := range p.pending {
		raws[i] = j.raw
		size += len(j.raw)
	}
	plan, err := planAuto(raws, p.o.Bandwidth, p.o.Workers)
	if err != nil {
		return err
	}
	best := plan[0]
	p.codec, p.o.Level = best.Codec, best.Level
	if p.o.Log != nil {
		fmt.Fprint(p.o.Log, describePlan(plan, p.o.Bandwidth, len(raws), size, p.o.Workers))
	}
	for i, j := range p.pending {
		j.codec, j.comp = best.Codec, best.comp[i]
		close(j.done)
	}
	return nil
}

func (p *packer) writeOldest() error {
	j := p.pending[0]
	p.pending = p.pending[1:]
	select {
	case <-j.done:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	if j.err != nil {
		return fmt.Errorf("compressing segment %d with %s: %w", len(p.index.Segments), codec.Name(j.codec), j.err)
	}
	if len(j.comp)+8 > format.MaxPayload {
		return fmt.Errorf("segment %d compresses to %d bytes, more than a frame holds; use a smaller --segment-size", len(p.index.Segments), len(j.comp))
	}
	off := p.w.Bytes()
	check, err := p.w.WriteSegment(j.codec, uint32(len(j.raw)), j.comp)
	if err != nil {
		return err
	}
	p.index.Segments = append(p.index.Segments, format.SegmentInfo{
		Offset: off, Size: uint64(len(j.comp)), Raw: uint64(len(j.raw)), Check: check,
		Mem: j.rng.mem.normalize(0), Disk: j.rng.disk.normalize(0),
	})
	p.free = append(p.free, j.raw, j.comp)
	return nil
}

// writeIndex writes the INDEX. If it would exceed format.MaxMetaPayload
// (hundreds of thousands of scattered ranges), ranges closer than a gap
// are merged, the gap growing until it fits: the INDEX then says which
// areas a segment touches rather than each range; overlay-apply checks
// that what it read lies inside them.
func (p *packer) writeIndex() error {
	for gap := uint64(0); ; gap = max(4096, gap*4) {
		if gap > 0 {
			for i := range p.index.Segments {
				s := &p.index.Segments[i]
				s.Mem = ranges(s.Mem).normalize(gap)
				s.Disk = ranges(s.Disk).normalize(gap)
			}
		}
		b, err := format.Marshal(&p.index)
		if err != nil {
			return err
		}
		if len(b) <= format.MaxMetaPayload {
			return p.w.WriteMeta(format.TypeIndex, &p.index)
		}
		if gap > format.MaxDiskSize {
			return fmt.Errorf("overlay: INDEX of %d segments does not fit %d bytes; use a larger --segment-size", len(p.index.Segments), format.MaxMetaPayload)
		}
	}
}
