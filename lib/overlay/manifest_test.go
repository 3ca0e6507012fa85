package overlay

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/sign"

	"github.com/cespare/xxhash/v2"
)

// readOverlay returns an overlay's MANIFEST (nil if none), INDEX and
// SEGMENT payloads, and the types of its records after the HEADER.
func readOverlay(t *testing.T, ov []byte) (m *format.Manifest, idx *format.Index, segs [][]byte, types []format.Type) {
	t.Helper()
	r := format.NewReader(bytes.NewReader(ov))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return m, idx, segs, types
		}
		if err != nil {
			t.Fatalf("reading the overlay: %v", err)
		}
		types = append(types, rec.Type)
		switch rec.Type {
		case format.TypeManifest:
			if m, err = rec.ManifestRecord(h); err != nil {
				t.Fatal(err)
			}
		case format.TypeIndex:
			idx = &format.Index{}
			if err := format.Unmarshal(rec.Payload, idx); err != nil {
				t.Fatal(err)
			}
		case format.TypeSegment:
			segs = append(segs, bytes.Clone(rec.Payload))
		}
	}
}

// outRecord is a record of Apply's output: its type and the range it
// writes.
type outRecord struct {
	Type      format.Type
	Space     uint8
	Off, Len  uint64
	Source    uint8 // COPY
	SourceOff uint64
}

func (r outRecord) String() string {
	return fmt.Sprintf("%s %d:%d+%d", r.Type, r.Space, r.Off, r.Len)
}

// readOutput returns the MANIFEST of Apply's output (nil if none) and its
// other records.
func readOutput(t *testing.T, out []byte) (*format.Manifest, []outRecord) {
	t.Helper()
	r := format.NewReader(bytes.NewReader(out))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	var m *format.Manifest
	var recs []outRecord
	for {
		rec, err := r.Next()
		if err == io.EOF {
			if err := r.Validator().CheckPromised(); err != nil {
				t.Fatalf("output: %v", err)
			}
			return m, recs
		}
		if err != nil {
			t.Fatalf("reading the output: %v", err)
		}
		if rec.Type == format.TypeManifest {
			if m, err = rec.ManifestRecord(h); err != nil {
				t.Fatal(err)
			}
			continue
		}
		o := outRecord{Type: rec.Type}
		if sp, off, n, ok := target(rec); ok {
			o.Space, o.Off, o.Len = sp, off, n
		}
		if c, err := rec.CopyRecord(); err == nil {
			o.Source, o.SourceOff = c.Source, c.SourceOffset
		}
		recs = append(recs, o)
	}
}

// frame returns a frame with its Check.
func frame(typ format.Type, flags uint8, payload []byte) []byte {
	f := make([]byte, format.FrameHeadSize, format.FrameHeadSize+len(payload)+format.FrameTailSize)
	f[0], f[1] = byte(typ), flags
	binary.LittleEndian.PutUint32(f[4:], uint32(len(payload)))
	f = append(f, payload...)
	return binary.LittleEndian.AppendUint64(f, xxhash.Sum64(f))
}

// withFrame returns ov with frame i (0: the HEADER) replaced by one of the
// same type and flags carrying payload, its Check and the END (frames,
// bytes, digest, sha256) recomputed, as anyone can: only the INDEX, the
// MANIFEST and the signatures can tell.
func withFrame(t *testing.T, ov []byte, i int, payload []byte) []byte {
	t.Helper()
	pre, fr := frames(ov)
	fr[i] = frame(format.Type(fr[i][0]), fr[i][1], payload)
	var end format.End // as format.Writer.Close computes it
	if err := format.Unmarshal(payloadOf(ov, len(fr)-1), &end); err != nil {
		t.Fatal(err)
	}
	body := bytes.Join(append([][]byte{pre}, fr[:len(fr)-1]...), nil)
	d := xxhash.New()
	d.Write(pre)
	for _, f := range fr[:len(fr)-1] {
		d.Write(f[len(f)-format.FrameTailSize:])
	}
	sum := sha256.Sum256(body)
	end.Frames, end.Bytes, end.Digest, end.SHA256 = uint64(len(fr)-1), uint64(len(body)), d.Sum64(), hex.EncodeToString(sum[:])
	b, err := format.Marshal(&end)
	if err != nil {
		t.Fatal(err)
	}
	return append(body, frame(format.TypeEnd, format.FlagCritical, b)...)
}

// frameIndex returns the number of the first frame of type t in ov.
func frameIndex(t *testing.T, ov []byte, typ format.Type) int {
	t.Helper()
	_, fr := frames(ov)
	for i, f := range fr {
		if format.Type(f[0]) == typ {
			return i
		}
	}
	t.Fatalf("no %s frame", typ)
	return 0
}

func payloadOf(ov []byte, i int) []byte {
	_, fr := frames(ov)
	return fr[i][format.FrameHeadSize : len(fr[i])-format.FrameTailSize]
}

// TestManifestRoundTrip: the overlay's MANIFEST describes its segments
// as the INDEX does, and Apply's output starts with a MANIFEST whose
// ranges are the union of the INDEX's, kept by the records after it.
func TestManifestRoundTrip(t *testing.T) {
	wd := makeWorld(t)
	tmp := t.TempDir()
	ov := pack(t, wd.diff, PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize, TempDir: tmp})
	m, idx, segs, types := readOverlay(t, ov)
	if m == nil || types[0] != format.TypeManifest {
		t.Fatalf("overlay records %v; want a MANIFEST first", types)
	}
	if m.Order != format.OrderOffset || idx.Order != format.OrderOffset {
		t.Errorf("orders %q (MANIFEST), %q (INDEX); want offset", m.Order, idx.Order)
	}
	if len(m.Segments) != len(segs) || len(idx.Segments) != len(segs) || len(segs) < 3 {
		t.Fatalf("MANIFEST lists %d segments, INDEX %d, overlay has %d; want equal and several", len(m.Segments), len(idx.Segments), len(segs))
	}
	var mem, disk ranges
	for i, s := range m.Segments {
		sum := sha256.Sum256(segs[i])
		x := idx.Segments[i]
		if s.Size != uint64(len(segs[i])) || s.Size != x.Size+8 || s.Raw != x.Raw || !bytes.Equal(s.SHA256, sum[:]) {
			t.Errorf("segment %d: MANIFEST %d bytes (%d raw), sha256 %x; payload %d bytes, sha256 %x, INDEX %d+8 (%d raw)",
				i, s.Size, s.Raw, s.SHA256, len(segs[i]), sum, x.Size, x.Raw)
		}
		if !slices.Equal(s.Mem, x.Mem) || !slices.Equal(s.Disk, x.Disk) {
			t.Errorf("segment %d: MANIFEST ranges %v %v, INDEX %v %v", i, s.Mem, s.Disk, x.Mem, x.Disk)
		}
		mem, disk = append(mem, x.Mem...), append(disk, x.Disk...)
	}
	for _, copies := range []bool{false, true} {
		var out bytes.Buffer
		if err := applyWith(ov, wd.base, &out, ApplyOptions{KeepCopies: copies}); err != nil {
			t.Fatalf("Apply = %v", err)
		}
		om, _ := readOutput(t, out.Bytes())
		if om == nil {
			t.Fatalf("Apply's output has no MANIFEST")
		}
		if !slices.Equal(om.Mem, mem.normalize(0)) || !slices.Equal(om.Disk, disk.normalize(0)) || om.Order != format.OrderOffset || om.Signer != "" || len(om.Segments) != 0 {
			t.Errorf("output MANIFEST %+v; want mem %v, disk %v, order offset, no signer", om, mem, disk)
		}
		if !wd.same(t, out.Bytes(), copies) {
			t.Errorf("overlay with a MANIFEST applies to a different VM")
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("spool file left in the temporary folder: %s", ents[0].Name())
	}
}

// TestManifestRefusals: a segment that does not match the MANIFEST is
// refused before it is decompressed, naming the segment and its offset;
// a MANIFEST that lies about ranges or segment counts is refused too.
func TestManifestRefusals(t *testing.T) {
	wd := makeWorld(t)
	ov := pack(t, wd.diff, PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize})
	m, _, _, _ := readOverlay(t, ov)
	mi := frameIndex(t, ov, format.TypeManifest)
	first := frameIndex(t, ov, format.TypeSegment)
	_, fr := frames(ov)
	offsetOf := func(i int) int {
		off := format.PreambleSize
		for _, f := range fr[:i] {
			off += len(f)
		}
		return off
	}
	lie := func(change func(m *format.Manifest)) []byte {
		m2, _, _, _ := readOverlay(t, ov)
		change(m2)
		b, err := format.Marshal(m2)
		if err != nil {
			t.Fatal(err)
		}
		return withFrame(t, ov, mi, b)
	}
	// A byte of segment 1's compressed data changed, frame Check made to
	// match: only the MANIFEST's sha256 can tell, before the codec runs.
	seg1 := bytes.Clone(payloadOf(ov, first+1))
	seg1[len(seg1)/2] ^= 0x20
	last := len(m.Segments) - 1
	withMem := slices.IndexFunc(m.Segments, func(s format.ManifestSegment) bool { return len(s.Mem) > 0 })
	if withMem < 0 {
		t.Fatal("no segment writes memory")
	}
	for _, tc := range []struct {
		name string
		ov   []byte
		want []string
	}{
		{"corrupted segment", withFrame(t, ov, first+1, seg1), []string{"segment 1 ", fmt.Sprintf("offset %d", offsetOf(first+1)), "sha256", "does not match the MANIFEST"}},
		{"sha256 changed in the MANIFEST", lie(func(m *format.Manifest) { m.Segments[2].SHA256[0] ^= 1 }), []string{"segment 2 ", "sha256"}},
		{"raw size changed in the MANIFEST", lie(func(m *format.Manifest) { m.Segments[0].Raw-- }), []string{"segment 0 ", "raw"}},
		{"a range missing from the MANIFEST", lie(func(m *format.Manifest) { m.Segments[last].Disk = m.Segments[last].Disk[1:] }), []string{fmt.Sprintf("segment %d ", last), "is not in the stream's MANIFEST"}},
		{"a range too short in the MANIFEST", lie(func(m *format.Manifest) { m.Segments[withMem].Mem[0][1] -= format.PageSize }), []string{fmt.Sprintf("segment %d ", withMem), "is not in the stream's MANIFEST"}},
		{"ranges of two segments swapped", lie(func(m *format.Manifest) {
			s := m.Segments
			s[0].Mem, s[0].Disk, s[1].Mem, s[1].Disk = s[1].Mem, s[1].Disk, s[0].Mem, s[0].Disk
		}), []string{"segment 0 ", "does not list"}},
		{"a segment missing from the MANIFEST", lie(func(m *format.Manifest) { m.Segments = m.Segments[:last] }), []string{fmt.Sprintf("segment %d ", last), "lists only"}},
		{"a segment the overlay does not have", lie(func(m *format.Manifest) {
			m.Segments = append(m.Segments, format.ManifestSegment{Size: 9, Raw: 1, SHA256: make([]byte, 32)})
		}), []string{fmt.Sprintf("segment %d is missing", last+1)}},
		{"a range promised, never written", lie(func(m *format.Manifest) {
			m.Segments[0].Mem = append(m.Segments[0].Mem, [2]uint64{900 * 1024, 4096})
		}), []string{"promised memory 921600+4096"}},
	} {
		err := mustFail(t, tc.name, tc.ov, wd.base)
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v; want %q in it", tc.name, err, w)
			}
		}
		var ce *format.CorruptError
		if !errors.As(err, &ce) || cliutil.ExitCode(err) != cliutil.ExitCorrupt {
			t.Errorf("%s: %v (%T, exit %d); want a CorruptError, exit %d", tc.name, err, err, cliutil.ExitCode(err), cliutil.ExitCorrupt)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// worldLog is an access log of makeWorld's VM: first the target of a COPY
// whose source comes third, then a disk range, the COPY's source, a
// DELTA, and the target of a COPY from a range no access touches.
func worldLog() *format.AccessLog {
	const P = 4096
	return &format.AccessLog{Version: format.AccessLogVersion, Accesses: []format.Access{
		{Space: format.AccessMem, Offset: 9 * P, Length: P},    // rank 0: COPY from stream memory [0, 2P)
		{Space: format.AccessDisk, Offset: 1 << 19, Length: P}, // rank 1: DISK at 1<<19
		{Space: format.AccessMem, Offset: 0, Length: 2 * P},    // rank 2: MEM at 0, the COPY's source
		{Space: format.AccessMem, Offset: 12 * P, Length: P},   // rank 3: DELTA
		{Space: format.AccessMem, Offset: 11 * P, Length: P},   // rank 4: COPY from MEM_ZERO at 4P, untouched
		{Space: format.AccessMem, Offset: 9 * P, Length: P},    // again: the first access counts
	}}
}

func TestAccessOrder(t *testing.T) {
	wd := makeWorld(t)
	const P = 4096
	tmp := t.TempDir()
	o := PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize, EarlySegmentSize: MinSegmentSize, TempDir: tmp,
		Order: format.OrderAccess, Access: worldLog(), AccessFile: "world.json"}
	ov := pack(t, wd.diff, o)
	m, idx, _, _ := readOverlay(t, ov)
	if m == nil || m.Order != format.OrderAccess || idx.Order != format.OrderAccess {
		t.Fatalf("overlay MANIFEST %+v, INDEX order %q; want order access in both", m, idx.Order)
	}
	var out bytes.Buffer
	if err := applyWith(ov, wd.base, &out, ApplyOptions{KeepCopies: true}); err != nil {
		t.Fatalf("Apply = %v", err)
	}
	om, recs := readOutput(t, out.Bytes())
	if om == nil || om.Order != format.OrderAccess {
		t.Errorf("output MANIFEST %+v; want order access", om)
	}
	M, D := format.SpaceMem, format.SpaceDisk
	want := []outRecord{
		{Type: format.TypeDevState},
		{Type: format.TypeDisk, Space: D, Off: 1 << 19, Len: P}, // cut out of a longer record
		{Type: format.TypeMem, Space: M, Off: 0, Len: 2 * P},    // cut too
		{Type: format.TypeCopy, Space: M, Off: 9 * P, Len: 2 * P, Source: format.SourceStreamMem},
		{Type: format.TypeMem, Space: M, Off: 12 * P, Len: P}, // the DELTA, resolved
	}
	// The disk's start (StartDisk) comes before the first logged access,
	// with the records its COPY records read from (pulled forward, so
	// the touched ones may come in another order than the log's).
	isStart := func(r outRecord) bool { return r.Space == D && r.Off < StartDisk }
	lastStart := slices.IndexFunc(recs, func(r outRecord) bool { return r == want[1] }) - 1
	if lastStart < 1 || slices.ContainsFunc(recs[lastStart+1:], isStart) {
		t.Errorf("output %v; want the records of the disk's first %d bytes before the first logged access (%v)", recs[:min(len(recs), 12)], StartDisk, want[1])
	}
	recs = slices.DeleteFunc(recs, isStart)
	got := slices.Clone(recs[:min(len(recs), len(want))])
	slices.SortFunc(got[1:], cmpRecords)
	slices.SortFunc(want[1:], cmpRecords)
	if recs[0] != want[0] || !slices.Equal(got, want) {
		t.Fatalf("output starts %v; want %v in some order", recs[:min(len(recs), len(want)+2)], want)
	}
	// The COPY to 11P (touched at 12P, after the others) reads MEM_ZERO at
	// 4P, which no access touched: the COPY pulls it forward, just before
	// itself, and both come before the untouched records.
	at := func(typ format.Type, off uint64) int {
		return slices.IndexFunc(recs, func(r outRecord) bool { return r.Type == typ && r.Space == M && r.Off == off })
	}
	if z, c := at(format.TypeMemZero, 4*P), at(format.TypeCopy, 11*P); z < len(want) || c != z+1 || c > len(want)+1 {
		t.Errorf("MEM_ZERO at 4P is record %d, the COPY from it %d; want them right after the touched ones (%d), in that order", z, c, len(want))
	}
	// Same VM as the offset order: the same state and the same resolved
	// records, in another order.
	plain := pack(t, wd.diff, PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize})
	resolved := func(ov []byte) []outRecord {
		var out bytes.Buffer
		if err := apply(ov, wd.base, &out); err != nil {
			t.Fatalf("Apply = %v", err)
		}
		if !wd.same(t, out.Bytes(), false) {
			t.Errorf("overlay applies to a different VM")
		}
		_, recs := readOutput(t, out.Bytes())
		slices.SortFunc(recs, func(a, b outRecord) int {
			return cmpRecords(a, b)
		})
		return recs
	}
	// (Access order cuts records where the log's ranges end, so the
	// records differ; the state they give must not.)
	if a, b := resolved(ov), resolved(plain); len(a) < len(b) {
		t.Errorf("access order resolves to %d records, offset order to %d; want at least as many (cut, never merged)", len(a), len(b))
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("spool file left in the temporary folder: %s", ents[0].Name())
	}
}

func cmpRecords(a, b outRecord) int {
	return cmp.Or(cmp.Compare(a.Type, b.Type), cmp.Compare(a.Space, b.Space), cmp.Compare(a.Off, b.Off), cmp.Compare(a.Len, b.Len))
}

// TestAccessSegments: the device state, the disk's start (StartDisk) and
// the touched records go into small segments, the rest into normal ones
// after them; no segment mixes the two, no record is split.
func TestAccessSegments(t *testing.T) {
	wd := makeWorld(t)
	const P = 4096
	early := [3][][2]uint64{
		// 4P: the source of the touched COPY to 11P; records are cut
		// where the access log's ranges start and end.
		format.SpaceMem:  {{0, 2 * P}, {4 * P, 2 * P}, {9 * P, 2 * P}, {11 * P, 2 * P}},
		format.SpaceDisk: {{0, StartDisk}, {1 << 19, P}},
	}
	isEarly := func(sp uint8, r [2]uint64) bool {
		for _, e := range early[sp] {
			if r[0] < e[0]+e[1] && e[0] < r[0]+r[1] {
				return true
			}
		}
		return false
	}
	for _, size := range []int{0, MinSegmentSize} {
		o := PackOptions{Codec: "zstd", Order: format.OrderAccess, Access: worldLog(), AccessFile: "world.json", EarlySegmentSize: size}
		_, idx, _, _ := readOverlay(t, pack(t, wd.diff, o))
		limit := uint64(cmp.Or(size, DefaultEarlySegmentSize))
		late, nEarly := false, 0
		for i, s := range idx.Segments {
			var e, l int
			for sp, rs := range map[uint8][][2]uint64{format.SpaceMem: s.Mem, format.SpaceDisk: s.Disk} {
				for _, r := range rs {
					if isEarly(sp, r) {
						e++
					} else {
						l++
					}
				}
			}
			switch {
			case e > 0 && l > 0:
				t.Errorf("early segment size %d: segment %d mixes touched and untouched ranges: mem %v, disk %v", size, i, s.Mem, s.Disk)
			case e > 0 && late:
				t.Errorf("early segment size %d: segment %d holds touched ranges after an untouched segment", size, i)
			case l > 0 || (e == 0 && i > 0):
				late = true
			default:
				nEarly++
				if s.Raw > limit && e > 1 {
					t.Errorf("early segment size %d: early segment %d holds %d raw bytes in %d ranges; want at most %d (one record may be larger)", size, i, s.Raw, e, limit)
				}
			}
		}
		if nEarly < 1 || !late {
			t.Errorf("early segment size %d: %d early segments, later ones %v; want early segments, then normal ones", size, nEarly, late)
		}
	}
}

func TestAccessLogChecked(t *testing.T) {
	wd := makeWorld(t)
	tmp := t.TempDir()
	run := func(l *format.AccessLog, log io.Writer) ([]byte, error) {
		var out bytes.Buffer
		err := cliutil.Filter("overlay-pack", bytes.NewReader(wd.diff), &out, func(r *format.Reader, w *format.Writer) error {
			return Pack(context.Background(), r, w, PackOptions{Order: format.OrderAccess, Access: l, AccessFile: "vm.json", TempDir: tmp, Log: log})
		})
		return out.Bytes(), err
	}
	outside := &format.AccessLog{Accesses: []format.Access{{Space: format.AccessMem, Offset: 0, Length: 4096}, {Space: format.AccessDisk, Offset: 1 << 20, Length: 4096}}}
	if _, err := run(outside, nil); err == nil || !strings.Contains(err.Error(), "access log vm.json: access 1 (disk 1048576+4096) lies outside") {
		t.Errorf("Pack with an access outside the disk = %v; want an error naming the file and the access", err)
	}
	// Nothing touched: the offset order, said on the log, the same overlay.
	var note bytes.Buffer
	untouched := &format.AccessLog{Accesses: []format.Access{{Space: format.AccessMem, Offset: 210 * 4096, Length: 4096}}}
	ov, err := run(untouched, &note)
	if err != nil || !strings.Contains(note.String(), "offset order") {
		t.Fatalf("Pack with an access log that touches nothing = %v, note %q; want success and a note", err, note.String())
	}
	// (with the access order's smaller segments)
	if plain := pack(t, wd.diff, PackOptions{SegmentSize: DefaultEarlySegmentSize}); !bytes.Equal(ov, plain) {
		t.Errorf("an access log that touches nothing gave another overlay than the offset order")
	}
	// An input that fails half way: the spool files go too.
	if _, err := run(worldLog(), nil); err != nil {
		t.Fatal(err)
	}
	var up bytes.Buffer
	err = cliutil.Filter("overlay-pack", bytes.NewReader(wd.diff[:len(wd.diff)/2]), &up, func(r *format.Reader, w *format.Writer) error {
		return Pack(context.Background(), r, w, PackOptions{Order: format.OrderAccess, Access: worldLog(), TempDir: tmp})
	})
	if err == nil {
		t.Errorf("Pack of a truncated stream = nil")
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		t.Errorf("spool file left in the temporary folder: %s", ents[0].Name())
	}
}

// resignOld returns ov (packed with a MANIFEST, unsigned) signed the way
// an overlay-pack from before HEAD_SIGNATURE signed: a SIGNER after the
// HEADER, a SIGNATURE before END, no HEAD_SIGNATURE.
func resignOld(t *testing.T, ov []byte, k *sign.PrivateKey) []byte {
	t.Helper()
	r := format.NewReader(bytes.NewReader(ov))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	hw := sign.NewHashWriter(&out)
	w := format.NewWriter(hw)
	w.HashSHA256()
	w.WriteHeader(h)
	signer, _ := sign.SignerPayload(k.ID)
	w.WriteRecord(&format.Record{Type: format.TypeSigner, Payload: signer})
	shift := w.Bytes() - uint64(r.Offset())
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type == format.TypeIndex {
			var idx format.Index
			format.Unmarshal(rec.Payload, &idx)
			for i := range idx.Segments {
				idx.Segments[i].Offset += shift
			}
			w.WriteMeta(format.TypeIndex, &idx)
			continue
		}
		w.WriteRecord(rec)
	}
	w.Flush()
	sig, _ := sign.SignaturePayload(k, hw.Sum())
	w.WriteRecord(&format.Record{Type: format.TypeSignature, Payload: sig})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestHeadSignature: a signed overlay's head is verified as soon as it is
// read, and the output MANIFEST names the key; an altered head, a head
// signed by another key and a moved head signature are refused before any
// segment is used; with signatures required, an overlay whose head is not
// signed gets no output MANIFEST.
func TestHeadSignature(t *testing.T) {
	wd := makeWorld(t)
	k, other := testKey(t), testKey(t)
	o := PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize}
	signed := packSigned(t, wd.diff, o, k)
	_, _, _, types := readOverlay(t, signed)
	if types[0] != format.TypeSigner || types[1] != format.TypeManifest || types[2] != format.TypeHeadSignature {
		t.Fatalf("signed overlay records %v; want SIGNER, MANIFEST, HEAD_SIGNATURE first", types)
	}
	pol := VerifyOptions{Trusted: ring(k)}
	req := VerifyOptions{Trusted: ring(k), Require: true}
	for _, vo := range []VerifyOptions{pol, req} {
		err, out := applyVerifiedOut(signed, wd.base, vo)
		if err != nil || !complete(out) {
			t.Fatalf("apply of a signed overlay = %v; want success", err)
		}
		if m, _ := readOutput(t, out); m == nil || m.Signer != k.ID {
			t.Errorf("output MANIFEST %+v; want signer %s", m, k.ID)
		}
	}

	pre, fr := frames(signed)
	join := func(fs ...[]byte) []byte { return bytes.Join(append([][]byte{pre}, fs...), nil) }
	headSig := fr[3]
	_, ofr := frames(packSigned(t, wd.diff, o, other))
	_, xfr := frames(packSigned(t, wd.diff, PackOptions{Codec: "xz", SegmentSize: MinSegmentSize}, k))
	m, _, _, _ := readOverlay(t, signed)
	m.Segments[0].SHA256[0] ^= 1 // as if segment 0 had been replaced
	alteredManifest, err := format.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		ov    []byte
		want  string
		later bool // refused only after the head (the head signature is not where it belongs)
	}{
		{"MANIFEST altered", withFrame(t, signed, 2, alteredManifest), "head signature", false},
		{"head signed by another key", join(append([][]byte{fr[0], fr[1], fr[2], ofr[3]}, fr[4:]...)...), other.ID, false},
		{"head signature of another overlay", join(append([][]byte{fr[0], fr[1], fr[2], xfr[3]}, fr[4:]...)...), "head signature", false},
		{"head signature duplicated", join(append([][]byte{fr[0], fr[1], fr[2], headSig, headSig}, fr[4:]...)...), "HEAD_SIGNATURE", false},
		{"head signature moved", join(append([][]byte{fr[0], fr[1], fr[2], fr[4], headSig}, fr[5:]...)...), "HEAD_SIGNATURE", true},
	} {
		err, out := applyVerifiedOut(tc.ov, wd.base, pol)
		var se *SignatureError
		if err == nil || !errors.As(err, &se) || se.Policy || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v; want a SignatureError (altered) with %q", tc.name, err, tc.want)
			continue
		}
		// Refused at the head: the output has no record, not even a
		// HEADER. A moved head signature leaves the head unsigned (as an
		// older overlay-pack's) and is refused when it turns up.
		r := format.NewReader(bytes.NewReader(out))
		if _, err := r.Header(); err == nil && !tc.later {
			t.Errorf("%s: the output has a HEADER; want the refusal before anything", tc.name)
		}
		if complete(out) {
			t.Errorf("%s: the output is complete", tc.name)
		}
		t.Logf("%s: %v", tc.name, err)
	}

	// Signed by an older overlay-pack: a MANIFEST, no HEAD_SIGNATURE.
	old := resignOld(t, pack(t, wd.diff, o), k)
	_, _, _, types = readOverlay(t, old)
	if types[0] != format.TypeSigner || types[1] != format.TypeManifest || slices.Contains(types, format.TypeHeadSignature) {
		t.Fatalf("old-style signed overlay records %v", types)
	}
	err, out := applyVerifiedOut(old, wd.base, pol)
	if err != nil || !complete(out) {
		t.Fatalf("apply of an old-style signed overlay = %v; want success", err)
	}
	if m, _ := readOutput(t, out); m == nil || m.Signer != "" {
		t.Errorf("old-style signed overlay: output MANIFEST %+v; want one, without signer", m)
	}
	if !wd.same(t, out, false) {
		t.Errorf("old-style signed overlay applies to a different VM")
	}
	// With signatures required, its unsigned MANIFEST is refused before
	// the Reader has it whole (issue 32: a crafted MANIFEST naming a
	// trusted key cost seconds of range checks before its refusal).
	err, out = applyVerifiedOut(old, wd.base, req)
	var se *SignatureError
	if !errors.As(err, &se) || !se.Policy || !strings.Contains(err.Error(), "MANIFEST is not signed") {
		t.Errorf("old-style signed overlay, signatures required: %v; want a policy SignatureError (MANIFEST is not signed)", err)
	}
	if complete(out) {
		t.Errorf("old-style signed overlay, signatures required: the output is complete")
	}
	or := format.NewReader(bytes.NewReader(out))
	for {
		rec, err := or.Next()
		if err != nil {
			break
		}
		if rec.Type == format.TypeManifest {
			t.Errorf("old-style signed overlay, signatures required: the output has a MANIFEST")
		}
	}
}

// TestAccessOrderAnyLog: whatever the access log, the overlay in access
// order packs (its records read back in order: no COPY before what it
// reads from) and applies to the same VM. Random logs found a COPY whose
// source was ranked later by distance than the COPY itself.
func TestAccessOrderAnyLog(t *testing.T) {
	wd := makeWorld(t)
	r := rand.New(rand.NewPCG(16, 16))
	for i := range 60 {
		l := &format.AccessLog{Version: format.AccessLogVersion}
		for range 1 + r.IntN(4) {
			sp := []string{format.AccessMem, format.AccessDisk}[r.IntN(2)]
			l.Accesses = append(l.Accesses, format.Access{Space: sp, Offset: uint64(r.IntN(256)) * format.PageSize, Length: format.PageSize})
		}
		o := PackOptions{Codec: "zstd", Order: format.OrderAccess, Access: l, AccessFile: "random.json"}
		ov := pack(t, wd.diff, o)
		var out bytes.Buffer
		if err := apply(ov, wd.base, &out); err != nil {
			t.Fatalf("log %d %v: Apply = %v", i, l.Accesses, err)
		}
		if !wd.same(t, out.Bytes(), false) {
			t.Fatalf("log %d %v: another VM", i, l.Accesses)
		}
	}
}
