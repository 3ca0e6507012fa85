package overlay

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/delta"
	"cloudlet/lib/sign"
)

// fuzzKey is a fixed signing key, so seeds signed with it stay valid.
func fuzzKey() *sign.PrivateKey {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	return &sign.PrivateKey{ID: sign.KeyID(priv.Public().(ed25519.PublicKey)), Key: priv}
}

// smallWorld is a 64 KiB base and a diff stream using every record kind
// against it: the fuzz seeds are overlays of it, a few KiB each.
func smallWorld(t testing.TB) (*memBase, []byte) {
	const size = 64 << 10
	r := rand.New(rand.NewPCG(2, 2))
	b := &memBase{id: testBaseID, mem: make([]byte, size), disk: make([]byte, size)}
	fill(r, b.mem)
	fill(r, b.disk)
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const P = 4096
	M, D := format.SpaceMem, format.SpaceDisk
	must(w.WriteHeader(header(size, size)))
	must(w.WriteDevState([]byte("QEVM")))
	must(w.WriteMem(0, bytes.Repeat([]byte("m"), P)))
	must(w.WriteMemZero(P, P))
	must(w.WriteCopy(format.Copy{Space: M, Source: format.SourceBaseMem, Offset: 2 * P, SourceOffset: 5, Length: P}))
	must(w.WriteCopy(format.Copy{Space: M, Source: format.SourceStreamMem, Offset: 3 * P, SourceOffset: 0, Length: P}))
	target := bytes.Clone(b.mem[4*P : 5*P])
	target[3] ^= 0xff
	d, err := delta.Encode(delta.XOR, b.mem[4*P:5*P], target)
	must(err)
	must(w.WriteDelta(format.Delta{Space: M, Method: delta.XOR, Offset: 4 * P, Length: P, Delta: d}))
	copy(target[50:], "ops")
	d, err = delta.Encode(delta.Ops, b.mem[5*P:6*P], target)
	must(err)
	must(w.WriteDelta(format.Delta{Space: M, Method: delta.Ops, Offset: 5 * P, Length: P, Delta: d}))
	must(w.WriteDisk(0, bytes.Repeat([]byte("d"), 1024)))
	must(w.WriteDiskZero(1024, 512))
	must(w.WriteCopy(format.Copy{Space: D, Source: format.SourceStreamMem, Offset: 2048, SourceOffset: 0, Length: 512}))
	must(w.WriteCopy(format.Copy{Space: D, Source: format.SourceBaseDisk, Offset: 4096, SourceOffset: 3, Length: 1024}))
	must(w.Close())
	return b, buf.Bytes()
}

// fuzzSeeds: overlays without MANIFEST (seeds 0-2, zstd, xz, signed),
// with one (3), with a signed head (4), in access order (5).
func fuzzSeeds(t testing.TB) (*memBase, [][]byte) {
	b, diff := smallWorld(t)
	o := PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize, Workers: 1, NoManifest: true}
	xz := PackOptions{Codec: "xz", SegmentSize: MinSegmentSize, Workers: 1, NoManifest: true}
	m := PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize, Workers: 1}
	acc := m
	acc.Order, acc.AccessFile = format.OrderAccess, "fuzz"
	acc.Access = &format.AccessLog{Version: format.AccessLogVersion, Accesses: []format.Access{
		{Space: format.AccessMem, Offset: 3 * 4096, Length: 4096}, {Space: format.AccessDisk, Offset: 0, Length: 4096}}}
	return b, [][]byte{pack(t, diff, o), pack(t, diff, xz), packSigned(t, diff, o, fuzzKey()),
		pack(t, diff, m), packSigned(t, diff, m, fuzzKey()), pack(t, diff, acc)}
}

// TestWriteFuzzSeeds regenerates testdata/fuzz/FuzzApply/seed-* when
// CLOUDLET_WRITE_FUZZ_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("CLOUDLET_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set CLOUDLET_WRITE_FUZZ_SEEDS=1 to regenerate the FuzzApply seeds")
	}
	_, seeds := fuzzSeeds(t)
	dir := filepath.Join("testdata", "fuzz", "FuzzApply")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range seeds {
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
		if err := os.WriteFile(filepath.Join(dir, "seed-"+strconv.Itoa(i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzApply feeds arbitrary overlays to Apply against a small in-memory
// base, without and with the signature check of overlay-apply
// --trusted-keys --require-signature. It must never panic; Apply succeeds
// only if its output is a complete stream of resolved records (a MANIFEST
// first, whose promises it keeps); a failed Apply never leaves an END in
// its output; the signature check only ever accepts what plain Apply
// accepts, with the same records, and a MANIFEST it writes names the key.
func FuzzApply(f *testing.F) {
	b, seeds := fuzzSeeds(f)
	for _, s := range seeds {
		f.Add(s)
	}
	tmp := f.TempDir()
	key := fuzzKey()
	trusted := sign.Keyring{key.ID: key.Public()}
	f.Fuzz(func(t *testing.T, in []byte) {
		open := func(string) (Base, error) { return b, nil }
		o := ApplyOptions{Workers: 1, TempDir: tmp}
		var plain bytes.Buffer
		err := cliutil.Filter("overlay-apply", bytes.NewReader(in), &plain, func(r *format.Reader, w *format.Writer) error {
			return Apply(context.Background(), r, w, open, o)
		})
		complete, recs, _ := checkOutput(t, plain.Bytes())
		if (err == nil) != complete {
			t.Fatalf("Apply = %v but output complete = %v", err, complete)
		}
		v := NewVerifier(bytes.NewReader(in), VerifyOptions{Trusted: trusted, Require: true})
		var signed bytes.Buffer
		serr := cliutil.Filter("overlay-apply", v, &signed, func(r *format.Reader, w *format.Writer) error {
			o := o
			o.Verifier = v
			err := Apply(context.Background(), r, w, open, o)
			if verr := v.Err(); verr != nil {
				return verr
			}
			if err != nil {
				return err
			}
			return v.Check()
		})
		scomplete, srecs, m := checkOutput(t, signed.Bytes())
		if (serr == nil) != scomplete {
			t.Fatalf("verified Apply = %v but output complete = %v", serr, scomplete)
		}
		if serr == nil && (err != nil || !bytes.Equal(srecs, recs)) {
			t.Fatalf("the signature check accepted what Apply refused (%v) or changed the records", err)
		}
		if m != nil && m.Signer != key.ID {
			t.Fatalf("verified Apply wrote a MANIFEST with signer %q; want %s (signatures required)", m.Signer, key.ID)
		}
		if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
			t.Fatalf("scratch left behind: %s", ents[0].Name())
		}
	})
}

// checkOutput reads Apply's output: it reports whether it is a complete
// stream whose MANIFEST (if any) promised what it wrote, and returns its
// records but the MANIFEST (type and payload of each) and the MANIFEST.
// It fails on any record vm-resume would not accept.
func checkOutput(t *testing.T, out []byte) (complete bool, recs []byte, m *format.Manifest) {
	r := format.NewReader(bytes.NewReader(out))
	for n := 0; ; n++ {
		rec, err := r.Next()
		if err == io.EOF {
			return r.Validator().CheckPromised() == nil, recs, m
		}
		if err != nil {
			return false, recs, m
		}
		switch rec.Type {
		case format.TypeManifest:
			h, _ := r.Header()
			if m, err = rec.ManifestRecord(h); err != nil || n != 0 {
				t.Fatalf("output carries a MANIFEST as record %d: %v", n, err)
			}
			continue
		case format.TypeDevState, format.TypeMem, format.TypeMemZero, format.TypeDisk, format.TypeDiskZero:
		default:
			t.Fatalf("output carries a %s record", rec.Type)
		}
		recs = append(append(recs, byte(rec.Type)), rec.Payload...)
	}
}
