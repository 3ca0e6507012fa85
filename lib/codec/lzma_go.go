package codec

import (
	"bytes"

	"cloudlet/format"

	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// lzmaBackend is the LZMA (xz) implementation in use: liblzma through cgo
// when the build has it (liblzma.go), else the pure-Go one below. Both
// write .xz streams with one LZMA2 block and read each other's.
type lzmaBackend struct {
	name       string
	compress   func(dst, src []byte, level int) ([]byte, error)
	decompress func(out, src []byte) ([]byte, error) // len(out) 0, cap(out) the raw length
	levels     bool                                  // whether level changes anything
}

var lzmaImpl = pureLZMA

// pureLZMA is github.com/ulikunitz/xz with the hash-table match finder
// (its binary tree is about 100 times slower and, in v0.5.17, wrote
// distances its own reader rejects for a 1 MiB input). It has one setting.
var pureLZMA = lzmaBackend{
	name:       "ulikunitz/xz (pure Go)",
	compress:   pureLZMACompress,
	decompress: decompressXZ,
}

func pureLZMACompress(dst, src []byte, _ int) ([]byte, error) {
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

// growTo returns b with capacity for at least n bytes, keeping its contents.
func growTo(b []byte, n int) []byte {
	if cap(b) >= n {
		return b
	}
	nb := make([]byte, len(b), n)
	copy(nb, b)
	return nb
}
