//go:build cgo && !purego

package codec

/*
#cgo LDFLAGS: -llzma
#include <stdlib.h>
#include <lzma.h>

// Encode src as one .xz stream with a single LZMA2 block and a CRC32 check,
// with the options of preset (0-9, optionally | LZMA_PRESET_EXTREME) but a
// dictionary no larger than dict: a segment is compressed on its own, so a
// larger dictionary only costs memory (preset 9 would take 674 MiB).
static int cl_xz_encode(uint32_t preset, uint32_t dict, const uint8_t *in, size_t in_size,
		uint8_t *out, size_t *out_pos, size_t out_size) {
	lzma_options_lzma opt;
	if (lzma_lzma_preset(&opt, preset))
		return LZMA_OPTIONS_ERROR;
	if (opt.dict_size > dict)
		opt.dict_size = dict;
	lzma_filter filters[2] = {
		{ .id = LZMA_FILTER_LZMA2, .options = &opt },
		{ .id = LZMA_VLI_UNKNOWN, .options = NULL },
	};
	return lzma_stream_buffer_encode(filters, LZMA_CHECK_CRC32, NULL, in, in_size, out, out_pos, out_size);
}

// Decode exactly one .xz stream; *in_pos tells how much of in it took.
// Unknown check types are errors, as in the pure-Go reader.
static int cl_xz_decode(uint64_t memlimit, const uint8_t *in, size_t *in_pos, size_t in_size,
		uint8_t *out, size_t *out_pos, size_t out_size) {
	return lzma_stream_buffer_decode(&memlimit, LZMA_TELL_UNSUPPORTED_CHECK, NULL,
		in, in_pos, in_size, out, out_pos, out_size);
}
*/
import "C"

import (
	"fmt"
	"unsafe"

	"cloudlet/format"
)

func init() {
	lzmaImpl = lzmaBackend{
		name:       "liblzma " + C.GoString(C.lzma_version_string()) + " (cgo)",
		compress:   liblzmaCompress,
		decompress: liblzmaDecompress,
		levels:     true,
	}
}

// liblzmaMemLimit bounds what a segment's decoder may allocate: the largest
// dictionary a segment can use (format.MaxSegmentRaw) plus liblzma's own
// state. A stream declaring more is decoded by the pure-Go reader, which
// caps the dictionary at the segment's raw length instead.
const liblzmaMemLimit = format.MaxSegmentRaw + 8<<20

func cptr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}

func liblzmaCompress(dst, src []byte, level int) ([]byte, error) {
	preset := C.uint32_t(level)
	if level >= ExtremeFrom {
		preset |= C.LZMA_PRESET_EXTREME
	}
	dict := C.uint32_t(min(max(len(src), 64<<10), format.MaxSegmentRaw))
	bound := int(C.lzma_stream_buffer_bound(C.size_t(len(src))))
	n := len(dst)
	dst = growTo(dst, n+bound)
	var pos C.size_t
	buf := dst[n:cap(dst)]
	if ret := C.cl_xz_encode(preset, dict, cptr(src), C.size_t(len(src)), cptr(buf), &pos, C.size_t(len(buf))); ret != C.LZMA_OK {
		return nil, fmt.Errorf("codec: liblzma encoder failed (lzma_ret %d)", int(ret))
	}
	return dst[:n+int(pos)], nil
}

// liblzmaDecompress fills out (len 0, cap = the raw length) from src.
func liblzmaDecompress(out, src []byte) ([]byte, error) {
	rawLen := cap(out)
	full := out[:rawLen]
	var inPos, outPos C.size_t
	ret := C.cl_xz_decode(C.uint64_t(liblzmaMemLimit), cptr(src), &inPos, C.size_t(len(src)), cptr(full), &outPos, C.size_t(rawLen))
	switch ret {
	case C.LZMA_OK:
	case C.LZMA_MEMLIMIT_ERROR:
		return decompressXZ(out, src)
	case C.LZMA_BUF_ERROR:
		return nil, fmt.Errorf("%w: xz data decompresses to more than the declared %d bytes", ErrCorrupt, rawLen)
	case C.LZMA_FORMAT_ERROR:
		return nil, fmt.Errorf("%w: xz: not an xz stream", ErrCorrupt)
	case C.LZMA_OPTIONS_ERROR:
		return nil, fmt.Errorf("%w: xz: unsupported options", ErrCorrupt)
	case C.LZMA_UNSUPPORTED_CHECK:
		return nil, fmt.Errorf("%w: xz: unsupported check type", ErrCorrupt)
	case C.LZMA_DATA_ERROR:
		return nil, fmt.Errorf("%w: xz: corrupt or truncated data", ErrCorrupt)
	default:
		return nil, fmt.Errorf("%w: xz: liblzma error %d", ErrCorrupt, int(ret))
	}
	if int(inPos) != len(src) {
		return nil, fmt.Errorf("%w: xz: %d bytes after the stream", ErrCorrupt, len(src)-int(inPos))
	}
	if int(outPos) != rawLen {
		return nil, fmt.Errorf("%w: xz data decompresses to %d bytes, segment declares %d", ErrCorrupt, int(outPos), rawLen)
	}
	return full, nil
}
