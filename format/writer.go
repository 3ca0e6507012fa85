package format

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	"github.com/cespare/xxhash/v2"
)

// Writer writes a stream. The first call must be WriteHeader; Close writes
// the END record and flushes, but does not close the underlying writer.
// Errors are sticky: after the first failed write every call returns it.
type Writer struct {
	bw      *bufio.Writer
	err     error
	body    bool // frames only: no preamble, HEADER or END (segment bodies)
	started bool
	closed  bool

	frames uint64
	bytes  uint64
	digest *xxhash.Digest
	fh     *xxhash.Digest // per-frame Check
	sha    hash.Hash
	counts Counts
	head   [FrameHeadSize]byte
	tail   [FrameTailSize]byte
}

// NewWriter returns a Writer that writes a stream to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{bw: bufio.NewWriterSize(w, 256<<10), digest: xxhash.New(), fh: xxhash.New(), counts: Counts{}}
}

// NewBodyWriter returns a Writer for a sequence of frames with no preamble,
// HEADER or END: the raw content of a SEGMENT. Close only flushes.
func NewBodyWriter(w io.Writer) *Writer {
	wr := NewWriter(w)
	wr.body, wr.started = true, true
	return wr
}

// HashSHA256 makes the Writer compute the optional sha256 of the END record.
// Call it before WriteHeader.
func (w *Writer) HashSHA256() { w.sha = sha256.New() }

func (w *Writer) raw(p []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.bw.Write(p); err != nil {
		w.err = err
		return err
	}
	if w.sha != nil {
		w.sha.Write(p)
	}
	w.bytes += uint64(len(p))
	return nil
}

// frame writes one frame whose payload is the concatenation of parts.
func (w *Writer) frame(t Type, flags uint8, parts ...[]byte) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrWriteAfterEnd
	}
	if !w.started {
		return fmt.Errorf("format: %s written before HEADER", t)
	}
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > MaxPayload {
		w.err = fmt.Errorf("%w: %s payload of %d bytes > %d", ErrTooLarge, t, n, MaxPayload)
		return w.err
	}
	w.head = [FrameHeadSize]byte{byte(t), flags}
	binary.LittleEndian.PutUint32(w.head[4:], uint32(n))
	h := w.fh
	h.Reset()
	h.Write(w.head[:])
	for _, p := range parts {
		h.Write(p)
	}
	check := h.Sum64()
	w.raw(w.head[:])
	for _, p := range parts {
		w.raw(p)
	}
	binary.LittleEndian.PutUint64(w.tail[:], check)
	if err := w.raw(w.tail[:]); err != nil {
		return err
	}
	w.digest.Write(w.tail[:])
	w.frames++
	w.counts[t.String()]++
	return nil
}

// WriteHeader writes the preamble and the HEADER record.
func (w *Writer) WriteHeader(h *Header) error {
	if w.started {
		return fmt.Errorf("format: WriteHeader called twice")
	}
	if err := h.Validate(); err != nil {
		return err
	}
	b, err := Marshal(h)
	if err != nil {
		return err
	}
	var pre [PreambleSize]byte
	copy(pre[:], Magic[:])
	binary.LittleEndian.PutUint32(pre[8:], Version)
	if err := w.raw(pre[:]); err != nil {
		return err
	}
	w.digest.Write(pre[:])
	w.started = true
	return w.frame(TypeHeader, FlagCritical, b)
}

// WriteDevState writes QEMU migration stream bytes as DEVSTATE frames.
func (w *Writer) WriteDevState(b []byte) error {
	for len(b) > 0 {
		n := min(len(b), MaxRecordData)
		if err := w.frame(TypeDevState, FlagCritical, b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// WriteMem writes guest RAM bytes at offset off, split into frames of at
// most MaxRecordData bytes.
func (w *Writer) WriteMem(off uint64, data []byte) error { return w.data(TypeMem, off, data) }

// WriteDisk writes disk bytes at offset off.
func (w *Writer) WriteDisk(off uint64, data []byte) error { return w.data(TypeDisk, off, data) }

func (w *Writer) data(t Type, off uint64, data []byte) error {
	var ob [8]byte
	for len(data) > 0 {
		n := min(len(data), MaxRecordData)
		binary.LittleEndian.PutUint64(ob[:], off)
		if err := w.frame(t, FlagCritical, ob[:], data[:n]); err != nil {
			return err
		}
		data, off = data[n:], off+uint64(n)
	}
	return nil
}

// WriteFile writes the file name's content data, starting at offset off
// of the file, as FILE records of at most MaxRecordData bytes.
func (w *Writer) WriteFile(name string, off uint64, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), MaxRecordData)
		if err := w.frame(TypeFile, FlagCritical, putFile(name, off, data[:n])); err != nil {
			return err
		}
		data, off = data[n:], off+uint64(n)
	}
	return nil
}

// WriteMemZero says that length bytes of RAM at off read as zero.
func (w *Writer) WriteMemZero(off, length uint64) error {
	return w.frame(TypeMemZero, FlagCritical, putZero(off, length))
}

// WriteDiskZero says that length bytes of disk at off read as zero.
func (w *Writer) WriteDiskZero(off, length uint64) error {
	return w.frame(TypeDiskZero, FlagCritical, putZero(off, length))
}

// WriteCopy writes a COPY record.
func (w *Writer) WriteCopy(c Copy) error { return w.frame(TypeCopy, FlagCritical, putCopy(c)) }

// WriteDelta writes a DELTA record.
func (w *Writer) WriteDelta(d Delta) error {
	return w.frame(TypeDelta, FlagCritical, putDeltaHead(d), d.Delta)
}

// WriteSegment writes a SEGMENT record and returns its frame's Check.
func (w *Writer) WriteSegment(codec uint8, rawLen uint32, compressed []byte) (check uint64, err error) {
	if err := w.frame(TypeSegment, FlagCritical, putSegmentHead(codec, rawLen), compressed); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(w.tail[:]), nil
}

// WriteMeta writes a msgpack-encoded record of type t (INDEX, or a new
// optional type).
func (w *Writer) WriteMeta(t Type, v any) error {
	b, err := Marshal(v)
	if err != nil {
		return err
	}
	return w.frame(t, t.DefaultFlags(), b)
}

// WriteRecord passes a record through unchanged. HEADER and END cannot be
// passed: a stage writes its own.
func (w *Writer) WriteRecord(r *Record) error {
	if r.Type == TypeHeader || r.Type == TypeEnd {
		return fmt.Errorf("format: cannot pass %s through; use WriteHeader or Close", r.Type)
	}
	return w.frame(r.Type, r.Flags, r.Payload)
}

// WriteError writes an ERROR record saying stage failed with msg, flushes,
// and makes the Writer unusable: a stream with an ERROR has no END.
func (w *Writer) WriteError(stage, msg string) error {
	if !w.started {
		// Nothing written yet: still make the failure visible downstream.
		var pre [PreambleSize]byte
		copy(pre[:], Magic[:])
		binary.LittleEndian.PutUint32(pre[8:], Version)
		w.raw(pre[:])
		w.started = true
	}
	b, err := Marshal(&UpstreamError{Stage: stage, Message: msg})
	if err != nil {
		return err
	}
	err = w.frame(TypeError, FlagCritical, b)
	if err == nil {
		err = w.bw.Flush()
	}
	w.closed = true
	return err
}

// Bytes returns the number of bytes written so far (preamble included).
func (w *Writer) Bytes() uint64 { return w.bytes }

// Frames returns the number of frames written so far.
func (w *Writer) Frames() uint64 { return w.frames }

// Flush writes buffered data to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
	}
	return w.err
}

// Close writes the END record (unless this is a body writer) and flushes.
// It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if !w.body {
		if !w.started {
			return fmt.Errorf("format: Close before WriteHeader")
		}
		end := End{Frames: w.frames, Bytes: w.bytes, Digest: w.digest.Sum64(), Counts: w.counts}
		if w.sha != nil {
			end.SHA256 = hex.EncodeToString(w.sha.Sum(nil))
		}
		b, err := Marshal(&end)
		if err != nil {
			return err
		}
		if err := w.frame(TypeEnd, FlagCritical, b); err != nil {
			return err
		}
	}
	w.closed = true
	return w.Flush()
}
