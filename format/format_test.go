package format

import (
	"bytes"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
)

var update = flag.Bool("update", false, "update golden files in testdata")

func testHeader(kind string) *Header {
	h := &Header{
		Kind: kind,
		VM: VMDesc{
			Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: 1 << 20,
			RAMBlocks: []RAMBlock{{ID: "mem", Size: 1 << 20}},
			DiskSize:  1 << 20, DiskFormat: "raw", QEMUVersion: "7.2.15",
			Append:   "console=ttyS0 root=/dev/vda rw",
			Forwards: []Forward{{Proto: "tcp", HostPort: 8080, GuestPort: 80}},
		},
		Producer: []string{"test"},
	}
	if kind != KindFull {
		h.BaseID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	}
	return h
}

func page(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

// sample writes one of every record kind of a diff stream.
func sample(t testing.TB) []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteHeader(testHeader(KindDiff)))
	must(w.WriteDevState([]byte("QEVM\x00\x00\x00\x03 device state")))
	must(w.WriteMem(0, append(page(1), page(2)...)))
	must(w.WriteMemZero(2*PageSize, PageSize))
	must(w.WriteCopy(Copy{Space: SpaceMem, Source: SourceBaseMem, Offset: 3 * PageSize, SourceOffset: 7 * PageSize, Length: PageSize}))
	must(w.WriteCopy(Copy{Space: SpaceMem, Source: SourceStreamMem, Offset: 4 * PageSize, SourceOffset: 0, Length: PageSize}))
	must(w.WriteDelta(Delta{Space: SpaceMem, Method: DeltaXOR, Offset: 5 * PageSize, Length: PageSize, Delta: page(9)}))
	must(w.WriteDisk(0, bytes.Repeat([]byte("d"), 1024)))
	must(w.WriteDiskZero(1024, 512))
	must(w.WriteCopy(Copy{Space: SpaceDisk, Source: SourceStreamMem, Offset: 4096, SourceOffset: PageSize, Length: PageSize}))
	must(w.WriteRecord(&Record{Type: 0x55, Payload: []byte("optional extension")}))
	must(w.Close())
	return buf.Bytes()
}

type got struct {
	Type    Type
	Payload []byte
}

func readAll(r *Reader) ([]got, error) {
	var out []got
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, got{rec.Type, bytes.Clone(rec.Payload)})
	}
}

func TestRoundTrip(t *testing.T) {
	b := sample(t)
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"plain": func(r io.Reader) io.Reader { return r },
		"one":   iotest.OneByteReader,
		"half":  iotest.HalfReader,
		"data":  iotest.DataErrReader,
	} {
		t.Run(name, func(t *testing.T) {
			r := NewReader(wrap(bytes.NewReader(b)))
			h, err := r.Header()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(h, testHeader(KindDiff)) {
				t.Errorf("Header() = %+v; want %+v", h, testHeader(KindDiff))
			}
			recs, err := readAll(r)
			if err != nil {
				t.Fatal(err)
			}
			var types []Type
			for _, g := range recs {
				types = append(types, g.Type)
			}
			want := []Type{TypeDevState, TypeMem, TypeMemZero, TypeCopy, TypeCopy, TypeDelta, TypeDisk, TypeDiskZero, TypeCopy, 0x55}
			if !reflect.DeepEqual(types, want) {
				t.Fatalf("types = %v; want %v", types, want)
			}
			rec := Record{Type: recs[1].Type, Payload: recs[1].Payload}
			off, data, _ := rec.DataRecord()
			if off != 0 || !bytes.Equal(data, append(page(1), page(2)...)) {
				t.Errorf("MEM = %d, %d bytes; want 0, 8192 bytes of 1s then 2s", off, len(data))
			}
			rec = Record{Type: recs[4].Type, Payload: recs[4].Payload}
			c, _ := rec.CopyRecord()
			if c != (Copy{Space: SpaceMem, Source: SourceStreamMem, Offset: 4 * PageSize, Length: PageSize}) {
				t.Errorf("COPY = %+v", c)
			}
			rec = Record{Type: recs[5].Type, Payload: recs[5].Payload}
			d, _ := rec.DeltaRecord()
			if d.Method != DeltaXOR || d.Offset != 5*PageSize || !bytes.Equal(d.Delta, page(9)) {
				t.Errorf("DELTA = %+v", d)
			}
			if e := r.End(); e == nil || e.Counts["MEM"] != 1 || e.Frames != 11 {
				t.Errorf("End() = %+v; want 11 frames, 1 MEM", e)
			}
		})
	}
}

func TestReadData(t *testing.T) {
	r := NewReader(bytes.NewReader(sample(t)))
	for {
		rec, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type == TypeMem {
			b, err := io.ReadAll(iotest.OneByteReader(r))
			if err != nil || len(b) != 2*PageSize || b[0] != 1 || b[PageSize] != 2 {
				t.Fatalf("ReadAll = %d bytes, %v; want 8192 bytes", len(b), err)
			}
			return
		}
	}
}

func TestGolden(t *testing.T) {
	b := sample(t)
	path := filepath.Join("testdata", "diff.golden")
	if *update {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, want) {
		t.Errorf("stream differs from %s (run go test -update after a deliberate format change)", path)
	}
}

// TestTruncation cuts the stream at every byte: each cut must be reported
// as io.ErrUnexpectedEOF, never accepted.
func TestTruncation(t *testing.T) {
	b := sample(t)
	for n := 0; n < len(b); n++ {
		r := NewReader(bytes.NewReader(b[:n]))
		_, err := readAll(r)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("cut at %d of %d: err = %v; want io.ErrUnexpectedEOF", n, len(b), err)
		}
	}
}

// TestCorruption flips every byte of the stream in turn: no flip may be
// accepted.
func TestCorruption(t *testing.T) {
	b := sample(t)
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		_, err := readAll(NewReader(bytes.NewReader(c)))
		if err == nil {
			if _, herr := NewReader(bytes.NewReader(c)).Header(); herr == nil {
				t.Fatalf("flip at offset %d accepted", i)
			}
		}
	}
}

func TestBroken(t *testing.T) {
	good := sample(t)
	twice := append(bytes.Clone(good), good...)
	badMagic := bytes.Clone(good)
	badMagic[1] = 'X'
	badVersion := bytes.Clone(good)
	badVersion[8] = 2
	huge := bytes.Clone(good[:PreambleSize])
	huge = append(huge, byte(TypeHeader), FlagCritical, 0, 0, 0xff, 0xff, 0xff, 0x7f)
	var noEnd bytes.Buffer
	w := NewWriter(&noEnd)
	w.WriteHeader(testHeader(KindFull))
	w.WriteMem(0, page(1))
	w.Flush()
	var upstream bytes.Buffer
	w = NewWriter(&upstream)
	w.WriteHeader(testHeader(KindFull))
	w.WriteMem(0, page(1))
	w.WriteError("vm-capture", "migration failed")
	var overlap bytes.Buffer
	w = NewWriter(&overlap)
	w.WriteHeader(testHeader(KindFull))
	w.WriteMem(0, page(1))
	w.WriteMemZero(0, PageSize)
	w.Close()
	var outside bytes.Buffer
	w = NewWriter(&outside)
	w.WriteHeader(testHeader(KindFull))
	w.WriteMem(1<<20, page(1))
	w.Close()
	var dangling bytes.Buffer
	w = NewWriter(&dangling)
	w.WriteHeader(testHeader(KindDiff))
	w.WriteCopy(Copy{Space: SpaceMem, Source: SourceStreamMem, Offset: 0, SourceOffset: PageSize, Length: PageSize})
	w.Close()
	var crit bytes.Buffer
	w = NewWriter(&crit)
	w.WriteHeader(testHeader(KindFull))
	w.WriteRecord(&Record{Type: 0x66, Flags: FlagCritical, Payload: []byte("x")})
	w.Close()

	for _, tc := range []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"bad magic", badMagic, ErrBadMagic},
		{"bad version", badVersion, ErrVersion},
		{"oversized length", huge, ErrTooLarge},
		{"missing end", noEnd.Bytes(), io.ErrUnexpectedEOF},
		{"two streams", twice, ErrTrailing},
		{"overlap", overlap.Bytes(), ErrOverlap},
		{"outside memory", outside.Bytes(), ErrOutOfRange},
		{"dangling copy", dangling.Bytes(), ErrDanglingCopy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(NewReader(bytes.NewReader(tc.in)))
			if !errors.Is(err, tc.want) {
				t.Errorf("err = %v; want %v", err, tc.want)
			}
			var ce *CorruptError
			if err != nil && !errors.As(err, &ce) {
				t.Errorf("err %T is not a *CorruptError", err)
			}
		})
	}
	t.Run("upstream", func(t *testing.T) {
		_, err := readAll(NewReader(bytes.NewReader(upstream.Bytes())))
		var up *UpstreamError
		if !errors.As(err, &up) || up.Stage != "vm-capture" || err.Error() != "upstream vm-capture failed: migration failed" {
			t.Errorf("err = %v; want upstream vm-capture failed: migration failed", err)
		}
	})
	t.Run("unknown critical", func(t *testing.T) {
		r := NewReader(bytes.NewReader(crit.Bytes()))
		rec, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := CheckKnown(rec); !errors.Is(err, ErrUnknownCrit) {
			t.Errorf("CheckKnown = %v; want ErrUnknownCrit", err)
		}
	})
	// write the broken fixtures so other tools' tests and readers can use them
	if *update {
		for name, b := range map[string][]byte{"bad-magic.bin": badMagic, "missing-end.bin": noEnd.Bytes(), "upstream-error.bin": upstream.Bytes(), "overlap.bin": overlap.Bytes(), "two-streams.bin": twice} {
			os.WriteFile(filepath.Join("testdata", name), b, 0o644)
		}
	}
}

func TestValidateDesc(t *testing.T) {
	for _, mod := range []func(*VMDesc){
		func(d *VMDesc) { d.Machine = "pc,accel=kvm" },
		func(d *VMDesc) { d.CPU = "host -device foo" },
		func(d *VMDesc) { d.MemSize = 4097 },
		func(d *VMDesc) { d.Append = "console=ttyS0\n-drive file=/etc/passwd" },
		func(d *VMDesc) { d.Kernel = "../../etc/passwd" },
		func(d *VMDesc) { d.Forwards = []Forward{{Proto: "tcp,hostfwd", GuestPort: 80}} },
	} {
		h := testHeader(KindFull)
		mod(&h.VM)
		if err := h.Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("Validate(%+v) = %v; want ErrMalformed", h.VM, err)
		}
	}
}

// TestLive: a live (handoff) stream may write a range again, the latest
// record winning; it may not have a MANIFEST; only diff and overlay streams
// relative to the base are live.
func TestLive(t *testing.T) {
	live := func() *Header {
		h := testHeader(KindDiff)
		h.MemRelative, h.Live = true, true
		return h
	}
	stream := func(h *Header, body func(w *Writer)) []byte {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		body(w)
		w.Close()
		return buf.Bytes()
	}
	passes := stream(live(), func(w *Writer) {
		w.WriteMem(0, page(1))
		w.WriteDisk(0, page(2))
		w.WriteMem(0, page(3)) // pass 2
		w.WriteMemZero(0, 2*PageSize)
		w.WriteDiskZero(512, 512)
		w.WriteCopy(Copy{Space: SpaceMem, Source: SourceBaseMem, Offset: 0, SourceOffset: 0, Length: PageSize})
	})
	if _, err := readAll(NewReader(bytes.NewReader(passes))); err != nil {
		t.Errorf("a live stream writing ranges again: %v", err)
	}
	notLive := testHeader(KindDiff)
	notLive.MemRelative = true
	if _, err := readAll(NewReader(bytes.NewReader(stream(notLive, func(w *Writer) {
		w.WriteMem(0, page(1))
		w.WriteMem(0, page(3))
	})))); !errors.Is(err, ErrOverlap) {
		t.Errorf("the same without live: %v, want ErrOverlap", err)
	}
	// A COPY from the stream reads what earlier records wrote (and only
	// that: the validator still refuses a dangling one).
	selfCopy := stream(live(), func(w *Writer) {
		w.WriteMem(0, page(1))
		w.WriteMem(0, page(2))
		w.WriteCopy(Copy{Space: SpaceMem, Source: SourceStreamMem, Offset: PageSize, SourceOffset: 0, Length: PageSize})
		w.WriteCopy(Copy{Space: SpaceDisk, Source: SourceStreamMem, Offset: 0, SourceOffset: PageSize, Length: PageSize})
	})
	if _, err := readAll(NewReader(bytes.NewReader(selfCopy))); err != nil {
		t.Errorf("COPY from ranges the live stream wrote: %v", err)
	}
	dangling := stream(live(), func(w *Writer) {
		w.WriteMem(0, page(1))
		w.WriteCopy(Copy{Space: SpaceMem, Source: SourceStreamMem, Offset: PageSize, SourceOffset: 2 * PageSize, Length: PageSize})
	})
	if _, err := readAll(NewReader(bytes.NewReader(dangling))); !errors.Is(err, ErrDanglingCopy) {
		t.Errorf("COPY from a range the live stream never wrote: %v, want ErrDanglingCopy", err)
	}
	withManifest := stream(live(), func(w *Writer) {
		w.WriteMeta(TypeManifest, Manifest{Mem: [][2]uint64{{0, PageSize}}})
		w.WriteMem(0, page(1))
	})
	if _, err := readAll(NewReader(bytes.NewReader(withManifest))); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "live") {
		t.Errorf("MANIFEST in a live stream: %v, want a refusal naming live", err)
	}
	for _, h := range []*Header{testHeader(KindFull), func() *Header { h := testHeader(KindDiff); h.Live = true; return h }()} {
		h.Live = true
		if err := h.Validate(); !errors.Is(err, ErrMalformed) {
			t.Errorf("live %s stream (mem_relative %v): Validate = %v, want ErrMalformed", h.Kind, h.MemRelative, err)
		}
	}
}
