package codec

import (
	"errors"
	"fmt"
	"sync"

	"cloudlet/format"

	"github.com/klauspost/compress/zstd"
)

// Codecs, as in format.CodecZstd and format.CodecXZ.
const (
	Zstd = format.CodecZstd
	XZ   = format.CodecXZ
)

// Levels accepted by Compress: zstd 1-19 as on the zstd command line, xz
// 1-9 as xz's presets -1 to -9 (ExtremeFrom and up add xz's --extreme).
// DefaultLevel is zstd's, which overlay-pack uses by default.
const (
	MinLevel     = 1
	MaxLevel     = 19
	DefaultLevel = 3

	MinXZLevel     = 1
	MaxXZLevel     = 9
	DefaultXZLevel = 9
	ExtremeFrom    = 10
)

// Levels returns the lowest, default and highest level of a codec.
func Levels(c uint8) (lo, def, hi int) {
	if c == XZ {
		return MinXZLevel, DefaultXZLevel, MaxXZLevel
	}
	return MinLevel, DefaultLevel, MaxLevel
}

// Impl names the implementation that encodes and decodes a codec in this
// build, e.g. "liblzma 5.4.1 (cgo)".
func Impl(c uint8) string {
	if c == XZ {
		return lzmaImpl.name
	}
	return "klauspost/compress zstd"
}

// LevelMatters reports whether the level changes a codec's output in this
// build (the pure-Go xz encoder has one setting).
func LevelMatters(c uint8) bool { return c != XZ || lzmaImpl.levels }

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

// Compress appends the compressed form of src to dst, at a level within
// Levels(codec). For zstd the level maps to the four klauspost encoder
// levels (zstd.EncoderLevelFromZstd). For xz it is liblzma's preset when
// the build has cgo (Impl), with the dictionary cut to the segment's size
// (at least 64 KiB, at most format.MaxSegmentRaw): a segment is compressed
// on its own, so a larger dictionary only costs memory.
func Compress(codec uint8, level int, dst, src []byte) ([]byte, error) {
	if lo, _, hi := Levels(codec); level < lo || level > hi {
		return nil, fmt.Errorf("codec: %s level %d out of range %d-%d", Name(codec), level, lo, hi)
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
		return lzmaImpl.compress(dst, src, level)
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
		return lzmaImpl.decompress(dst, src)
	}
	return nil, fmt.Errorf("%w: unknown codec %d (want %d zstd or %d xz)", ErrCorrupt, codec, Zstd, XZ)
}
