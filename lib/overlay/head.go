package overlay

import (
	"bufio"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"slices"

	"cloudlet/format"
	"cloudlet/lib/sign"

	"github.com/cespare/xxhash/v2"
)

// The head of an overlay (SPEC.md sections 2.10 and 6.1): HEADER, SIGNER
// when signed, MANIFEST unless packed with NoManifest, HEAD_SIGNATURE when
// signed and with a MANIFEST.

// HeadDomain starts the message a HEAD_SIGNATURE signs, so that it can
// never be taken for the tail SIGNATURE (sign.Domain) or anything else
// made with the same key.
const HeadDomain = "cloudlet-overlay-head-v1\x00"

// headMessage is HeadDomain || KeyID [8]byte || digest [32]byte, digest
// being the sha256 of every overlay byte before the HEAD_SIGNATURE frame.
func headMessage(id string, digest []byte) []byte {
	raw, _ := hex.DecodeString(id)
	return append(append([]byte(HeadDomain), raw...), digest...)
}

// headSignature returns a HEAD_SIGNATURE payload, laid out as a
// SIGNATURE's: Algorithm u8 || Reserved [7]byte || KeyID [8]byte ||
// Signature [64]byte.
func headSignature(k *sign.PrivateKey, digest []byte) ([]byte, error) {
	p, err := sign.SignerPayload(k.ID)
	if err != nil {
		return nil, err
	}
	return append(p, ed25519.Sign(k.Key, headMessage(k.ID, digest))...), nil
}

// verifyHead reports whether sig is k's HEAD_SIGNATURE over digest.
func verifyHead(k *sign.PublicKey, digest, sig []byte) bool {
	return len(digest) == sha256.Size && ed25519.Verify(k.Key, headMessage(k.ID, digest), sig)
}

// signing is what PackSigned adds to Pack: the key, and the sha256 of the
// bytes the format.Writer flushed so far.
type signing struct {
	key *sign.PrivateKey
	out Summer
}

// writeHead writes HEADER, SIGNER, MANIFEST m (unless nil) and
// HEAD_SIGNATURE, as far as they apply.
func (p *packer) writeHead(m *format.Manifest) error {
	w := p.w
	w.HashSHA256()
	if err := w.WriteHeader(p.hdr); err != nil {
		return err
	}
	if p.sg != nil {
		signer, err := sign.SignerPayload(p.sg.key.ID)
		if err != nil {
			return err
		}
		if err := w.WriteRecord(&format.Record{Type: format.TypeSigner, Payload: signer}); err != nil {
			return err
		}
	}
	if m == nil {
		return nil
	}
	b, err := format.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > format.MaxPayload {
		return fmt.Errorf("overlay: the MANIFEST of %d segments is %d bytes, more than a frame holds (%d): the diff writes too many scattered ranges; use a larger --segment-size, or --no-manifest", len(m.Segments), len(b), format.MaxPayload)
	}
	if err := w.WriteRecord(&format.Record{Type: format.TypeManifest, Payload: b}); err != nil {
		return err
	}
	if p.sg == nil {
		return nil
	}
	return p.signed(format.TypeHeadSignature, headSignature)
}

// sign writes the SIGNATURE of a signed overlay (before END).
func (p *packer) sign() error {
	if p.sg == nil {
		return nil
	}
	return p.signed(format.TypeSignature, sign.SignaturePayload)
}

// signed writes a record of type t whose payload signs the sha256 of
// every byte written so far.
func (p *packer) signed(t format.Type, payload func(*sign.PrivateKey, []byte) ([]byte, error)) error {
	if err := p.w.Flush(); err != nil {
		return err
	}
	b, err := payload(p.sg.key, p.sg.out.Sum())
	if err != nil {
		return err
	}
	return p.w.WriteRecord(&format.Record{Type: t, Payload: b})
}

// segSpool keeps the compressed segments of an overlay in an unlinked
// temporary file until the MANIFEST that lists them is written.
type segSpool struct {
	f    *os.File
	bw   *bufio.Writer
	segs []format.ManifestSegment
	xx   []uint64 // xxhash64 of each payload, to check it when read back
}

func newSegSpool(dir string) (*segSpool, error) {
	f, err := tempFile(dir, "overlay-pack-segments-")
	if err != nil {
		return nil, err
	}
	return &segSpool{f: f, bw: bufio.NewWriterSize(f, 1<<20)}, nil
}

func (s *segSpool) close() { s.f.Close() }

// payloadSums are the sha256 (for the MANIFEST) and xxhash64 (to check
// the spool file) of a SEGMENT payload.
type payloadSums struct {
	sha256 []byte
	xx     uint64
}

// sumPayload hashes the payload of a SEGMENT frame: Codec u8 || Reserved
// [3]byte || RawLength u32 || Compressed (SPEC.md section 2.5).
func sumPayload(c uint8, raw uint32, comp []byte) *payloadSums {
	head := segmentHead(c, raw)
	h, x := sha256.New(), xxhash.New()
	h.Write(head[:])
	h.Write(comp)
	x.Write(head[:])
	x.Write(comp)
	return &payloadSums{sha256: h.Sum(nil), xx: x.Sum64()}
}

func segmentHead(c uint8, raw uint32) (head [8]byte) {
	head[0] = c
	binary.LittleEndian.PutUint32(head[4:], raw)
	return head
}

// add spools the payload of a SEGMENT frame.
func (s *segSpool) add(c uint8, raw uint32, comp []byte, sums *payloadSums, mem, disk ranges) error {
	head := segmentHead(c, raw)
	s.bw.Write(head[:])
	if _, err := s.bw.Write(comp); err != nil {
		return fmt.Errorf("writing spool file %s: %w (free space there or set --tmpdir)", s.f.Name(), err)
	}
	s.segs = append(s.segs, format.ManifestSegment{Size: uint64(len(head) + len(comp)), Raw: uint64(raw), SHA256: sums.sha256, Mem: mem, Disk: disk})
	s.xx = append(s.xx, sums.xx)
	return nil
}

// manifest returns the MANIFEST of the spooled segments.
func (s *segSpool) manifest(order string) *format.Manifest {
	return &format.Manifest{Order: order, Segments: s.segs}
}

// copyOut passes every spooled segment to write, in order, after checking
// that it reads back as written (the spool file is on a disk that could
// fail, and the MANIFEST already vouches for its sha256).
func (s *segSpool) copyOut(write func(c uint8, raw uint32, comp []byte, mem, disk ranges) error) error {
	if err := s.bw.Flush(); err != nil {
		return fmt.Errorf("writing spool file %s: %w (free space there or set --tmpdir)", s.f.Name(), err)
	}
	if _, err := s.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	br := bufio.NewReaderSize(s.f, 1<<20)
	var buf []byte
	for i, m := range s.segs {
		buf = slices.Grow(buf[:0], int(m.Size))[:m.Size]
		if _, err := io.ReadFull(br, buf); err != nil {
			return fmt.Errorf("reading spool file %s, segment %d: %w", s.f.Name(), i, err)
		}
		if xxhash.Sum64(buf) != s.xx[i] {
			return fmt.Errorf("spool file %s: segment %d changed since it was written: the storage of the temporary folder is failing", s.f.Name(), i)
		}
		rec := format.Record{Type: format.TypeSegment, Flags: format.FlagCritical, Payload: buf}
		seg, err := rec.SegmentRecord()
		if err != nil {
			return err
		}
		if err := write(seg.Codec, seg.RawLength, seg.Compressed, slices.Clone(m.Mem), slices.Clone(m.Disk)); err != nil {
			return err
		}
	}
	return nil
}

// tempFile creates a file in dir (default os.TempDir()) and unlinks it at
// once, so it vanishes with the process on every path, even SIGKILL.
func tempFile(dir, prefix string) (*os.File, error) {
	f, err := os.CreateTemp(dir, prefix)
	if err != nil {
		return nil, fmt.Errorf("creating a temporary file: %w (set --tmpdir to a writable folder)", err)
	}
	os.Remove(f.Name())
	return f, nil
}
