package codec

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
	"hash/crc32"
	"hash/crc64"
	"io"

	"github.com/ulikunitz/xz/lzma"
)

// The xz container (https://tukaani.org/xz/xz-file-format.txt), parsed here
// so that the dictionary ulikunitz/xz allocates is bounded by the segment's
// raw length instead of the size the stream declares. One stream, no stream
// padding, any number of blocks, each with the LZMA2 filter alone.

var (
	xzMagic     = []byte{0xFD, '7', 'z', 'X', 'Z', 0x00}
	xzFootMagic = []byte{'Y', 'Z'}
	crc64Table  = crc64.MakeTable(crc64.ECMA)
)

const lzma2FilterID = 0x21

func xzErr(at int, f string, args ...any) error {
	return fmt.Errorf("%w: xz at byte %d: %s", ErrCorrupt, at, fmt.Sprintf(f, args...))
}

// xzVarint decodes the container's multibyte integer at b[p:].
func xzVarint(b []byte, p int) (uint64, int, error) {
	var v uint64
	for i := 0; i < 9; i++ {
		if p+i >= len(b) {
			return 0, 0, xzErr(p, "truncated integer")
		}
		c := b[p+i]
		v |= uint64(c&0x7F) << (7 * i)
		if c&0x80 == 0 {
			if c == 0 && i > 0 {
				return 0, 0, xzErr(p, "integer with a trailing zero byte")
			}
			return v, p + i + 1, nil
		}
	}
	return 0, 0, xzErr(p, "integer longer than 9 bytes")
}

func checkHash(kind byte) (hash.Hash, int, error) {
	switch kind {
	case 0x0:
		return nil, 0, nil
	case 0x1:
		return crc32.NewIEEE(), 4, nil
	case 0x4:
		return crc64.New(crc64Table), 8, nil
	case 0xA:
		return sha256.New(), 32, nil
	}
	return nil, 0, fmt.Errorf("check type %d not supported (want none, CRC32, CRC64 or SHA-256)", kind)
}

func le32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

func decompressXZ(out, src []byte) ([]byte, error) {
	rawLen := cap(out)
	if len(src) < 24 {
		return nil, xzErr(0, "%d bytes is too short for an xz stream", len(src))
	}
	if !bytes.Equal(src[:6], xzMagic) {
		return nil, xzErr(0, "bad magic % x", src[:6])
	}
	flags := src[6:8]
	if crc32.ChecksumIEEE(flags) != le32(src[8:]) {
		return nil, xzErr(6, "stream header CRC32 mismatch")
	}
	if flags[0] != 0 || flags[1]&0xF0 != 0 {
		return nil, xzErr(6, "reserved stream flags % x", flags)
	}
	sum, csize, err := checkHash(flags[1])
	if err != nil {
		return nil, xzErr(7, "%v", err)
	}
	type record struct{ unpadded, size uint64 }
	var blocks []record
	p := 12
	for {
		if p >= len(src) {
			return nil, xzErr(p, "truncated before the index")
		}
		if src[p] == 0 {
			break
		}
		hsize := (int(src[p]) + 1) * 4
		if p+hsize > len(src) {
			return nil, xzErr(p, "truncated block header")
		}
		h := src[p : p+hsize]
		if crc32.ChecksumIEEE(h[:hsize-4]) != le32(h[hsize-4:]) {
			return nil, xzErr(p, "block header CRC32 mismatch")
		}
		bf := h[1]
		if bf&0x3C != 0 {
			return nil, xzErr(p+1, "reserved block flags %#x", bf)
		}
		if bf&3 != 0 {
			return nil, xzErr(p+1, "chain of %d filters; only LZMA2 alone is supported", bf&3+1)
		}
		q := 2
		var declComp, declSize uint64
		hasComp, hasSize := bf&0x40 != 0, bf&0x80 != 0
		body := h[:hsize-4]
		if hasComp {
			if declComp, q, err = xzVarint(body, q); err != nil {
				return nil, err
			}
		}
		if hasSize {
			if declSize, q, err = xzVarint(body, q); err != nil {
				return nil, err
			}
		}
		id, q, err := xzVarint(body, q)
		if err != nil {
			return nil, err
		}
		np, q, err := xzVarint(body, q)
		if err != nil {
			return nil, err
		}
		if id != lzma2FilterID || np != 1 || q >= len(body) {
			return nil, xzErr(p, "filter %#x with %d property bytes; only LZMA2 is supported", id, np)
		}
		dict, err := lzma.DecodeDictCap(body[q])
		if err != nil {
			return nil, xzErr(p+q, "%v", err)
		}
		for _, c := range body[q+1:] {
			if c != 0 {
				return nil, xzErr(p, "non-zero block header padding")
			}
		}
		// A block cannot refer further back than the output, which is at
		// most rawLen bytes: that bounds the dictionary whatever it says.
		dc := int(max(min(dict, int64(rawLen)), lzma.MinDictCap))
		start := p + hsize
		br := bytes.NewReader(src[start:])
		lr, err := lzma.Reader2Config{DictCap: dc}.NewReader2(br)
		if err != nil {
			return nil, xzErr(start, "LZMA2: %v", err)
		}
		first := len(out)
		if out, err = readAll(lr, out); err != nil {
			return nil, xzErr(start, "LZMA2: %v", err)
		}
		comp := len(src) - start - br.Len()
		if (hasComp && declComp != uint64(comp)) || (hasSize && declSize != uint64(len(out)-first)) {
			return nil, xzErr(p, "block sizes %d/%d differ from the header's %d/%d", comp, len(out)-first, declComp, declSize)
		}
		p = start + comp
		for ; (p-start)%4 != 0; p++ {
			if p >= len(src) || src[p] != 0 {
				return nil, xzErr(p, "bad block padding")
			}
		}
		if p+csize > len(src) {
			return nil, xzErr(p, "truncated block check")
		}
		if sum != nil {
			sum.Reset()
			sum.Write(out[first:])
			got := sum.Sum(nil)
			if flags[1] != 0xA { // CRC32 and CRC64 are stored little-endian
				for i, j := 0, len(got)-1; i < j; i, j = i+1, j-1 {
					got[i], got[j] = got[j], got[i]
				}
			}
			if !bytes.Equal(got, src[p:p+csize]) {
				return nil, xzErr(p, "block check mismatch")
			}
		}
		p += csize
		blocks = append(blocks, record{uint64(hsize + comp + csize), uint64(len(out) - first)})
	}
	ix := p
	n, p, err := xzVarint(src, p+1)
	if err != nil {
		return nil, err
	}
	if n != uint64(len(blocks)) {
		return nil, xzErr(ix, "index lists %d blocks, stream has %d", n, len(blocks))
	}
	for _, b := range blocks {
		var u, s uint64
		if u, p, err = xzVarint(src, p); err != nil {
			return nil, err
		}
		if s, p, err = xzVarint(src, p); err != nil {
			return nil, err
		}
		if u != b.unpadded || s != b.size {
			return nil, xzErr(ix, "index record %d/%d differs from the block's %d/%d", u, s, b.unpadded, b.size)
		}
	}
	for ; (p-ix)%4 != 0; p++ {
		if p >= len(src) || src[p] != 0 {
			return nil, xzErr(p, "bad index padding")
		}
	}
	if p+4 > len(src) || crc32.ChecksumIEEE(src[ix:p]) != le32(src[p:]) {
		return nil, xzErr(p, "index CRC32 mismatch or truncated")
	}
	p += 4
	if len(src)-p != 12 {
		return nil, xzErr(p, "%d bytes after the index, want the 12-byte stream footer", len(src)-p)
	}
	f := src[p:]
	if crc32.ChecksumIEEE(f[4:10]) != le32(f) || !bytes.Equal(f[10:], xzFootMagic) ||
		!bytes.Equal(f[8:10], flags) || int(le32(f[4:])+1)*4 != p-ix {
		return nil, xzErr(p, "stream footer does not match the header and index")
	}
	if len(out) != rawLen {
		return nil, fmt.Errorf("%w: xz data decompresses to %d bytes, segment declares %d", ErrCorrupt, len(out), rawLen)
	}
	return out, nil
}

// readAll appends r's output to out without growing it past cap(out).
func readAll(r io.Reader, out []byte) ([]byte, error) {
	stalls := 0
	for {
		if len(out) == cap(out) {
			var one [1]byte
			n, err := r.Read(one[:])
			if n > 0 {
				return nil, fmt.Errorf("decompresses to more than the declared %d bytes", cap(out))
			}
			if err == io.EOF {
				return out, nil
			}
			if err != nil {
				return nil, err
			}
		} else {
			n, err := r.Read(out[len(out):cap(out)])
			out = out[:len(out)+n]
			if err == io.EOF {
				return out, nil
			}
			if err != nil {
				return nil, err
			}
			if n > 0 {
				stalls = 0
				continue
			}
		}
		if stalls++; stalls > 100 {
			return nil, io.ErrNoProgress
		}
	}
}
