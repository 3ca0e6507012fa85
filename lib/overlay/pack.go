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
	// Log, if set, receives one line saying what "auto" chose and why,
	// and notes about the order.
	Log io.Writer

	// NoManifest writes the overlay as it is made, segment by segment,
	// without a MANIFEST (SPEC.md section 2.10), for packing straight into
	// a link. By default the compressed segments wait in a spool file in
	// TempDir until all are known, and the overlay starts with a MANIFEST
	// that lists them.
	NoManifest bool
	// Order is format.OrderOffset (default: records in stream order) or
	// format.OrderAccess: the records whose ranges Access lists first,
	// by first access, in segments of EarlySegmentSize.
	Order string
	// Access is the access log OrderAccess follows; AccessFile names it
	// in messages.
	Access     *format.AccessLog
	AccessFile string
	// EarlySegmentSize is the raw size of the segments that hold the
	// records Access lists (default 256 KiB, 64 KiB to 16 MiB).
	EarlySegmentSize int
	// Live says the stream is made while it is sent (vm-handoff), so
	// "auto" weighs the encoding speed too.
	Live bool
	// TempDir holds the spool files (default os.TempDir()).
	TempDir string
}

// Defaults of PackOptions.
const (
	DefaultSegmentSize      = 4 << 20
	DefaultEarlySegmentSize = 256 << 10
	MinSegmentSize          = 64 << 10
	DefaultBandwidth        = 100
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
		if o.Order == format.OrderAccess {
			// A guest that touches a page the access log missed waits
			// for the whole segment that holds it: small ones after
			// the early ones too.
			o.SegmentSize = DefaultEarlySegmentSize
		}
	}
	if o.EarlySegmentSize == 0 {
		o.EarlySegmentSize = DefaultEarlySegmentSize
	}
	for _, n := range []int{o.SegmentSize, o.EarlySegmentSize} {
		if n < MinSegmentSize || n > format.MaxSegmentRaw {
			return fmt.Errorf("overlay: segment size %d: want %d-%d bytes", n, MinSegmentSize, format.MaxSegmentRaw)
		}
	}
	switch {
	case o.Order == "":
		o.Order = format.OrderOffset
	case o.Order != format.OrderOffset && o.Order != format.OrderAccess:
		return fmt.Errorf("overlay: order %q: want offset or access", o.Order)
	}
	switch {
	case o.Order == format.OrderAccess && o.Access == nil:
		return fmt.Errorf("overlay: the access order needs an access log")
	case o.Order == format.OrderOffset && o.Access != nil:
		return fmt.Errorf("overlay: an access log goes with the access order, not the offset order")
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
	sums  *payloadSums // when spooled: of the SEGMENT payload (computed by the worker)
	err   error
	done  chan struct{}
}

type packer struct {
	ctx     context.Context
	o       *PackOptions
	w       *format.Writer
	hdr     *format.Header // of the output
	sg      *signing       // nil: not signed
	order   string         // the order the records are packed in
	spool   *segSpool      // nil: segments go straight to w (NoManifest)
	codec   uint8          // 0 until "auto" decided (it sets o.Level too)
	jobs    chan *packJob
	pending []*packJob
	free    [][]byte // raw buffers to reuse
	index   format.Index
}

// Pack reads a diff stream from r and writes it to w as an overlay (SPEC.md
// section 3): HEADER, MANIFEST, SEGMENT frames, INDEX (with NoManifest:
// HEADER, SEGMENT frames as they are made, INDEX). The caller closes w,
// which writes END; Pack enables its sha256 (Writer.HashSHA256), so w must
// be fresh. Records keep their order unless o.Order is access.
func Pack(ctx context.Context, r *format.Reader, w *format.Writer, o PackOptions) error {
	return packOverlay(ctx, r, w, o, nil)
}

func packOverlay(ctx context.Context, r *format.Reader, w *format.Writer, o PackOptions, sg *signing) error {
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindDiff {
		return fmt.Errorf("input is a %s stream; overlay-pack packs a diff stream (the output of mem-diff and disk-diff)", h.Kind)
	}
	return packAs(ctx, r, h, format.KindOverlay, w, o, sg)
}

// PackBase packs a full stream holding a whole base (cloudlet-base export
// writes it: base_id set, disk_base empty, FILE records for the boot
// files) into a base export: segments, INDEX and sha256 as in an overlay.
// A base export has no MANIFEST (o.NoManifest is implied): nothing starts
// early from one (an import needs all of it to check the base's ID), and
// spooling a whole base would only delay it.
func PackBase(ctx context.Context, r *format.Reader, w *format.Writer, o PackOptions) error {
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindFull || h.BaseID == "" || h.VM.DiskBase != "" {
		return fmt.Errorf("input is not a whole base (a full stream with base_id and no disk_base)")
	}
	if o.Order == format.OrderAccess {
		return fmt.Errorf("overlay: a base export is packed in offset order")
	}
	o.NoManifest = true
	return packAs(ctx, r, h, format.KindBase, w, o, nil)
}

func packAs(ctx context.Context, r *format.Reader, h *format.Header, kind string, w *format.Writer, o PackOptions, sg *signing) error {
	if err := o.fill(); err != nil {
		return err
	}
	out := *h
	out.Kind = kind
	out.Producer = append(slices.Clone(h.Producer), o.Producer)
	p := &packer{ctx: ctx, o: &o, w: w, hdr: &out, sg: sg, jobs: make(chan *packJob, o.Workers+2)}
	src, err := newSource(r, h, &o)
	if err != nil {
		return err
	}
	defer src.close()
	p.order = src.order()
	if o.NoManifest {
		if err := p.writeHead(nil); err != nil {
			return err
		}
	} else {
		if p.spool, err = newSegSpool(o.TempDir); err != nil {
			return err
		}
		defer p.spool.close()
	}
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
	var early bool // the current segment holds records the access log lists
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
		rec, e, err := src.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		size := format.FrameHeadSize + len(rec.Payload) + format.FrameTailSize
		limit := o.SegmentSize
		if e {
			limit = o.EarlySegmentSize
		}
		if bw != nil && (e != early || int(bw.Bytes())+size > limit || bw.Frames() >= format.MaxSegmentRecords) {
			if err := flush(); err != nil {
				return err
			}
		}
		if bw == nil {
			seg = bytes.NewBuffer(p.buffer())
			bw = format.NewBodyWriter(seg)
			early = e
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
	if p.spool != nil {
		m := p.spool.manifest(p.order)
		if err := m.Validate(p.hdr); err != nil {
			return fmt.Errorf("overlay: the MANIFEST overlay-pack made does not check (a bug): %w", err)
		}
		if err := p.writeHead(m); err != nil {
			return err
		}
		// Interruptible between segments, as the streaming path is.
		if err := p.spool.copyOut(func(c uint8, raw uint32, comp []byte, mem, disk ranges) error {
			if err := p.ctx.Err(); err != nil {
				return err
			}
			return p.writeSegment(c, raw, comp, mem, disk)
		}); err != nil {
			return err
		}
	}
	p.index.Order = p.order
	if err := p.writeIndex(); err != nil {
		return err
	}
	return p.sign()
}

// checkRecordSize refuses a record no segment can hold; off is where it
// starts in the input.
func checkRecordSize(rec *format.Record, off int64) error {
	size := format.FrameHeadSize + len(rec.Payload) + format.FrameTailSize
	if size > format.MaxSegmentRaw {
		return fmt.Errorf("%s record at input offset %d is %d bytes, larger than a segment can hold (%d); split it upstream", rec.Type, off, size, format.MaxSegmentRaw)
	}
	return nil
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
		if j.err == nil && p.spool != nil {
			j.sums = sumPayload(j.codec, uint32(len(j.raw)), j.comp)
		}
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
	live := 0
	if p.o.Live {
		live = p.o.Workers
	}
	plan, err := planAuto(raws, p.o.Bandwidth, p.o.Workers, live)
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
	seq := len(p.index.Segments)
	if p.spool != nil {
		seq = len(p.spool.segs)
	}
	if j.err != nil {
		return fmt.Errorf("compressing segment %d with %s: %w", seq, codec.Name(j.codec), j.err)
	}
	if len(j.comp)+8 > format.MaxPayload {
		return fmt.Errorf("segment %d compresses to %d bytes, more than a frame holds; use a smaller --segment-size", seq, len(j.comp))
	}
	mem, disk := j.rng.mem.normalize(0), j.rng.disk.normalize(0)
	var err error
	if p.spool != nil {
		if j.sums == nil { // compressed by "auto" while it decided
			j.sums = sumPayload(j.codec, uint32(len(j.raw)), j.comp)
		}
		err = p.spool.add(j.codec, uint32(len(j.raw)), j.comp, j.sums, mem, disk)
	} else {
		err = p.writeSegment(j.codec, uint32(len(j.raw)), j.comp, mem, disk)
	}
	p.free = append(p.free, j.raw, j.comp)
	return err
}

// writeSegment writes a SEGMENT frame to the overlay and notes it in the
// INDEX.
func (p *packer) writeSegment(c uint8, raw uint32, comp []byte, mem, disk ranges) error {
	off := p.w.Bytes()
	check, err := p.w.WriteSegment(c, raw, comp)
	if err != nil {
		return err
	}
	p.index.Segments = append(p.index.Segments, format.SegmentInfo{
		Offset: off, Size: uint64(len(comp)), Raw: uint64(raw), Check: check, Mem: mem, Disk: disk,
	})
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
