package codec

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	"cloudlet/format"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Codecs, as in format.CodecZstd and format.CodecXZ.
const (
	Zstd = format.CodecZstd
	XZ   = format.CodecXZ
)

// Levels accepted by Compress; DefaultLevel is what overlay-pack uses.
const (
	MinLevel     = 1
	MaxLevel     = 19
	DefaultLevel = 3
)

// DecodeSpeed is the measured single-core decode speed of each codec in
// bytes of raw output per second (Go, amd64): zstd about 1384 MB/s, xz
// about 16.5 MB/s.
var DecodeSpeed = map[uint8]float64{Zstd: 1384e6, XZ: 16.5e6}

// ErrCorrupt is wrapped by Decompress errors caused by the input.
var ErrCorrupt = errors.New("codec: corrupt segment")

// Name returns "zstd", "xz" or "codec N".
func Name(c uint8) string {
	switch c {
	case Zstd:
		return "zstd"
	case XZ:
		return "xz"
	}
	return fmt.Sprintf("codec %d", c)
}

// Parse returns the codec named s ("zstd" or "xz").
func Parse(s string) (uint8, error) {
	switch s {
	case "zstd":
		return Zstd, nil
	case "xz":
		return XZ, nil
	}
	return 0, fmt.Errorf("codec: unknown codec %q (want zstd or xz)", s)
}

// Compress appends the compressed form of src to dst. level runs from
// MinLevel to MaxLevel as in the zstd command line; for zstd it maps to the
// four klauspost encoder levels (zstd.EncoderLevelFromZstd); xz has one
// setting, the hash-table match finder (ulikunitz/xz's binary tree is about
// 100 times slower and, in v0.5.17, wrote distances its own reader rejects
// for a 1 MiB input). The xz dictionary is the segment's size (at least 64 KiB,
// at most format.MaxSegmentRaw): a segment is compressed on its own, so a
// larger dictionary only costs memory.
func Compress(codec uint8, level int, dst, src []byte) ([]byte, error) {
	if level < MinLevel || level > MaxLevel {
		return nil, fmt.Errorf("codec: level %d out of range %d-%d", level, MinLevel, MaxLevel)
	}
	if len(src) > format.MaxSegmentRaw {
		return nil, fmt.Errorf("codec: segment of %d bytes exceeds the %d-byte limit", len(src), format.MaxSegmentRaw)
	}
	switch codec {
	case Zstd:
		l := zstd.EncoderLevelFromZstd(level)
		p := &encoders[l]
		enc, _ := p.Get().(*zstd.Encoder)
		if enc == nil {
			var err error
			enc, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(1))
			if err != nil {
				return nil, err
			}
		}
		dst = enc.EncodeAll(src, dst)
		p.Put(enc)
		return dst, nil
	case XZ:
		cfg := xz.WriterConfig{DictCap: min(max(len(src), 64<<10), format.MaxSegmentRaw), CheckSum: xz.CRC32, Matcher: lzma.HashTable4}
		buf := bytes.NewBuffer(dst)
		w, err := cfg.NewWriter(buf)
		if err != nil {
			return nil, err
		}
		if _, err := w.Write(src); err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	return nil, fmt.Errorf("codec: unknown codec %d (want %d zstd or %d xz)", codec, Zstd, XZ)
}

// encoders pools zstd encoders per klauspost level (index = EncoderLevel).
var encoders [zstd.SpeedBestCompression + 1]sync.Pool

var decoders = sync.Pool{New: func() any {
	d, err := zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(format.MaxSegmentRaw),
		zstd.WithDecoderMaxWindow(format.MaxSegmentRaw))
	if err != nil {
		panic(err) // only fails on invalid options
	}
	return d
}}

// Decompress decompresses a segment that must be exactly rawLen bytes.
func Decompress(codec uint8, src []byte, rawLen int) ([]byte, error) {
	return DecompressInto(codec, nil, src, rawLen)
}

// DecompressInto is Decompress writing into dst's storage when its
// capacity is at least rawLen (so callers can reuse buffers). It never
// allocates more than rawLen bytes for the output, and rawLen is capped at
// format.MaxSegmentRaw.
func DecompressInto(codec uint8, dst, src []byte, rawLen int) ([]byte, error) {
	if rawLen < 0 || rawLen > format.MaxSegmentRaw {
		return nil, fmt.Errorf("%w: raw length %d outside 0-%d", ErrCorrupt, rawLen, format.MaxSegmentRaw)
	}
	if cap(dst) < rawLen {
		dst = make([]byte, 0, rawLen)
	}
	dst = dst[:0:rawLen]
	switch codec {
	case Zstd:
		d := decoders.Get().(*zstd.Decoder)
		out, err := d.DecodeAll(src, dst)
		decoders.Put(d)
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) {
			return nil, fmt.Errorf("%w: zstd data decompresses to more than the declared %d bytes", ErrCorrupt, rawLen)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		if len(out) != rawLen {
			return nil, fmt.Errorf("%w: zstd data decompresses to %d bytes, segment declares %d", ErrCorrupt, len(out), rawLen)
		}
		return out, nil
	case XZ:
		return decompressXZ(dst, src)
	}
	return nil, fmt.Errorf("%w: unknown codec %d (want %d zstd or %d xz)", ErrCorrupt, codec, Zstd, XZ)
}
