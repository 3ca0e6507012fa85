package overlay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/codec"
	"cloudlet/lib/delta"
)

const testBaseID = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0"

// memBase is an in-memory Base.
type memBase struct {
	id        string
	mem, disk []byte
}

func (b *memBase) ID() string { return b.id }

func (b *memBase) Sizes() (mem, disk uint64) { return uint64(len(b.mem)), uint64(len(b.disk)) }
func (b *memBase) ReadMemAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(b.mem).ReadAt(p, off)
}
func (b *memBase) ReadDiskAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(b.disk).ReadAt(p, off)
}

// fill writes page-like data: text, zeros or random, chosen per 4 KiB.
func fill(r *rand.Rand, p []byte) {
	words := []string{"kernel ", "page ", "cache ", "0xffff8880 ", "GET /index.html ", "\n", "ext4 ", "systemd "}
	for len(p) > 0 {
		n := min(len(p), 4096)
		switch r.IntN(3) {
		case 0:
			var t bytes.Buffer
			for t.Len() < n {
				t.WriteString(words[r.IntN(len(words))])
			}
			copy(p[:n], t.Bytes())
		case 1:
			clear(p[:n])
		default:
			for i := range p[:n] {
				p[i] = byte(r.Uint32())
			}
		}
		p = p[n:]
	}
}

func header(memSize, diskSize uint64) *format.Header {
	return &format.Header{Kind: format.KindDiff, BaseID: testBaseID, Producer: []string{"test"},
		VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: memSize, DiskSize: diskSize, DiskFormat: "raw"}}
}

// world is a base, a diff stream against it, and the images the diff
// describes (computed here independently of Apply).
type world struct {
	base      *memBase
	diff      []byte
	mem, disk []byte
	devstate  []byte
}

func makeWorld(t testing.TB) *world {
	const memSize, diskSize = 1 << 20, 1 << 20
	r := rand.New(rand.NewPCG(1, 1))
	b := &memBase{id: testBaseID, mem: make([]byte, memSize), disk: make([]byte, diskSize)}
	fill(r, b.mem)
	fill(r, b.disk)
	wd := &world{base: b, mem: bytes.Clone(b.mem), disk: bytes.Clone(b.disk)}
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteHeader(header(memSize, diskSize)))
	wd.devstate = []byte("QEVM device state")
	must(w.WriteDevState(wd.devstate))
	img := func(sp uint8) []byte {
		if sp == format.SpaceMem {
			return wd.mem
		}
		return wd.disk
	}
	data := func(sp uint8, off uint64, n int) {
		p := make([]byte, n)
		fill(r, p)
		p[0] = 1 // not all zero
		if sp == format.SpaceMem {
			must(w.WriteMem(off, p))
		} else {
			must(w.WriteDisk(off, p))
		}
		copy(img(sp)[off:], p)
	}
	zero := func(sp uint8, off, n uint64) {
		if sp == format.SpaceMem {
			must(w.WriteMemZero(off, n))
		} else {
			must(w.WriteDiskZero(off, n))
		}
		clear(img(sp)[off : off+n])
	}
	cp := func(sp, src uint8, off, from, n uint64) {
		must(w.WriteCopy(format.Copy{Space: sp, Source: src, Offset: off, SourceOffset: from, Length: n}))
		var s []byte
		switch src {
		case format.SourceBaseMem:
			s = b.mem
		case format.SourceBaseDisk:
			s = b.disk
		case format.SourceStreamMem:
			s = wd.mem
		case format.SourceStreamDisk:
			s = wd.disk
		}
		copy(img(sp)[off:off+n], s[from:from+n])
	}
	dl := func(sp, method uint8, off, n uint64) {
		bs := b.mem
		if sp == format.SpaceDisk {
			bs = b.disk
		}
		target := bytes.Clone(bs[off : off+n])
		target[10] ^= 0xff
		copy(target[100:], "inserted text")
		d, err := delta.Encode(method, bs[off:off+n], target)
		must(err)
		must(w.WriteDelta(format.Delta{Space: sp, Method: method, Offset: off, Length: n, Delta: d}))
		copy(img(sp)[off:], target)
	}
	const P = 4096
	M, D := format.SpaceMem, format.SpaceDisk
	data(M, 0, 4*P)
	zero(M, 4*P, 2*P)
	cp(M, format.SourceBaseMem, 6*P, 100*P+123, 2*P)
	cp(M, format.SourceBaseDisk, 8*P, 3*512, P)
	cp(M, format.SourceStreamMem, 9*P, 0, 2*P)
	cp(M, format.SourceStreamMem, 11*P, 4*P, P)
	dl(M, delta.XOR, 12*P, P)
	dl(M, delta.Ops, 13*P, P)
	must(w.WriteRecord(&format.Record{Type: 0x60, Payload: []byte("optional, unknown")}))
	data(M, 20*P, 180*P) // several segments at the smallest segment size
	data(D, 0, 1024)
	zero(D, 1536, 512)
	cp(D, format.SourceBaseDisk, 4096, 7, 4096)
	cp(D, format.SourceStreamDisk, 8192, 0, 1024)
	cp(D, format.SourceStreamMem, 10240, 5, 1024)
	cp(D, format.SourceBaseMem, 12288, 4096, 4096)
	dl(D, delta.XOR, 16384, 512)
	dl(D, delta.Ops, 20480, 4096)
	data(D, 1<<19, 200*1024)
	must(w.Close())
	wd.diff = buf.Bytes()
	return wd
}

func pack(t testing.TB, diff []byte, o PackOptions) []byte {
	t.Helper()
	var out bytes.Buffer
	err := cliutil.Filter("overlay-pack", bytes.NewReader(diff), &out, func(r *format.Reader, w *format.Writer) error {
		return Pack(context.Background(), r, w, o)
	})
	if err != nil {
		t.Fatalf("Pack = %v", err)
	}
	return out.Bytes()
}

func apply(ov []byte, b Base, out io.Writer) error {
	return applyWith(ov, b, out, ApplyOptions{})
}

func applyWith(ov []byte, b Base, out io.Writer, o ApplyOptions) error {
	return cliutil.Filter("overlay-apply", bytes.NewReader(ov), out, func(r *format.Reader, w *format.Writer) error {
		return Apply(context.Background(), r, w, func(string) (Base, error) { return b, nil }, o)
	})
}

// replay applies a resolved diff stream to copies of the base images. It
// fails on any record type vm-resume would not accept, and on COPY records
// unless copies is set (overlay-apply's KeepCopies); it returns how many
// COPY records it saw.
func replay(t *testing.T, stream []byte, b *memBase) (mem, disk, dev []byte) {
	mem, disk, dev, _ = replayCopies(t, stream, b, false)
	return mem, disk, dev
}

func replayCopies(t *testing.T, stream []byte, b *memBase, copies bool) (mem, disk, dev []byte, ncopy int) {
	t.Helper()
	mem, disk = bytes.Clone(b.mem), bytes.Clone(b.disk)
	r := format.NewReader(bytes.NewReader(stream))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	if h.Kind != format.KindDiff || h.BaseID != b.id || strings.Join(h.Producer, ",") != "test,overlay-pack,overlay-apply" {
		t.Errorf("output header = %+v; want kind diff, base %s, producers test,overlay-pack,overlay-apply", h, b.id)
	}
	for n := 0; ; n++ {
		rec, err := r.Next()
		if err == io.EOF {
			if err := r.Validator().CheckPromised(); err != nil {
				t.Fatalf("output: %v", err)
			}
			return mem, disk, dev, ncopy
		}
		if err != nil {
			t.Fatalf("reading the output: %v", err)
		}
		switch rec.Type {
		case format.TypeManifest:
			if n != 0 {
				t.Fatalf("output carries a MANIFEST as its record %d; want it first", n)
			}
		case format.TypeDevState:
			dev = append(dev, rec.Payload...)
		case format.TypeMem, format.TypeDisk:
			off, data, _ := rec.DataRecord()
			img := mem
			if rec.Type == format.TypeDisk {
				img = disk
			}
			copy(img[off:], data)
		case format.TypeMemZero, format.TypeDiskZero:
			off, n, _ := rec.ZeroRecord()
			img := mem
			if rec.Type == format.TypeDiskZero {
				img = disk
			}
			clear(img[off : off+n])
		case format.TypeCopy:
			if !copies {
				t.Fatalf("output carries a COPY record, but overlay-apply was to resolve copies")
			}
			c, _ := rec.CopyRecord()
			src := map[uint8][]byte{format.SourceBaseMem: b.mem, format.SourceBaseDisk: b.disk,
				format.SourceStreamMem: mem, format.SourceStreamDisk: disk}[c.Source]
			dst := mem
			if c.Space == format.SpaceDisk {
				dst = disk
			}
			copy(dst[c.Offset:c.Offset+c.Length], src[c.SourceOffset:c.SourceOffset+c.Length])
			ncopy++
		default:
			t.Fatalf("output carries a %s record; want only DEVSTATE, MEM, DISK, zero and COPY records", rec.Type)
		}
	}
}

// same reports whether Apply's output out (COPY records kept if copies)
// turns the base into the VM the diff describes.
func (wd *world) same(t *testing.T, out []byte, copies bool) bool {
	t.Helper()
	mem, disk, dev, _ := replayCopies(t, out, wd.base, copies)
	return bytes.Equal(mem, wd.mem) && bytes.Equal(disk, wd.disk) && bytes.Equal(dev, wd.devstate)
}

func TestRoundTrip(t *testing.T) {
	wd := makeWorld(t)
	for _, o := range []PackOptions{
		{Codec: "zstd"},
		{Codec: "zstd", Level: 19, SegmentSize: MinSegmentSize},
		{Codec: "xz", SegmentSize: MinSegmentSize},
		{Codec: "auto", Bandwidth: 1, Workers: 1},
	} {
		t.Run(fmt.Sprintf("%s-%d-%d", o.Codec, o.Level, o.SegmentSize), func(t *testing.T) {
			ov := pack(t, wd.diff, o)
			var out bytes.Buffer
			if err := apply(ov, wd.base, &out); err != nil {
				t.Fatalf("Apply = %v", err)
			}
			mem, disk, dev := replay(t, out.Bytes(), wd.base)
			if !bytes.Equal(mem, wd.mem) || !bytes.Equal(disk, wd.disk) || !bytes.Equal(dev, wd.devstate) {
				t.Errorf("applied overlay differs from base+diff (mem %v, disk %v, devstate %v equal)",
					bytes.Equal(mem, wd.mem), bytes.Equal(disk, wd.disk), bytes.Equal(dev, wd.devstate))
			}
			// Copies kept: the same state, with the COPY records passed on.
			var kept bytes.Buffer
			if err := applyWith(ov, wd.base, &kept, ApplyOptions{KeepCopies: true}); err != nil {
				t.Fatalf("Apply with KeepCopies = %v", err)
			}
			_, _, _, n := replayCopies(t, kept.Bytes(), wd.base, true)
			if n == 0 || kept.Len() >= out.Len() {
				t.Errorf("KeepCopies passed %d COPY records, output %d bytes vs %d resolved; want copies and a smaller stream", n, kept.Len(), out.Len())
			}
			if !wd.same(t, kept.Bytes(), true) {
				t.Errorf("overlay applied with KeepCopies differs from base+diff")
			}
		})
	}
}

// frames splits a stream into its preamble and frames.
func frames(s []byte) (pre []byte, fr [][]byte) {
	pre, s = s[:format.PreambleSize], s[format.PreambleSize:]
	for len(s) > 0 {
		n := format.FrameHeadSize + int(binary.LittleEndian.Uint32(s[4:])) + format.FrameTailSize
		fr, s = append(fr, s[:n]), s[n:]
	}
	return pre, fr
}

// mustFail applies a damaged overlay and checks that Apply fails and its
// output never ends in a valid END.
func mustFail(t *testing.T, name string, ov []byte, b Base) error {
	t.Helper()
	var out bytes.Buffer
	err := apply(ov, b, &out)
	if err == nil {
		t.Fatalf("%s: Apply = nil; want an error", name)
	}
	r := format.NewReader(bytes.NewReader(out.Bytes()))
	for {
		_, rerr := r.Next()
		if rerr == io.EOF {
			t.Fatalf("%s: output stream verifies (ends in END) although Apply failed with %v", name, err)
		}
		if rerr != nil {
			break
		}
	}
	return err
}

func TestDamage(t *testing.T) {
	wd := makeWorld(t)
	ov := pack(t, wd.diff, PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize})
	step := len(ov)/300 + 1
	for i := 0; i < len(ov); i += step {
		bad := bytes.Clone(ov)
		bad[i] ^= 0x01
		mustFail(t, fmt.Sprintf("byte %d flipped", i), bad, wd.base)
	}
	for n := 0; n < len(ov); n += step {
		mustFail(t, fmt.Sprintf("truncated to %d", n), ov[:n], wd.base)
	}
	pre, fr := frames(ov)
	if len(fr) < 5 {
		t.Fatalf("overlay has %d frames; want several segments", len(fr))
	}
	swapped := bytes.Clone(pre)
	for i, f := range fr {
		switch i {
		case 1:
			f = fr[2]
		case 2:
			f = fr[1]
		}
		swapped = append(swapped, f...)
	}
	err := mustFail(t, "segments swapped", swapped, wd.base)
	t.Logf("segments swapped: %v", err)
	wrong := &memBase{id: strings.Repeat("c", 64), mem: wd.base.mem, disk: wd.base.disk}
	err = mustFail(t, "wrong base", ov, wrong)
	if !strings.Contains(err.Error(), testBaseID) || !strings.Contains(err.Error(), wrong.id) {
		t.Errorf("wrong base: %v; want both IDs in the message", err)
	}
	var upstream *format.UpstreamError
	if errors.As(err, &upstream) {
		t.Errorf("wrong base reported as upstream failure: %v", err)
	}
}

func TestPackRefusesFull(t *testing.T) {
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	h := header(1<<20, 0)
	h.Kind, h.BaseID = format.KindFull, ""
	w.WriteHeader(h)
	w.Close()
	err := cliutil.Filter("overlay-pack", &buf, io.Discard, func(r *format.Reader, w *format.Writer) error {
		return Pack(context.Background(), r, w, PackOptions{})
	})
	if err == nil || !strings.Contains(err.Error(), "diff") {
		t.Errorf("Pack of a full stream = %v; want an error asking for a diff stream", err)
	}
}

// --codec auto sends the smallest overlay over a slow link and the fastest
// to decode (zstd, whichever xz) over a fast one.
func TestAutoPicksByBandwidth(t *testing.T) {
	var text []byte
	for i := 0; len(text) < 2<<20; i++ {
		text = fmt.Appendf(text, "line %d of a log file that compresses well, value=%d\n", i, i*i%977)
	}
	sample := [][]byte{text[:1<<20], text[1<<20:]}
	slow, err := planAuto(sample, 1, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The smallest: xz with liblzma; with the pure-Go encoder zstd can be
	// smaller on text like this.
	for _, c := range slow[1:] {
		if c.Ratio < slow[0].Ratio {
			t.Errorf("at 1 Mbit/s auto chose %s (ratio %.4f) over the smaller %s (%.4f)", slow[0], slow[0].Ratio, c, c.Ratio)
		}
	}
	fast, err := planAuto(sample, 1e6, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fast[0].Codec != codec.Zstd {
		t.Errorf("at 1 Tbit/s auto chose %s; want zstd, the fastest to decode (plan %v)", fast[0], fast)
	}
	// Live (vm-handoff): at 25 Mbit/s the encoder is on the critical
	// path, so the fastest to encode that the link does not hold back.
	live, err := planAuto(sample, 25, 2, 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range live[1:] {
		if c.Seconds < live[0].Seconds {
			t.Errorf("live at 25 Mbit/s: %s (%.1f ms/MB) ranked after %s (%.1f)", c, c.Seconds, live[0], live[0].Seconds)
		}
	}
	if want := 1e6 / live[0].Encode; live[0].Seconds < want {
		t.Errorf("live plan ignores the encoding: %s takes %.1f ms/MB to encode, planned at %.1f", live[0], want, live[0].Seconds)
	}
	if s := describePlan(fast, 1e6, 2, 2<<20, 2); !strings.Contains(s, "chose zstd") || strings.Count(s, "\n") != len(fast)+1 {
		t.Errorf("describePlan = %q; want the choice and one line per candidate", s)
	}
}
