package format

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Reader reads a stream. Next returns each record after the HEADER, after
// verifying its checksum and, for known types, validating it against the
// HEADER. At the END record Next verifies the stream digest and returns
// io.EOF; truncation is io.ErrUnexpectedEOF, an upstream ERROR record is an
// *UpstreamError, anything else wrong is a *CorruptError saying where.
// Errors are sticky.
type Reader struct {
	br        *bufio.Reader
	err       error
	body      bool  // frames only (segment content)
	maxFrames int64 // for a segment's content: MaxSegmentRecords (0: no cap)
	off       int64
	frame     int64

	hdr  *Header
	val  *Validator
	end  *End
	buf  []byte
	cur  Record
	data []byte // unread data of the current record, for Read

	digest *xxhash.Digest
	fh     *xxhash.Digest
	sha    hash.Hash
	head   [FrameHeadSize]byte
}

// NewReader returns a Reader that reads a stream from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 256<<10), digest: xxhash.New(), fh: xxhash.New()}
}

// NewBodyReader reads the frames inside a SEGMENT (no preamble, HEADER or
// END), validating them with v (from Validator.InSegment). Next returns
// io.EOF at the end of b.
func NewBodyReader(b []byte, v *Validator) *Reader {
	rd := NewBodyStreamReader(bytes.NewReader(b), v)
	rd.maxFrames = MaxSegmentRecords
	return rd
}

// NewBodyStreamReader is NewBodyReader for frames read from r (no
// preamble, HEADER or END): Next returns io.EOF where r ends between two
// frames.
func NewBodyStreamReader(r io.Reader, v *Validator) *Reader {
	rd := NewReader(r)
	rd.body, rd.val, rd.hdr = true, v, v.h
	return rd
}

// HashSHA256 makes the Reader check END's sha256 field when it is present
// (overlays). Call it before the first Header or Next.
func (r *Reader) HashSHA256() { r.sha = sha256.New() }

func (r *Reader) fail(t Type, err error) error {
	if r.err == nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		if err == io.ErrUnexpectedEOF && r.hdr != nil && len(r.hdr.Producer) > 0 && !r.body {
			last := r.hdr.Producer[len(r.hdr.Producer)-1]
			err = fmt.Errorf("%w: the stream from %s ended without an END record (did %s fail or get killed?)", io.ErrUnexpectedEOF, last, last)
		}
		var up *UpstreamError
		if errors.As(err, &up) {
			r.err = up
		} else {
			r.err = &CorruptError{Offset: r.off, Frame: r.frame, Type: t, Err: err}
		}
	}
	return r.err
}

func (r *Reader) readFull(p []byte) error {
	_, err := io.ReadFull(r.br, p)
	if err == nil && r.sha != nil {
		r.sha.Write(p)
	}
	return err
}

// Header reads the preamble and the HEADER record if that was not done yet,
// and returns the header.
func (r *Reader) Header() (*Header, error) {
	if r.hdr != nil || r.err != nil {
		return r.hdr, r.err
	}
	var pre [PreambleSize]byte
	if err := r.readFull(pre[:]); err != nil {
		if err == io.EOF {
			return nil, r.fail(0, fmt.Errorf("empty input: %w", io.ErrUnexpectedEOF))
		}
		return nil, r.fail(0, err)
	}
	if !bytes.Equal(pre[:8], Magic[:]) {
		return nil, r.fail(0, fmt.Errorf("%w: got % x, want % x", ErrBadMagic, pre[:8], Magic[:]))
	}
	if v := binary.LittleEndian.Uint32(pre[8:]); v != Version {
		return nil, r.fail(0, fmt.Errorf("%w: version %d, this tool reads version %d", ErrVersion, v, Version))
	}
	if binary.LittleEndian.Uint32(pre[12:]) != 0 {
		return nil, r.fail(0, ErrReservedNonZero)
	}
	r.digest.Write(pre[:])
	r.off = PreambleSize
	rec, err := r.readFrame()
	if err != nil {
		return nil, err
	}
	if rec.Type == TypeError {
		up, err := rec.ErrorRecord()
		if err != nil {
			return nil, r.fail(rec.Type, err)
		}
		return nil, r.fail(rec.Type, up)
	}
	if rec.Type != TypeHeader {
		return nil, r.fail(rec.Type, ErrNoHeader)
	}
	var h Header
	if err := Unmarshal(rec.Payload, &h); err != nil {
		return nil, r.fail(rec.Type, err)
	}
	if err := h.Validate(); err != nil {
		return nil, r.fail(rec.Type, err)
	}
	r.hdr, r.val = &h, NewValidator(&h)
	return r.hdr, nil
}

// readFrame reads and checksums one frame into r.cur.
func (r *Reader) readFrame() (*Record, error) {
	r.frame++
	if err := r.readFull(r.head[:]); err != nil {
		if err == io.EOF && r.body {
			return nil, io.EOF
		}
		return nil, r.fail(0, err)
	}
	t, flags := Type(r.head[0]), r.head[1]
	n := binary.LittleEndian.Uint32(r.head[4:])
	if r.maxFrames > 0 && r.frame > r.maxFrames {
		return nil, r.fail(t, fmt.Errorf("%w: more than %d records in one segment", ErrTooLarge, r.maxFrames))
	}
	if flags&^FlagCritical != 0 || r.head[2] != 0 || r.head[3] != 0 {
		return nil, r.fail(t, ErrReservedNonZero)
	}
	if n > MaxPayload || (isMeta(t) && n > MaxMetaPayload) {
		return nil, r.fail(t, fmt.Errorf("%w: payload of %d bytes", ErrTooLarge, n))
	}
	if cap(r.buf) < int(n)+FrameTailSize {
		r.buf = make([]byte, int(n)+FrameTailSize)
	}
	buf := r.buf[:int(n)+FrameTailSize]
	if err := r.readFull(buf); err != nil {
		return nil, r.fail(t, err)
	}
	r.fh.Reset()
	r.fh.Write(r.head[:])
	r.fh.Write(buf[:n])
	if got, want := r.fh.Sum64(), binary.LittleEndian.Uint64(buf[n:]); got != want {
		return nil, r.fail(t, fmt.Errorf("%w: got %016x, frame says %016x", ErrChecksum, got, want))
	}
	r.cur = Record{Type: t, Flags: flags, Payload: buf[:n]}
	if t != TypeEnd {
		r.digest.Write(buf[n:])
		r.off += int64(FrameHeadSize + int(n) + FrameTailSize)
	}
	return &r.cur, nil
}

func isMeta(t Type) bool {
	return t == TypeHeader || t == TypeEnd || t == TypeError || t == TypeIndex
}

// Next advances to the next record, discarding what is left of the current
// one. It returns io.EOF after a verified END record.
func (r *Reader) Next() (*Record, error) {
	if _, err := r.Header(); err != nil {
		return nil, err
	}
	if r.end != nil {
		return nil, io.EOF
	}
	r.data = nil
	shaBefore := r.shaSum()
	rec, err := r.readFrame()
	if err != nil {
		if err == io.EOF && r.body {
			r.end = &End{}
			r.err = io.EOF
		}
		return nil, err
	}
	switch rec.Type {
	case TypeError:
		up, err := rec.ErrorRecord()
		if err != nil {
			return nil, r.fail(rec.Type, err)
		}
		return nil, r.fail(rec.Type, up)
	case TypeEnd:
		if r.body {
			return nil, r.fail(rec.Type, fmt.Errorf("%w: END inside a segment", ErrMalformed))
		}
		return nil, r.finish(rec, shaBefore)
	}
	if err := r.val.Check(rec); err != nil {
		return nil, r.fail(rec.Type, err)
	}
	switch rec.Type {
	case TypeMem, TypeDisk:
		r.data = rec.Payload[dataHeadSize:]
	case TypeDevState:
		r.data = rec.Payload
	}
	return rec, nil
}

func (r *Reader) shaSum() []byte {
	if r.sha == nil {
		return nil
	}
	return r.sha.Sum(nil)
}

func (r *Reader) finish(rec *Record, shaBefore []byte) error {
	var e End
	if err := Unmarshal(rec.Payload, &e); err != nil {
		return r.fail(rec.Type, err)
	}
	frames, bytes := uint64(r.frame-1), uint64(r.off)
	if e.Frames != frames || e.Bytes != bytes || e.Digest != r.digest.Sum64() {
		return r.fail(rec.Type, fmt.Errorf("%w: END says %d frames, %d bytes, digest %016x; read %d, %d, %016x",
			ErrDigest, e.Frames, e.Bytes, e.Digest, frames, bytes, r.digest.Sum64()))
	}
	if r.sha != nil && e.SHA256 != "" && e.SHA256 != hex.EncodeToString(shaBefore) {
		return r.fail(rec.Type, fmt.Errorf("%w: sha256 mismatch", ErrDigest))
	}
	r.off += int64(FrameHeadSize + len(rec.Payload) + FrameTailSize)
	var one [1]byte
	if n, _ := io.ReadFull(r.br, one[:]); n > 0 {
		r.frame++
		return r.fail(0, ErrTrailing)
	}
	r.end = &e
	r.err = io.EOF
	return io.EOF
}

// Read reads the data of the current MEM, DISK or DEVSTATE record (after
// its offset field). It returns io.EOF at the end of the record's data.
func (r *Reader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

// End returns the verified END record once Next has returned io.EOF.
func (r *Reader) End() *End { return r.end }

// Offset returns the input offset of the next unread byte.
func (r *Reader) Offset() int64 { return r.off }

// Validator returns the Validator the Reader checks records with.
func (r *Reader) Validator() *Validator { return r.val }
