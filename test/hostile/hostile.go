// Package hostile makes the crafted inputs of issue 32 (item 5): streams
// whose every frame passes its checks (Check, END digest and sha256) but
// whose content is made to cost a consumer as much CPU or disk as
// possible per byte of input. Its tests feed them to the real tools
// (overlay-apply, cloudlet-base import) and assert what the fixes of
// issue 32 promise; its benchmark measures the cost per MB of input
// against a real-shaped overlay's. vm-resume is not run: it starts QEMU at
// the HEADER, and the tests' synthetic base (made without QEMU) has no
// device state QEMU could load, so QEMU's refusal, not the input, would
// end the run; what overlay-apply passes on is what vm-resume would take.
//
//	go test ./test/hostile                                   # small sizes
//	go test -run XXX -bench Hostile -benchtime 1x ./test/hostile   # large sizes
//
// The generators build each stream in memory with format.Writer; where
// the Writer's high-level methods cannot express an input (a DEVSTATE
// record of almost 16 MiB, a SIGNER without a signature, a stream without
// END) they use its lower-level ones (WriteRecord, WriteMeta,
// WriteSegment, Flush).
package hostile

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/codec"
	"cloudlet/lib/sign"
)

// Sizes of the inputs in the benchmark (the tests use smaller ones).
const (
	// LargeRanges is the number of memory ranges of ManifestRanges and
	// of records of ZeroRecords: a MANIFEST of about 3 MB.
	LargeRanges = 160000
	// LargeFloodSegments is the number of all-zero DEVSTATE segments of
	// DevStateFlood: 3.2 GB of device state from about 100 KB of input.
	LargeFloodSegments = 200
	// LargeZeroDisk is the disk BaseExportZeroDisk declares and zeroes.
	LargeZeroDisk = 4 << 30
	// LargeHugeMem and LargeHugeDisk are what BaseExportHuge declares.
	LargeHugeMem  = 8 << 30
	LargeHugeDisk = 24 << 30
)

// FloodRecord is the payload size of each DEVSTATE record of
// DevStateFlood: the largest whose frame (head, payload, Check) fits a
// segment of format.MaxSegmentRaw bytes.
const FloodRecord = format.MaxSegmentRaw - format.FrameHeadSize - format.FrameTailSize

// rangeStride is the distance between the memory ranges of
// ManifestRanges and ZeroRecords: one page written, one page not, so
// that no two ranges are adjacent and nothing merges them.
const rangeStride = 2 * format.PageSize

// RangesMem returns the guest memory that n ranges of ManifestRanges or
// records of ZeroRecords need: the base's mem_size must be at least this.
func RangesMem(n int) uint64 { return uint64(n) * rangeStride }

// UnmatchableID is the base_id the base exports claim: the hex sha256 of
// a text, which no base's ID (a sha256 of three sha256 digests) can be.
var UnmatchableID = func() string {
	s := sha256.Sum256([]byte("cloudlet test/hostile: no base has this ID"))
	return hex.EncodeToString(s[:])
}()

// Base is what the overlay generators take from a real base folder: its
// ID, its VM description (base.json's vm) and its device state.
type Base struct {
	ID       string
	VM       format.VMDesc
	DevState []byte
}

// LoadBase reads base.json and devstate.bin of the base folder dir,
// without mapping its memory and disk.
func LoadBase(dir string) (*Base, error) {
	raw, err := os.ReadFile(filepath.Join(dir, base.MetaFile))
	if err != nil {
		return nil, err
	}
	var m base.Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, base.MetaFile), err)
	}
	dev, err := os.ReadFile(filepath.Join(dir, base.DevStateFile))
	if err != nil {
		return nil, err
	}
	return &Base{ID: m.ID, VM: m.VM, DevState: dev}, nil
}

// ManifestRanges returns an overlay of b whose MANIFEST lists, in one
// segment entry, n disjoint 4 KiB memory ranges in descending order, and
// which then has no segment (nor INDEX) before its END: the MANIFEST is
// the whole cost.
func ManifestRanges(b *Base, n int) ([]byte, error) { return manifestRanges(b, n, "") }

// ManifestRangesSigned is ManifestRanges with a SIGNER record naming the
// key keyID right after the HEADER and no HEAD_SIGNATURE (nor any
// SIGNATURE): for overlay-apply --trusted-keys DIR --require-signature
// with keyID trusted.
func ManifestRangesSigned(b *Base, n int, keyID string) ([]byte, error) {
	return manifestRanges(b, n, keyID)
}

func manifestRanges(b *Base, n int, keyID string) ([]byte, error) {
	if err := b.fits(n); err != nil {
		return nil, err
	}
	s, err := newStream(b.header(), keyID)
	if err != nil {
		return nil, err
	}
	// An entry for a segment that never comes: plausible sizes, a sha256
	// of the right length.
	seg := format.ManifestSegment{Size: 4096, Raw: 4096, SHA256: make([]byte, sha256.Size), Mem: descending(n)}
	if err := s.w.WriteMeta(format.TypeManifest, &format.Manifest{Order: format.OrderOffset, Segments: []format.ManifestSegment{seg}}); err != nil {
		return nil, err
	}
	return s.close()
}

// ZeroRecords returns an overlay of b with one SEGMENT (zstd) holding n
// MEM_ZERO records of 4 KiB in descending order, announced by a MANIFEST
// entry with the segment's size, raw size, sha256 and ranges (SPEC.md
// section 2.10), then an INDEX and END. It is a valid overlay: a
// consumer may accept it, at a cost linear in n.
func ZeroRecords(b *Base, n int) ([]byte, error) {
	if err := b.fits(n); err != nil {
		return nil, err
	}
	rs := descending(n)
	raw, err := body(func(w *format.Writer) error {
		for _, r := range rs {
			if err := w.WriteMemZero(r[0], r[1]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	comp, err := codec.Compress(codec.Zstd, codec.DefaultLevel, nil, raw)
	if err != nil {
		return nil, err
	}
	s, err := newStream(b.header(), "")
	if err != nil {
		return nil, err
	}
	m := format.Manifest{Order: format.OrderOffset, Segments: []format.ManifestSegment{manifestEntry(comp, len(raw), rs, nil)}}
	if err := s.w.WriteMeta(format.TypeManifest, &m); err != nil {
		return nil, err
	}
	if err := s.segment(comp, len(raw), rs, nil); err != nil {
		return nil, err
	}
	return s.end()
}

// DevStateFlood returns an overlay of b, without a MANIFEST, whose first
// segment carries b's device state and whose next segs segments each
// hold one all-zero DEVSTATE record of FloodRecord bytes (about 600
// bytes compressed), and which then stops: no INDEX, no END. Each frame
// passes its check; what is wrong is only the amount of device state.
func DevStateFlood(b *Base, segs int) ([]byte, error) { return devStateFlood(b, segs, "") }

// DevStateFloodSigned is DevStateFlood with a SIGNER record naming the
// key keyID and no signature, as ManifestRangesSigned.
func DevStateFloodSigned(b *Base, segs int, keyID string) ([]byte, error) {
	return devStateFlood(b, segs, keyID)
}

func devStateFlood(b *Base, segs int, keyID string) ([]byte, error) {
	s, err := newStream(b.header(), keyID)
	if err != nil {
		return nil, err
	}
	if len(b.DevState) > 0 {
		raw, err := body(func(w *format.Writer) error { return w.WriteDevState(b.DevState) })
		if err != nil {
			return nil, err
		}
		comp, err := codec.Compress(codec.Zstd, codec.DefaultLevel, nil, raw)
		if err != nil {
			return nil, err
		}
		if err := s.segment(comp, len(raw), nil, nil); err != nil {
			return nil, err
		}
	}
	// One record as large as a segment allows; the Writer's WriteDevState
	// would split it into 1 MiB frames, so it is passed as a record.
	raw, err := body(func(w *format.Writer) error {
		return w.WriteRecord(&format.Record{Type: format.TypeDevState, Flags: format.FlagCritical, Payload: make([]byte, FloodRecord)})
	})
	if err != nil {
		return nil, err
	}
	comp, err := codec.Compress(codec.Zstd, codec.DefaultLevel, nil, raw)
	if err != nil {
		return nil, err
	}
	for range segs {
		if err := s.segment(comp, len(raw), nil, nil); err != nil {
			return nil, err
		}
	}
	if err := s.w.Flush(); err != nil { // and no END
		return nil, err
	}
	return s.buf.Bytes(), nil
}

// BaseExportZeroDisk returns a base export of a few hundred bytes: a VM
// with 1 MiB of memory and a disk of diskSize bytes, one segment holding
// one DISK_ZERO record over the whole disk, INDEX, END; its base_id is
// UnmatchableID. An importer that writes the zeros makes diskSize bytes
// of real blocks before it can find the ID wrong.
func BaseExportZeroDisk(diskSize uint64) ([]byte, error) {
	h := exportHeader(1<<20, diskSize)
	if err := h.Validate(); err != nil {
		return nil, err
	}
	raw, err := body(func(w *format.Writer) error { return w.WriteDiskZero(0, diskSize) })
	if err != nil {
		return nil, err
	}
	comp, err := codec.Compress(codec.Zstd, codec.DefaultLevel, nil, raw)
	if err != nil {
		return nil, err
	}
	s, err := newStream(h, "")
	if err != nil {
		return nil, err
	}
	if err := s.segment(comp, len(raw), nil, [][2]uint64{{0, diskSize}}); err != nil {
		return nil, err
	}
	return s.end()
}

// BaseExportHuge returns a base export declaring mem bytes of memory and
// a disk of disk bytes, with no segment and no data record (everything
// reads as zero): HEADER, INDEX, END, base_id UnmatchableID.
func BaseExportHuge(mem, disk uint64) ([]byte, error) {
	s, err := newStream(exportHeader(mem, disk), "")
	if err != nil {
		return nil, err
	}
	return s.end()
}

// header is the HEADER of an overlay of b.
func (b *Base) header() *format.Header {
	return &format.Header{Kind: format.KindOverlay, VM: b.VM, BaseID: b.ID, MemRelative: true, Producer: []string{"test/hostile"}}
}

// fits reports an error unless b's memory holds n ranges.
func (b *Base) fits(n int) error {
	if n < 1 {
		return fmt.Errorf("hostile: %d ranges: want at least 1", n)
	}
	if need := RangesMem(n); b.VM.MemSize < need {
		return fmt.Errorf("hostile: %d ranges need %d bytes of guest memory; base %s has %d", n, need, b.ID, b.VM.MemSize)
	}
	return nil
}

// exportHeader is the HEADER of a base export of a VM with mem bytes of
// memory and a raw disk of disk bytes.
func exportHeader(mem, disk uint64) *format.Header {
	return &format.Header{Kind: format.KindBase, BaseID: UnmatchableID, Producer: []string{"test/hostile"},
		VM: format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: mem, DiskSize: disk, DiskFormat: "raw",
			RAMBlocks: []format.RAMBlock{{ID: "mem", Size: mem}}}}
}

// descending returns n disjoint 4 KiB ranges, highest offset first.
func descending(n int) [][2]uint64 {
	rs := make([][2]uint64, n)
	for i := range rs {
		rs[i] = [2]uint64{uint64(n-1-i) * rangeStride, format.PageSize}
	}
	return rs
}

// body returns the frames fn writes with a body Writer: the raw content
// of a SEGMENT.
func body(fn func(w *format.Writer) error) ([]byte, error) {
	var buf bytes.Buffer
	w := format.NewBodyWriter(&buf)
	if err := fn(w); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// segmentPayload returns the SEGMENT payload of a zstd segment: Codec ||
// Reserved || RawLength || Compressed.
func segmentPayload(comp []byte, rawLen int) []byte {
	p := make([]byte, 8, 8+len(comp))
	p[0] = codec.Zstd
	binary.LittleEndian.PutUint32(p[4:], uint32(rawLen))
	return append(p, comp...)
}

// manifestEntry is the MANIFEST entry of a zstd segment.
func manifestEntry(comp []byte, rawLen int, mem, disk [][2]uint64) format.ManifestSegment {
	p := segmentPayload(comp, rawLen)
	sum := sha256.Sum256(p)
	return format.ManifestSegment{Size: uint64(len(p)), Raw: uint64(rawLen), SHA256: sum[:], Mem: mem, Disk: disk}
}

// stream is a packed stream (overlay or base export) being written.
type stream struct {
	buf   bytes.Buffer
	w     *format.Writer
	index format.Index
}

// newStream starts a packed stream with header h (END with sha256), and a
// SIGNER record naming keyID unless it is empty.
func newStream(h *format.Header, keyID string) (*stream, error) {
	s := &stream{index: format.Index{Segments: []format.SegmentInfo{}, Order: format.OrderOffset}}
	s.w = format.NewWriter(&s.buf)
	s.w.HashSHA256()
	if err := s.w.WriteHeader(h); err != nil {
		return nil, err
	}
	if keyID != "" {
		p, err := sign.SignerPayload(keyID)
		if err != nil {
			return nil, err
		}
		if err := s.w.WriteRecord(&format.Record{Type: format.TypeSigner, Payload: p}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// segment writes a zstd SEGMENT and notes it for the INDEX.
func (s *stream) segment(comp []byte, rawLen int, mem, disk [][2]uint64) error {
	off := s.w.Bytes()
	check, err := s.w.WriteSegment(codec.Zstd, uint32(rawLen), comp)
	if err != nil {
		return err
	}
	s.index.Segments = append(s.index.Segments, format.SegmentInfo{Offset: off, Size: uint64(len(comp)), Raw: uint64(rawLen), Check: check, Mem: mem, Disk: disk})
	return nil
}

// end writes the INDEX and END and returns the stream.
func (s *stream) end() ([]byte, error) {
	if err := s.w.WriteMeta(format.TypeIndex, &s.index); err != nil {
		return nil, err
	}
	return s.close()
}

// close writes END and returns the stream.
func (s *stream) close() ([]byte, error) {
	if err := s.w.Close(); err != nil {
		return nil, err
	}
	return s.buf.Bytes(), nil
}
