package format

import (
	"encoding/binary"
	"fmt"
	"regexp"
)

// Record is one frame as the Reader returns it. Payload is only valid until
// the next call to Reader.Next; copy it to keep it.
type Record struct {
	Type    Type
	Flags   uint8
	Payload []byte
}

// Critical reports whether the record's CRITICAL flag is set.
func (r *Record) Critical() bool { return r.Flags&FlagCritical != 0 }

// Copy is a COPY record (SPEC.md section 2.3).
type Copy struct {
	Space        uint8
	Source       uint8
	Offset       uint64
	SourceOffset uint64
	Length       uint64
}

// Delta is a DELTA record (SPEC.md section 2.4).
type Delta struct {
	Space  uint8
	Method uint8
	Offset uint64
	Length uint64
	Delta  []byte
}

// Segment is a SEGMENT record (SPEC.md section 2.5).
type Segment struct {
	Codec      uint8
	RawLength  uint32
	Compressed []byte
}

// File is a FILE record (SPEC.md section 2.9): a chunk of a named file
// the VM was started with (kernel, initrd, firmware).
type File struct {
	Name   string
	Offset uint64
	Data   []byte
}

var reFileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// FileRecord decodes a FILE payload.
func (r *Record) FileRecord() (File, error) {
	p := r.Payload
	if r.Type != TypeFile {
		return File{}, malformed("%s is not a FILE record", r.Type)
	}
	if len(p) < 9 || len(p) < 9+int(p[8]) {
		return File{}, malformed("FILE payload of %d bytes is too short", len(p))
	}
	n := int(p[8])
	f := File{Offset: binary.LittleEndian.Uint64(p), Name: string(p[9 : 9+n]), Data: p[9+n:]}
	if !reFileName.MatchString(f.Name) {
		return File{}, malformed("FILE name %q (want letters, digits, . _ -; at most 64)", f.Name)
	}
	if len(f.Data) == 0 {
		return File{}, malformed("FILE %q chunk without data", f.Name)
	}
	return f, nil
}

func putFile(name string, off uint64, data []byte) []byte {
	p := make([]byte, 9+len(name)+len(data))
	binary.LittleEndian.PutUint64(p, off)
	p[8] = byte(len(name))
	copy(p[9:], name)
	copy(p[9+len(name):], data)
	return p
}

const (
	copySize     = 32
	deltaHead    = 24
	segmentHead  = 8
	zeroSize     = 16
	dataHeadSize = 8
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// DataRecord decodes a MEM or DISK payload.
func (r *Record) DataRecord() (off uint64, data []byte, err error) {
	if r.Type != TypeMem && r.Type != TypeDisk {
		return 0, nil, malformed("%s is not a data record", r.Type)
	}
	if len(r.Payload) <= dataHeadSize {
		return 0, nil, malformed("%s payload of %d bytes has no data", r.Type, len(r.Payload))
	}
	return binary.LittleEndian.Uint64(r.Payload), r.Payload[dataHeadSize:], nil
}

// ZeroRecord decodes a MEM_ZERO or DISK_ZERO payload.
func (r *Record) ZeroRecord() (off, length uint64, err error) {
	if r.Type != TypeMemZero && r.Type != TypeDiskZero {
		return 0, 0, malformed("%s is not a zero record", r.Type)
	}
	if len(r.Payload) != zeroSize {
		return 0, 0, malformed("%s payload is %d bytes, want %d", r.Type, len(r.Payload), zeroSize)
	}
	return binary.LittleEndian.Uint64(r.Payload), binary.LittleEndian.Uint64(r.Payload[8:]), nil
}

// CopyRecord decodes a COPY payload.
func (r *Record) CopyRecord() (Copy, error) {
	p := r.Payload
	if r.Type != TypeCopy || len(p) != copySize {
		return Copy{}, malformed("COPY payload is %d bytes, want %d", len(p), copySize)
	}
	if !allZero(p[2:8]) {
		return Copy{}, ErrReservedNonZero
	}
	return Copy{
		Space: p[0], Source: p[1],
		Offset:       binary.LittleEndian.Uint64(p[8:]),
		SourceOffset: binary.LittleEndian.Uint64(p[16:]),
		Length:       binary.LittleEndian.Uint64(p[24:]),
	}, nil
}

// DeltaRecord decodes a DELTA payload. Delta aliases the payload.
func (r *Record) DeltaRecord() (Delta, error) {
	p := r.Payload
	if r.Type != TypeDelta || len(p) < deltaHead {
		return Delta{}, malformed("DELTA payload is %d bytes, want at least %d", len(p), deltaHead)
	}
	if !allZero(p[2:8]) {
		return Delta{}, ErrReservedNonZero
	}
	return Delta{
		Space: p[0], Method: p[1],
		Offset: binary.LittleEndian.Uint64(p[8:]),
		Length: binary.LittleEndian.Uint64(p[16:]),
		Delta:  p[deltaHead:],
	}, nil
}

// SegmentRecord decodes a SEGMENT payload. Compressed aliases the payload.
func (r *Record) SegmentRecord() (Segment, error) {
	p := r.Payload
	if r.Type != TypeSegment || len(p) < segmentHead {
		return Segment{}, malformed("SEGMENT payload is %d bytes, want at least %d", len(p), segmentHead)
	}
	if !allZero(p[1:4]) {
		return Segment{}, ErrReservedNonZero
	}
	s := Segment{Codec: p[0], RawLength: binary.LittleEndian.Uint32(p[4:]), Compressed: p[segmentHead:]}
	if s.RawLength > MaxSegmentRaw {
		return Segment{}, fmt.Errorf("%w: segment raw length %d > %d", ErrTooLarge, s.RawLength, MaxSegmentRaw)
	}
	return s, nil
}

// ErrorRecord decodes an ERROR payload.
func (r *Record) ErrorRecord() (*UpstreamError, error) {
	var e UpstreamError
	if err := Unmarshal(r.Payload, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func putZero(off, length uint64) []byte {
	var b [zeroSize]byte
	binary.LittleEndian.PutUint64(b[:], off)
	binary.LittleEndian.PutUint64(b[8:], length)
	return b[:]
}

func putCopy(c Copy) []byte {
	var b [copySize]byte
	b[0], b[1] = c.Space, c.Source
	binary.LittleEndian.PutUint64(b[8:], c.Offset)
	binary.LittleEndian.PutUint64(b[16:], c.SourceOffset)
	binary.LittleEndian.PutUint64(b[24:], c.Length)
	return b[:]
}

func putDeltaHead(d Delta) []byte {
	var b [deltaHead]byte
	b[0], b[1] = d.Space, d.Method
	binary.LittleEndian.PutUint64(b[8:], d.Offset)
	binary.LittleEndian.PutUint64(b[16:], d.Length)
	return b[:]
}

func putSegmentHead(codec uint8, raw uint32) []byte {
	var b [segmentHead]byte
	b[0] = codec
	binary.LittleEndian.PutUint32(b[4:], raw)
	return b[:]
}

// DataPayload is the payload of a MEM or DISK record of data at off.
func DataPayload(off uint64, data []byte) []byte {
	p := make([]byte, 8+len(data))
	binary.LittleEndian.PutUint64(p, off)
	copy(p[8:], data)
	return p
}

// ZeroPayload is the payload of a MEM_ZERO or DISK_ZERO record.
func ZeroPayload(off, length uint64) []byte { return putZero(off, length) }
