package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"

	"cloudlet/format"
	"cloudlet/lib/codec"
	"cloudlet/lib/delta"

	"github.com/cespare/xxhash/v2"
)

// ApplyOptions configures Apply. Zero values take the defaults.
type ApplyOptions struct {
	// Workers decompress in parallel (default GOMAXPROCS).
	Workers int
	// TempDir holds the private scratch folder (default os.TempDir()).
	TempDir string
	// Producer is appended to the header's producer list (default
	// "overlay-apply").
	Producer string
	// KeepCopies passes COPY records through instead of resolving them to
	// data: vm-resume resolves them from the base and from what the stream
	// already wrote, so the data crosses no pipe and overlay-apply keeps
	// no scratch copy of the stream. DELTA records are resolved either way.
	KeepCopies bool
}

// chunk is the most Apply reads from a base or scratch file at once.
const chunk = format.MaxRecordData

// applyJob is one segment on its way through a decompression worker.
type applyJob struct {
	seq    int
	offset int64 // of the SEGMENT frame in the overlay
	check  uint64
	codec  uint8
	comp   []byte
	raw    []byte
	rawLen int
	err    error
	done   chan struct{}
}

type applier struct {
	ctx     context.Context
	w       *format.Writer
	base    Base
	whole   bool   // a base export: no COPY or DELTA, nothing to keep
	copies  bool   // COPY records pass through: nothing to keep either
	what    string // "overlay" or "base export", for messages
	maker   string // the tool that writes it
	val     *format.Validator
	scratch [3]*os.File // by space
	tmp     string
	jobs    chan *applyJob
	pending []*applyJob
	free    [][]byte
	read    []format.SegmentInfo // what was read, to compare with the INDEX
	buf     []byte
	out     []byte
}

// Apply reads an overlay from r (fresh: nothing read yet; Apply enables its
// sha256 check), opens its base with open, and writes to w a diff stream in
// which every COPY and DELTA is resolved to MEM, DISK or zero records. It
// returns nil only after everything verified; the caller then closes w,
// which writes END. On error the caller must not close w (lib/cliutil.Filter
// writes an ERROR record instead).
func Apply(ctx context.Context, r *format.Reader, w *format.Writer, open OpenFunc, o ApplyOptions) error {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Producer == "" {
		o.Producer = "overlay-apply"
	}
	r.HashSHA256()
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindOverlay {
		return fmt.Errorf("input is a %s stream, not an overlay; overlay-apply reads what overlay-pack writes", h.Kind)
	}
	base, err := open(h.BaseID)
	if err != nil {
		return err
	}
	if base.ID() != h.BaseID {
		return fmt.Errorf("wrong base: the overlay was made from base %s, but %s; use the base the overlay was made from", h.BaseID, describe(base))
	}
	if mem, disk := base.Sizes(); mem != h.VM.MemSize || disk != h.VM.DiskSize {
		return fmt.Errorf("the overlay describes a VM with %d bytes of RAM and a %d-byte disk; base %s has %d and %d", h.VM.MemSize, h.VM.DiskSize, base.ID(), mem, disk)
	}
	out := *h
	out.Kind = format.KindDiff
	out.Producer = append(slices.Clone(h.Producer), o.Producer)
	if err := w.WriteHeader(&out); err != nil {
		return err
	}
	a := &applier{ctx: ctx, w: w, base: base, val: r.Validator().InSegment(), tmp: o.TempDir, copies: o.KeepCopies,
		jobs: make(chan *applyJob, o.Workers+2), what: "overlay", maker: "overlay-pack"}
	return a.run(r, o.Workers)
}

// Unpack reads a base export (kind base, cloudlet-base export's output;
// fresh r, Unpack enables its sha256 check) and writes to w the full stream
// packed inside it, base_id kept. Like Apply, it returns nil only after
// everything verified; the caller then closes w.
func Unpack(ctx context.Context, r *format.Reader, w *format.Writer, o ApplyOptions) error {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Producer == "" {
		o.Producer = "cloudlet-base import"
	}
	r.HashSHA256()
	h, err := r.Header()
	if err != nil {
		return err
	}
	if h.Kind != format.KindBase {
		return fmt.Errorf("input is a %s stream, not a base export; cloudlet-base import reads what cloudlet-base export writes", h.Kind)
	}
	out := *h
	out.Kind = format.KindFull
	out.Producer = append(slices.Clone(h.Producer), o.Producer)
	if err := w.WriteHeader(&out); err != nil {
		return err
	}
	a := &applier{ctx: ctx, w: w, whole: true, val: r.Validator().InSegment(), tmp: o.TempDir,
		jobs: make(chan *applyJob, o.Workers+2), what: "base export", maker: "cloudlet-base export"}
	return a.run(r, o.Workers)
}

// run reads the SEGMENT frames and INDEX of a packed stream and writes the
// records inside, resolved, checking the INDEX and sha256 at the end.
func (a *applier) run(r *format.Reader, workers int) error {
	ctx := a.ctx
	defer a.cleanup()
	defer close(a.jobs)
	for range workers {
		go a.worker()
	}
	var index *format.Index
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		off := r.Offset()
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		switch rec.Type {
		case format.TypeSegment:
			if index != nil {
				return fmt.Errorf("%s: SEGMENT at offset %d after the INDEX; it is malformed, make it again with %s", a.what, off, a.maker)
			}
			if err := a.submit(rec, off); err != nil {
				return err
			}
		case format.TypeIndex:
			if index != nil {
				return fmt.Errorf("%s: second INDEX at offset %d; it is malformed, make it again with %s", a.what, off, a.maker)
			}
			index = &format.Index{}
			if err := format.Unmarshal(rec.Payload, index); err != nil {
				return fmt.Errorf("%s: INDEX at offset %d: %w", a.what, off, err)
			}
		default:
			if _, err := format.CheckKnown(rec); err != nil {
				return fmt.Errorf("%s: record at offset %d: %w", a.what, off, err)
			}
		}
	}
	for len(a.pending) > 0 {
		if err := a.emitOldest(); err != nil {
			return err
		}
	}
	if r.End().SHA256 == "" {
		return fmt.Errorf("%s: END carries no sha256, so it cannot be verified; make it again with %s", a.what, a.maker)
	}
	if index != nil {
		if err := a.checkIndex(index); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) cleanup() {
	for _, f := range a.scratch {
		if f != nil {
			f.Close()
		}
	}
}

func (a *applier) worker() {
	for j := range a.jobs {
		j.raw, j.err = codec.DecompressInto(j.codec, j.raw, j.comp, j.rawLen)
		close(j.done)
	}
}

func (a *applier) buffer(n int) []byte {
	if k := len(a.free); k > 0 {
		b := a.free[k-1]
		a.free = a.free[:k-1]
		if cap(b) >= n {
			return b[:0]
		}
	}
	return make([]byte, 0, n)
}

// submit queues a SEGMENT for decompression, first emitting the oldest
// segments while too many are in flight.
func (a *applier) submit(rec *format.Record, off int64) error {
	s, err := rec.SegmentRecord()
	if err != nil {
		return fmt.Errorf("overlay: SEGMENT at offset %d: %w", off, err)
	}
	for len(a.pending) >= cap(a.jobs) {
		if err := a.emitOldest(); err != nil {
			return err
		}
	}
	var head [format.FrameHeadSize]byte
	head[0], head[1] = byte(rec.Type), rec.Flags
	binary.LittleEndian.PutUint32(head[4:], uint32(len(rec.Payload)))
	d := xxhash.New()
	d.Write(head[:])
	d.Write(rec.Payload)
	j := &applyJob{seq: len(a.read), offset: off, check: d.Sum64(), codec: s.Codec, rawLen: int(s.RawLength), done: make(chan struct{})}
	j.comp = append(a.buffer(len(s.Compressed)), s.Compressed...)
	j.raw = a.buffer(j.rawLen)
	a.read = append(a.read, format.SegmentInfo{Offset: uint64(off), Size: uint64(len(s.Compressed)), Raw: uint64(s.RawLength), Check: j.check})
	a.pending = append(a.pending, j)
	a.jobs <- j
	return nil
}

func (a *applier) emitOldest() error {
	j := a.pending[0]
	a.pending = a.pending[1:]
	select {
	case <-j.done:
	case <-a.ctx.Done():
		return a.ctx.Err()
	}
	if j.err != nil {
		return &format.CorruptError{Offset: j.offset, Frame: 0, Type: format.TypeSegment,
			Err: fmt.Errorf("segment %d (SEGMENT frame at offset %d, %s): %w", j.seq, j.offset, codec.Name(j.codec), j.err)}
	}
	var rng segRanges
	br := format.NewBodyReader(j.raw, a.val)
	for {
		if err := a.ctx.Err(); err != nil {
			return err
		}
		at := br.Offset()
		rec, err := br.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			var ce *format.CorruptError
			if errors.As(err, &ce) {
				ce.Err = fmt.Errorf("segment %d (SEGMENT frame at offset %d), at byte %d of its content: %w", j.seq, j.offset, ce.Offset, ce.Err)
				ce.Offset = j.offset
				return ce
			}
			return err
		}
		if err := a.record(rec); err != nil {
			return fmt.Errorf("segment %d (SEGMENT frame at offset %d), %s record at byte %d of its content: %w", j.seq, j.offset, rec.Type, at, err)
		}
		rng.note(rec)
	}
	s := &a.read[j.seq]
	s.Mem, s.Disk = rng.mem.normalize(0), rng.disk.normalize(0)
	a.free = append(a.free, j.comp, j.raw)
	return nil
}

// record writes one record of a segment to the output, resolved.
func (a *applier) record(rec *format.Record) error {
	switch rec.Type {
	case format.TypeDevState, format.TypeMemZero, format.TypeDiskZero, format.TypeFile:
		return a.w.WriteRecord(rec)
	case format.TypeMem, format.TypeDisk:
		off, data, _ := rec.DataRecord()
		sp := format.SpaceMem
		if rec.Type == format.TypeDisk {
			sp = format.SpaceDisk
		}
		if err := a.w.WriteRecord(rec); err != nil {
			return err
		}
		if a.whole || a.copies {
			return nil
		}
		return a.keep(sp, off, data)
	case format.TypeCopy:
		if a.copies {
			return a.w.WriteRecord(rec)
		}
		c, _ := rec.CopyRecord()
		for done := uint64(0); done < c.Length; {
			n := min(c.Length-done, chunk)
			p := a.scratchBuf(int(n))
			var err error
			switch c.Source {
			case format.SourceBaseMem:
				err = readBase(a.base, sourceMem, p, c.SourceOffset+done)
			case format.SourceBaseDisk:
				err = readBase(a.base, sourceDisk, p, c.SourceOffset+done)
			case format.SourceStreamMem:
				err = a.readScratch(format.SpaceMem, p, c.SourceOffset+done)
			case format.SourceStreamDisk:
				err = a.readScratch(format.SpaceDisk, p, c.SourceOffset+done)
			}
			if err != nil {
				return err
			}
			if err := a.put(c.Space, c.Offset+done, p); err != nil {
				return err
			}
			done += n
		}
		return nil
	case format.TypeDelta:
		d, _ := rec.DeltaRecord()
		if d.Length > format.MaxPayload {
			return fmt.Errorf("DELTA of %d bytes at %d is larger than the %d-byte limit", d.Length, d.Offset, format.MaxPayload)
		}
		src := uint8(sourceMem)
		if d.Space == format.SpaceDisk {
			src = sourceDisk
		}
		b := a.scratchBuf(int(d.Length))
		if err := readBase(a.base, src, b, d.Offset); err != nil {
			return err
		}
		if cap(a.out) < int(d.Length) {
			a.out = make([]byte, d.Length)
		}
		out := a.out[:d.Length]
		if err := delta.Decode(d.Method, b, d.Delta, out); err != nil {
			return &format.CorruptError{Type: format.TypeDelta, Err: fmt.Errorf("%w: DELTA at %d+%d: %v", format.ErrMalformed, d.Offset, d.Length, err)}
		}
		return a.put(d.Space, d.Offset, out)
	}
	_, err := format.CheckKnown(rec) // unknown optional records are skipped
	return err
}

func (a *applier) scratchBuf(n int) []byte {
	if cap(a.buf) < n {
		a.buf = make([]byte, n)
	}
	return a.buf[:n]
}

// put writes resolved data for [off, off+len(p)) of space: runs of zero
// pages (sectors on disk) as zero records, the rest as MEM or DISK.
func (a *applier) put(space uint8, off uint64, p []byte) error {
	g := format.PageSize
	if space == format.SpaceDisk {
		g = format.SectorSize
	}
	for len(p) > 0 {
		zero := allZero(p[:g])
		n := g
		for n < len(p) && allZero(p[n:n+g]) == zero {
			n += g
		}
		var err error
		switch {
		case zero && space == format.SpaceMem:
			err = a.w.WriteMemZero(off, uint64(n))
		case zero:
			err = a.w.WriteDiskZero(off, uint64(n))
		case space == format.SpaceMem:
			err = a.w.WriteMem(off, p[:n])
		default:
			err = a.w.WriteDisk(off, p[:n])
		}
		if err == nil && !zero && !a.copies {
			err = a.keep(space, off, p[:n])
		}
		if err != nil {
			return err
		}
		off, p = off+uint64(n), p[n:]
	}
	return nil
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if le64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// keep stores data the stream wrote, for later COPY from this stream, in a
// sparse scratch file (ranges never written read back as zero).
func (a *applier) keep(space uint8, off uint64, data []byte) error {
	f, err := a.scratchFile(space)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(data, int64(off)); err != nil {
		return fmt.Errorf("writing scratch file %s: %w (overlay-apply keeps the overlay's data there; free space in %s or set --tmpdir)", f.Name(), err, a.tmpDir())
	}
	return nil
}

func (a *applier) readScratch(space uint8, p []byte, off uint64) error {
	f, err := a.scratchFile(space)
	if err != nil {
		return err
	}
	n, err := f.ReadAt(p, int64(off))
	if err == io.EOF { // past the last data written: zero records
		clear(p[n:])
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading scratch file %s: %w", f.Name(), err)
	}
	return nil
}

// scratchFile returns the scratch file of a space. It is unlinked as soon
// as it is created, so it vanishes with the process, even on SIGKILL.
func (a *applier) scratchFile(space uint8) (*os.File, error) {
	if f := a.scratch[space]; f != nil {
		return f, nil
	}
	f, err := os.CreateTemp(a.tmp, "overlay-apply-scratch-")
	if err != nil {
		return nil, fmt.Errorf("creating a scratch file: %w (set --tmpdir to a writable folder)", err)
	}
	os.Remove(f.Name())
	a.scratch[space] = f
	return f, nil
}

// checkIndex compares the INDEX with the segments as read.
func (a *applier) checkIndex(idx *format.Index) error {
	bad := func(f string, args ...any) error {
		return &format.CorruptError{Type: format.TypeIndex,
			Err: fmt.Errorf("%w: INDEX does not match the overlay: %s", format.ErrMalformed, fmt.Sprintf(f, args...))}
	}
	if len(idx.Segments) != len(a.read) {
		return bad("it lists %d segments, the overlay has %d", len(idx.Segments), len(a.read))
	}
	for i, want := range idx.Segments {
		got := a.read[i]
		if want.Offset != got.Offset || want.Size != got.Size || want.Raw != got.Raw || want.Check != got.Check {
			return bad("segment %d: index says offset %d, %d bytes (%d raw), check %016x; read offset %d, %d bytes (%d raw), check %016x",
				i, want.Offset, want.Size, want.Raw, want.Check, got.Offset, got.Size, got.Raw, got.Check)
		}
		if !ranges(want.Mem).normalize(0).covers(got.Mem) || !ranges(want.Disk).normalize(0).covers(got.Disk) {
			return bad("segment %d: its memory or disk ranges differ from what the segment holds", i)
		}
	}
	return nil
}

func (a *applier) tmpDir() string {
	if a.tmp != "" {
		return a.tmp
	}
	return os.TempDir()
}
