package format

import (
	"errors"
	"fmt"
)

// Magic starts every stream (SPEC.md section 1).
var Magic = [8]byte{0x89, 'C', 'L', 'S', '\r', '\n', 0x1a, '\n'}

// Version is the stream format version this package reads and writes.
const Version = 1

const (
	// PreambleSize is the size of Magic || Version u32 || Reserved u32.
	PreambleSize = 16
	// FrameHeadSize is Type u8 || Flags u8 || Reserved u16 || Length u32.
	FrameHeadSize = 8
	// FrameTailSize is the xxhash64 Check after the payload.
	FrameTailSize = 8
	// MaxPayload caps a frame's payload, and so what a reader allocates for
	// one frame whatever its input: big enough for a 16 MiB compressed
	// segment, small enough that a cloudlet can hold a few per core.
	MaxPayload = 16 << 20
	// MaxSegmentRaw caps the decompressed size of one SEGMENT.
	MaxSegmentRaw = 16 << 20
	// MaxRecordData is the largest data part the Writer puts in one MEM or
	// DISK frame; longer writes are split. Readers accept up to MaxPayload.
	MaxRecordData = 1 << 20
	// MaxMetaPayload caps msgpack payloads (HEADER, END, ERROR, INDEX).
	MaxMetaPayload = 4 << 20
	// MaxDevState caps the DEVSTATE bytes of one stream, all records
	// together (SPEC.md section 2.1): a real VM's device state is a few
	// hundred KB; without a cap a stream could make a consumer spool
	// gigabytes of it before its END was found missing.
	MaxDevState = 64 << 20
	// MaxSegmentRecords caps the frames inside one SEGMENT (section 2.5);
	// overlay-pack starts a new segment before it.
	MaxSegmentRecords = 1 << 18
	// MaxManifestRanges caps the memory and disk ranges of a MANIFEST,
	// all segment entries together (section 2.10): 2 GiB of scattered
	// single pages.
	MaxManifestRanges = 1 << 19

	// PageSize is the memory granularity: MEM offsets and lengths are
	// multiples of it.
	PageSize = 4096
	// SectorSize is the disk granularity.
	SectorSize = 512
)

// FlagCritical marks a record a consumer must understand (SPEC.md section 1).
const FlagCritical = 0x01

// Type is a record type.
type Type uint8

// Record types (SPEC.md section 2).
const (
	TypeHeader    Type = 0x01
	TypeDevState  Type = 0x02
	TypeMem       Type = 0x10
	TypeMemZero   Type = 0x11
	TypeDisk      Type = 0x20
	TypeDiskZero  Type = 0x21
	TypeCopy      Type = 0x30
	TypeDelta     Type = 0x31
	TypeSegment   Type = 0x40
	TypeIndex     Type = 0x41
	TypeSigner    Type = 0x42 // SPEC.md section 6.1
	TypeSignature Type = 0x43
	TypeManifest  Type = 0x44 // SPEC.md section 2.10
	// TypeHeadSignature signs an overlay's head (SPEC.md section 6.1).
	TypeHeadSignature Type = 0x45
	TypeFile          Type = 0x50
	TypeError         Type = 0x7E
	TypeEnd           Type = 0x7F
)

var typeNames = map[Type]string{
	TypeHeader:        "HEADER",
	TypeDevState:      "DEVSTATE",
	TypeMem:           "MEM",
	TypeMemZero:       "MEM_ZERO",
	TypeDisk:          "DISK",
	TypeDiskZero:      "DISK_ZERO",
	TypeCopy:          "COPY",
	TypeDelta:         "DELTA",
	TypeSegment:       "SEGMENT",
	TypeIndex:         "INDEX",
	TypeSigner:        "SIGNER",
	TypeSignature:     "SIGNATURE",
	TypeManifest:      "MANIFEST",
	TypeHeadSignature: "HEAD_SIGNATURE",
	TypeFile:          "FILE",
	TypeError:         "ERROR",
	TypeEnd:           "END",
}

// String returns the SPEC.md name of t, or TYPE_0xNN for unknown types.
func (t Type) String() string {
	if n, ok := typeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("TYPE_0x%02X", uint8(t))
}

// Known reports whether this version of the format defines t.
func (t Type) Known() bool { _, ok := typeNames[t]; return ok }

// DefaultFlags returns the flags the Writer sets for a known type.
func (t Type) DefaultFlags() uint8 {
	if t == TypeIndex || t == TypeSigner || t == TypeSignature || t == TypeManifest || t == TypeHeadSignature || !t.Known() {
		return 0
	}
	return FlagCritical
}

// Stream kinds (SPEC.md section 3).
const (
	KindFull    = "full"
	KindDiff    = "diff"
	KindOverlay = "overlay"
	KindBase    = "base"
)

// Packed reports whether streams of kind carry their records in SEGMENT
// frames (an overlay, a base export).
func Packed(kind string) bool { return kind == KindOverlay || kind == KindBase }

// Limits of FILE records (SPEC.md section 2.9).
const (
	MaxFileSize  = 256 << 20
	MaxFileNames = 16
)

// Spaces and sources of COPY records (SPEC.md section 2.3).
const (
	SpaceMem  uint8 = 1
	SpaceDisk uint8 = 2

	SourceBaseMem    uint8 = 1
	SourceBaseDisk   uint8 = 2
	SourceStreamMem  uint8 = 3
	SourceStreamDisk uint8 = 4
)

// Delta methods (SPEC.md section 2.4).
const (
	DeltaXOR uint8 = 1
	DeltaOps uint8 = 2
)

// Segment codecs (SPEC.md section 2.5).
const (
	CodecZstd uint8 = 1
	CodecXZ   uint8 = 2
)

// Sentinel errors. Readers wrap them in *CorruptError with the position.
var (
	ErrBadMagic        = errors.New("format: not a cloudlet stream (bad magic)")
	ErrVersion         = errors.New("format: unsupported version")
	ErrChecksum        = errors.New("format: frame checksum mismatch")
	ErrTooLarge        = errors.New("format: length exceeds limit")
	ErrTrailing        = errors.New("format: trailing data after end record")
	ErrDigest          = errors.New("format: end record does not match the stream (frames dropped, duplicated or reordered)")
	ErrNoHeader        = errors.New("format: stream does not start with a HEADER record")
	ErrMalformed       = errors.New("format: malformed record")
	ErrOverlap         = errors.New("format: overlapping record (a range is written twice)")
	ErrOutOfRange      = errors.New("format: record outside the VM's memory or disk")
	ErrUnknownCrit     = errors.New("format: unknown critical record type")
	ErrWriteAfterEnd   = errors.New("format: write after Close")
	ErrDanglingCopy    = errors.New("format: COPY refers to stream data not written before it")
	ErrMisaligned      = errors.New("format: misaligned offset or length")
	ErrReservedNonZero = errors.New("format: reserved bits are not zero")
)

// CorruptError says where in the input a stream went wrong. It wraps one of
// the sentinel errors or io.ErrUnexpectedEOF.
type CorruptError struct {
	Offset int64 // byte offset of the frame in the input
	Frame  int64 // frame number counted from 1 (the HEADER); 0 for the preamble
	Type   Type  // frame type, 0 if not yet known
	Err    error // what was wrong
}

func (e *CorruptError) Error() string {
	if e.Frame == 0 {
		return fmt.Sprintf("format: offset %d: %v", e.Offset, e.Err)
	}
	if e.Type == 0 {
		return fmt.Sprintf("format: frame %d at offset %d: %v", e.Frame, e.Offset, e.Err)
	}
	return fmt.Sprintf("format: frame %d (%s) at offset %d: %v", e.Frame, e.Type, e.Offset, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// UpstreamError is returned by Reader.Next when the stream carries an ERROR
// record: an earlier stage failed after it started writing.
type UpstreamError struct {
	Stage   string `msgpack:"stage"`
	Message string `msgpack:"message"`
}

func (e *UpstreamError) Error() string {
	return fmt.Sprintf("upstream %s failed: %s", e.Stage, e.Message)
}
