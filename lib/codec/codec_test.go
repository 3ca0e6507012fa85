package codec

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os/exec"
	"testing"

	"github.com/ulikunitz/xz"
)

// pages returns n bytes of page-like data: a mixture of text, zero pages
// and random pages.
func pages(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed+1))
	words := []string{"kernel ", "page ", "cache ", "0xffff8880 ", "GET /index.html ", "\n", "ext4 ", "systemd "}
	b := make([]byte, 0, n)
	for len(b) < n {
		p := make([]byte, 4096)
		switch r.IntN(3) {
		case 0:
			var t bytes.Buffer
			for t.Len() < len(p) {
				t.WriteString(words[r.IntN(len(words))])
			}
			copy(p, t.Bytes())
		case 1:
		case 2:
			for i := range p {
				p[i] = byte(r.Uint32())
			}
		}
		b = append(b, p...)
	}
	return b[:n]
}

// lzmaBackends are the LZMA implementations in this build: the pure-Go one
// always, liblzma's too when built with cgo.
func lzmaBackends() []lzmaBackend {
	if lzmaImpl.name == pureLZMA.name {
		return []lzmaBackend{pureLZMA}
	}
	return []lzmaBackend{lzmaImpl, pureLZMA}
}

// useLZMA makes b the LZMA implementation until the test ends.
func useLZMA(t testing.TB, b lzmaBackend) {
	old := lzmaImpl
	lzmaImpl = b
	t.Cleanup(func() { lzmaImpl = old })
}

// Each LZMA implementation reads what the other writes.
func TestXZBackendsInterop(t *testing.T) {
	bs := lzmaBackends()
	for _, enc := range bs {
		for _, dec := range bs {
			for _, n := range []int{0, 1, 4096, 1<<20 + 7} {
				src := pages(uint64(n)+9, n)
				comp, err := enc.compress(nil, src, 6)
				if err != nil {
					t.Fatalf("%s: compress %d bytes: %v", enc.name, n, err)
				}
				got, err := dec.decompress(make([]byte, 0, n), comp)
				if err != nil || !bytes.Equal(got, src) {
					t.Fatalf("%s reading %s's %d bytes: %v; want the input back", dec.name, enc.name, n, err)
				}
			}
		}
	}
}

func TestRoundTrip(t *testing.T) {
	for _, b := range lzmaBackends() {
		t.Run(b.name, func(t *testing.T) {
			useLZMA(t, b)
			testRoundTrip(t)
		})
	}
}

func testRoundTrip(t *testing.T) {
	for _, c := range []uint8{Zstd, XZ} {
		for _, n := range []int{0, 1, 4096, 1 << 20, 4<<20 + 513} {
			lo, _, hi := Levels(c)
			for _, level := range []int{lo, hi} {
				src := pages(uint64(n), n)
				comp, err := Compress(c, level, nil, src)
				if err != nil {
					t.Fatalf("Compress(%s, %d, %d bytes) = %v", Name(c), level, n, err)
				}
				got, err := Decompress(c, comp, n)
				if err != nil || !bytes.Equal(got, src) {
					t.Fatalf("Decompress(%s, %d bytes) = %v; want the input back", Name(c), n, err)
				}
				// Reusing a buffer that is too large must not change the output.
				got, err = DecompressInto(c, make([]byte, 5, n+100), comp, n)
				if err != nil || !bytes.Equal(got, src) || cap(got) != n {
					t.Fatalf("DecompressInto(%s, %d bytes) = cap %d, %v; want the input back", Name(c), n, cap(got), err)
				}
			}
		}
	}
}

func TestWrongLength(t *testing.T) {
	for _, b := range lzmaBackends() {
		t.Run(b.name, func(t *testing.T) {
			useLZMA(t, b)
			testWrongLength(t)
		})
	}
}

func testWrongLength(t *testing.T) {
	src := pages(1, 100000)
	for _, c := range []uint8{Zstd, XZ} {
		comp, _ := Compress(c, 3, nil, src)
		for _, n := range []int{0, 99999, 100001, 16 << 20} {
			if _, err := Decompress(c, comp, n); !errors.Is(err, ErrCorrupt) {
				t.Errorf("Decompress(%s) with raw length %d = %v; want ErrCorrupt", Name(c), n, err)
			}
		}
		if _, err := Decompress(c, comp, 16<<20+1); err == nil {
			t.Errorf("Decompress(%s) with a raw length over the cap = nil; want an error", Name(c))
		}
	}
}

func TestCorrupt(t *testing.T) {
	for _, b := range lzmaBackends() {
		t.Run(b.name, func(t *testing.T) {
			useLZMA(t, b)
			testCorrupt(t)
		})
	}
}

func testCorrupt(t *testing.T) {
	src := pages(2, 50000)
	for _, c := range []uint8{Zstd, XZ} {
		comp, _ := Compress(c, 3, nil, src)
		for i := 0; i < len(comp); i += 1 + len(comp)/300 {
			bad := bytes.Clone(comp)
			bad[i] ^= 0x5a
			if got, err := Decompress(c, bad, len(src)); err == nil && !bytes.Equal(got, src) {
				t.Fatalf("Decompress(%s) with byte %d flipped returned wrong data without error", Name(c), i)
			}
			if _, err := Decompress(c, comp[:i], len(src)); err == nil {
				t.Fatalf("Decompress(%s) truncated to %d bytes = nil; want an error", Name(c), i)
			}
		}
	}
}

// A forged dictionary size (4 GiB) must not be allocated: the decoder
// bounds it by the raw length and still decodes (liblzma refuses it within
// its memory limit and hands the segment to the pure-Go reader).
func TestXZForgedDictionary(t *testing.T) {
	for _, b := range lzmaBackends() {
		t.Run(b.name, func(t *testing.T) {
			useLZMA(t, b)
			testXZForgedDictionary(t)
		})
	}
}

func testXZForgedDictionary(t *testing.T) {
	src := pages(3, 10000)
	comp, _ := pureLZMA.compress(nil, src, 0) // no sizes in its block header
	hsize := (int(comp[12]) + 1) * 4
	h := comp[12 : 12+hsize]
	// Block flags 0: the filter flags start at byte 2: id 0x21, size 1, dict.
	if h[1] != 0 || h[2] != 0x21 || h[3] != 1 {
		t.Fatalf("unexpected block header % x", h)
	}
	h[4] = 40 // 4 GiB - 1
	binary.LittleEndian.PutUint32(h[hsize-4:], crc32.ChecksumIEEE(h[:hsize-4]))
	got, err := Decompress(XZ, comp, len(src))
	if err != nil || !bytes.Equal(got, src) {
		t.Fatalf("Decompress with a 4 GiB dictionary header = %v; want the data", err)
	}
}

// Our xz streams are standard: ulikunitz's reader and the xz tool read
// them, and we read ulikunitz's default output (CRC64).
func TestXZInterop(t *testing.T) {
	for _, b := range lzmaBackends() {
		t.Run(b.name, func(t *testing.T) {
			useLZMA(t, b)
			testXZInterop(t)
		})
	}
}

func testXZInterop(t *testing.T) {
	src := pages(4, 300000)
	comp, _ := Compress(XZ, 3, nil, src)
	r, err := xz.NewReader(bytes.NewReader(comp))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, src) {
		t.Fatalf("xz.NewReader on our output = %v", err)
	}
	if path, err := exec.LookPath("xz"); err == nil {
		cmd := exec.Command(path, "-dc")
		cmd.Stdin = bytes.NewReader(comp)
		if got, err := cmd.Output(); err != nil || !bytes.Equal(got, src) {
			t.Errorf("xz -dc on our output: %v", err)
		}
	}
	var buf bytes.Buffer
	w, _ := xz.NewWriter(&buf)
	w.Write(src)
	w.Close()
	if got, err := Decompress(XZ, buf.Bytes(), len(src)); err != nil || !bytes.Equal(got, src) {
		t.Fatalf("Decompress of xz.NewWriter output = %v", err)
	}
}

func BenchmarkCodec(b *testing.B) {
	src := pages(5, 4<<20)
	for _, c := range []struct {
		codec uint8
		level int
	}{{Zstd, 1}, {Zstd, 3}, {Zstd, 9}, {Zstd, 19}, {XZ, 6}, {XZ, 9}} {
		name := fmt.Sprintf("%s-%d", Name(c.codec), c.level)
		var comp []byte
		b.Run(name+"/compress", func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				comp, _ = Compress(c.codec, c.level, comp[:0], src)
			}
			b.ReportMetric(float64(len(comp))/float64(len(src)), "ratio")
		})
		b.Run(name+"/decompress", func(b *testing.B) {
			b.SetBytes(int64(len(src)))
			out := make([]byte, len(src))
			for b.Loop() {
				if _, err := DecompressInto(c.codec, out, comp, len(src)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
