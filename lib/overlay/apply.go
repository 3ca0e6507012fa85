package overlay

import (
	"bytes"
	"context"
	"crypto/sha256"
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
	// Verifier is the Verifier the overlay is read through, if any
	// (overlay-apply --trusted-keys). The output MANIFEST names the key
	// of a verified head; when signatures are required (VerifyOptions.
	// Require), an overlay whose head is not signed gets no output
	// MANIFEST, so that nothing starts early from it.
	Verifier *Verifier
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
	sha256 []byte // the MANIFEST's for this segment, nil without one
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
	out     *format.Header   // of the output, written after the overlay's head
	ver     *Verifier        // the overlay is read through it, if not nil
	man     *format.Manifest // the overlay's MANIFEST, if any
	jobs    chan *applyJob
	pending []*applyJob
	free    [][]byte
	read    []format.SegmentInfo // what was read, to compare with the INDEX
	buf     []byte
	res     []byte // a resolved DELTA
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
	a := &applier{ctx: ctx, w: w, base: base, val: r.Validator().InSegment(), tmp: o.TempDir, copies: o.KeepCopies,
		out: &out, ver: o.Verifier, jobs: make(chan *applyJob, o.Workers+2), what: "overlay", maker: "overlay-pack"}
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
	a := &applier{ctx: ctx, w: w, whole: true, val: r.Validator().InSegment(), tmp: o.TempDir,
		out: &out, jobs: make(chan *applyJob, o.Workers+2), what: "base export", maker: "cloudlet-base export"}
	return a.run(r, o.Workers)
}

// run reads the head of a packed stream (SIGNER, MANIFEST,
// HEAD_SIGNATURE), writes the output's HEADER and MANIFEST, then reads the
// SEGMENT frames and INDEX and writes the records inside, resolved,
// checking the MANIFEST, the INDEX and sha256 at the end.
func (a *applier) run(r *format.Reader, workers int) error {
	ctx := a.ctx
	defer a.cleanup()
	defer close(a.jobs)
	for range workers {
		go a.worker()
	}
	var index *format.Index
	head := true // still reading the overlay's head
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
		case format.TypeSigner, format.TypeHeadSignature:
			continue // the Verifier checks them, if asked to
		case format.TypeManifest:
			// The Reader's Validator accepts it only in the head.
			h, _ := r.Header()
			if a.man, err = rec.ManifestRecord(h); err != nil {
				return fmt.Errorf("%s: MANIFEST at offset %d: %w", a.what, off, err)
			}
			for i := range a.man.Segments {
				s := &a.man.Segments[i]
				s.Mem, s.Disk = ranges(s.Mem).normalize(0), ranges(s.Disk).normalize(0)
			}
			continue
		}
		if head {
			if err := a.writeHead(); err != nil {
				return err
			}
			head = false
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
			if err := a.allListed(off); err != nil {
				return err
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
	if head {
		if err := a.writeHead(); err != nil {
			return err
		}
	}
	if err := a.allListed(r.Offset()); err != nil {
		return err
	}
	for len(a.pending) > 0 {
		if err := a.emitOldest(); err != nil {
			return err
		}
	}
	if r.End().SHA256 == "" {
		return fmt.Errorf("%s: END carries no sha256, so it cannot be verified; make it again with %s", a.what, a.maker)
	}
	if err := r.Validator().CheckPromised(); err != nil {
		return &format.CorruptError{Offset: r.Offset(), Type: format.TypeManifest, Err: fmt.Errorf("%s: %w", a.what, err)}
	}
	if index != nil {
		if err := a.checkIndex(index); err != nil {
			return err
		}
	}
	return nil
}

// writeHead writes the output's HEADER and, for an overlay with a
// MANIFEST, the diff stream's MANIFEST: the union of the ranges the
// segments write, so that vm-resume knows them before any record. When
// signatures are required and the overlay's head was not signed and
// verified, there is none: early start then refuses the stream.
func (a *applier) writeHead() error {
	if err := a.w.WriteHeader(a.out); err != nil {
		return err
	}
	if a.man == nil || a.whole {
		return nil
	}
	m := format.Manifest{Order: a.man.Order}
	if m.Order == "" {
		m.Order = format.OrderOffset
	}
	if a.ver != nil {
		m.Signer = a.ver.HeadSigner()
		if m.Signer == "" && a.ver.o.Require {
			return nil
		}
	}
	mem, disk := a.man.Ranges()
	m.Mem, m.Disk = ranges(mem).normalize(0), ranges(disk).normalize(0)
	return a.w.WriteMeta(format.TypeManifest, &m)
}

// allListed refuses an overlay that has fewer segments than its MANIFEST
// lists; off is where the next segment should have been.
func (a *applier) allListed(off int64) error {
	if a.man == nil || len(a.read) >= len(a.man.Segments) {
		return nil
	}
	return &format.CorruptError{Offset: off, Type: format.TypeSegment, Err: fmt.Errorf(
		"segment %d is missing at offset %d: the MANIFEST lists %d segments, the %s has %d (%w)",
		len(a.read), off, len(a.man.Segments), a.what, len(a.read), format.ErrMalformed)}
}

// checkListed compares a SEGMENT with its entry in the MANIFEST (its
// sha256 is the worker's to check, before it decompresses the segment).
func (a *applier) checkListed(seq int, off int64, payload []byte, raw uint32) error {
	if a.man == nil {
		return nil
	}
	if seq >= len(a.man.Segments) {
		return a.unlisted(seq, off, "the MANIFEST lists only %d segments", len(a.man.Segments))
	}
	want := a.man.Segments[seq]
	if uint64(len(payload)) != want.Size || uint64(raw) != want.Raw {
		return a.unlisted(seq, off, "%d bytes (%d raw), the MANIFEST says %d (%d raw)", len(payload), raw, want.Size, want.Raw)
	}
	return nil
}

// unlisted is the error for a segment that does not match the MANIFEST.
func (a *applier) unlisted(seq int, off int64, f string, args ...any) error {
	return &format.CorruptError{Offset: off, Type: format.TypeSegment, Err: fmt.Errorf(
		"segment %d (SEGMENT frame at offset %d) does not match the MANIFEST: %s; the %s was altered or damaged (%w)",
		seq, off, fmt.Sprintf(f, args...), a.what, format.ErrMalformed)}
}

func (a *applier) cleanup() {
	for _, f := range a.scratch {
		if f != nil {
			f.Close()
		}
	}
}

func (a *applier) worker() {
	h := sha256.New()
	for j := range a.jobs {
		if j.sha256 != nil {
			// The SEGMENT payload: Codec || Reserved (zero, checked) ||
			// RawLength || Compressed.
			head := segmentHead(j.codec, uint32(j.rawLen))
			h.Reset()
			h.Write(head[:])
			h.Write(j.comp)
			if got := h.Sum(nil); !bytes.Equal(got, j.sha256) {
				j.err = a.unlisted(j.seq, j.offset, "sha256 %x, the MANIFEST says %x", got, j.sha256)
				close(j.done)
				continue
			}
		}
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
	if err := a.checkListed(len(a.read), off, rec.Payload, s.RawLength); err != nil {
		return err
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
	if a.man != nil {
		j.sha256 = a.man.Segments[j.seq].SHA256
	}
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
	var unlisted *format.CorruptError
	if errors.As(j.err, &unlisted) {
		return j.err // the worker refused it before decompressing
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
	if a.man != nil {
		if m := a.man.Segments[j.seq]; !ranges(m.Mem).covers(s.Mem) || !ranges(m.Disk).covers(s.Disk) {
			return &format.CorruptError{Offset: j.offset, Type: format.TypeSegment, Err: fmt.Errorf(
				"segment %d (SEGMENT frame at offset %d) writes memory or disk ranges its MANIFEST entry does not list (%w)",
				j.seq, j.offset, format.ErrMalformed)}
		}
	}
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
		if cap(a.res) < int(d.Length) {
			a.res = make([]byte, d.Length)
		}
		out := a.res[:d.Length]
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
	f, err := tempFile(a.tmp, "overlay-apply-scratch-")
	if err != nil {
		return nil, err
	}
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
