package overlay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/sign"
)

func testKey(t testing.TB) *sign.PrivateKey {
	t.Helper()
	k, err := sign.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func packSigned(t testing.TB, diff []byte, o PackOptions, k *sign.PrivateKey) []byte {
	t.Helper()
	var out bytes.Buffer
	hw := sign.NewHashWriter(&out)
	err := cliutil.Filter("overlay-pack", bytes.NewReader(diff), hw, func(r *format.Reader, w *format.Writer) error {
		return PackSigned(context.Background(), r, w, hw, o, k)
	})
	if err != nil {
		t.Fatalf("PackSigned = %v", err)
	}
	return out.Bytes()
}

// applyVerified is what overlay-apply --trusted-keys does. It returns the
// error and whether the output stream ends in a valid END (which would let
// vm-resume start the guest).
func applyVerified(ov []byte, b Base, vo VerifyOptions) (error, bool) {
	err, out := applyVerifiedOut(ov, b, vo)
	return err, complete(out)
}

// applyVerifiedOut is applyVerified returning the output.
func applyVerifiedOut(ov []byte, b Base, vo VerifyOptions) (error, []byte) {
	var out bytes.Buffer
	v := NewVerifier(bytes.NewReader(ov), vo)
	err := cliutil.Filter("overlay-apply", v, &out, func(r *format.Reader, w *format.Writer) error {
		err := Apply(context.Background(), r, w, func(string) (Base, error) { return b, nil }, ApplyOptions{Verifier: v})
		if verr := v.Err(); verr != nil {
			return verr
		}
		if err != nil {
			return err
		}
		return v.Check()
	})
	return err, out.Bytes()
}

// complete reports whether a stream reads to a valid END.
func complete(b []byte) bool {
	r := format.NewReader(bytes.NewReader(b))
	for {
		_, err := r.Next()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
}

func ring(keys ...*sign.PrivateKey) sign.Keyring {
	r := sign.Keyring{}
	for _, k := range keys {
		r[k.ID] = k.Public()
	}
	return r
}

func TestSignedRoundTrip(t *testing.T) {
	wd := makeWorld(t)
	k := testKey(t)
	for _, o := range []PackOptions{{Codec: "zstd", SegmentSize: MinSegmentSize}, {Codec: "xz"}} {
		ov := packSigned(t, wd.diff, o, k)
		_, fr := frames(ov)
		if fr[1][0] != byte(format.TypeSigner) || fr[len(fr)-2][0] != byte(format.TypeSignature) {
			t.Fatalf("signed overlay: frame 2 is %s, frame before END is %s; want SIGNER and SIGNATURE",
				format.Type(fr[1][0]), format.Type(fr[len(fr)-2][0]))
		}
		for _, vo := range []VerifyOptions{{Trusted: ring(k)}, {Trusted: ring(testKey(t), k), Require: true}} {
			err, complete := applyVerified(ov, wd.base, vo)
			if err != nil || !complete {
				t.Fatalf("apply of a signed overlay = %v (complete %v); want success", err, complete)
			}
		}
		// Plain Apply (which checks the INDEX and skips the optional
		// SIGNER, HEAD_SIGNATURE and SIGNATURE) accepts it too.
		var out bytes.Buffer
		if err := apply(ov, wd.base, &out); err != nil {
			t.Fatalf("apply without a policy = %v", err)
		}
		if !wd.same(t, out.Bytes(), false) {
			t.Errorf("signed overlay applies to a different VM")
		}
	}
}

// TestSignatureRefused: each way a signature can be wrong is refused with
// the key ID in the message, and the output never ends in END. The
// overlays have no MANIFEST (the layout of overlay-pack --no-manifest and
// of older overlay-packs); TestHeadSignature covers the head.
func TestSignatureRefused(t *testing.T) {
	wd := makeWorld(t)
	k, other := testKey(t), testKey(t)
	o := PackOptions{Codec: "zstd", SegmentSize: MinSegmentSize, NoManifest: true}
	signed := packSigned(t, wd.diff, o, k)
	byOther := packSigned(t, wd.diff, o, other)
	unsigned := pack(t, wd.diff, o)
	pre, fr := frames(signed)
	join := func(fs ...[]byte) []byte { return bytes.Join(append([][]byte{pre}, fs...), nil) }
	n := len(fr)
	head, signer, segs, index, sig, end := fr[0], fr[1], fr[2:n-3], fr[n-3], fr[n-2], fr[n-1]
	allSegs := bytes.Join(segs, nil)
	// forged: the SIGNATURE of another key's overlay grafted on.
	_, ofr := frames(byOther)
	// wrongSig: the signature bytes of another overlay by the same key.
	_, ufr := frames(packSigned(t, wd.diff, PackOptions{Codec: "xz", NoManifest: true}, k))
	otherSig := ufr[len(ufr)-2]

	pol := VerifyOptions{Trusted: ring(k), TrustedFrom: "test"}
	req := VerifyOptions{Trusted: ring(k), Require: true, TrustedFrom: "test"}
	for _, tc := range []struct {
		name   string
		ov     []byte
		vo     VerifyOptions
		want   string // in the message
		policy bool   // refused by policy rather than as altered
	}{
		{"wrong signature (same key, other overlay)", join(head, signer, allSegs, index, otherSig, end), pol, k.ID, false},
		{"untrusted signer", byOther, pol, other.ID, true},
		{"untrusted signer, required", byOther, req, other.ID, true},
		{"signature by another key grafted", join(head, signer, allSegs, index, ofr[len(ofr)-2], end), pol, other.ID, false},
		{"unsigned, required", unsigned, req, "unsigned", true},
		{"SIGNATURE stripped", join(head, signer, allSegs, index, end), pol, k.ID, false},
		{"SIGNER stripped", join(head, allSegs, index, sig, end), pol, "no SIGNER", false},
		{"both stripped, required", join(head, allSegs, index, end), req, "unsigned", true},
		{"SIGNATURE moved before INDEX", join(head, signer, allSegs, sig, index, end), pol, k.ID, false},
		{"SIGNATURE moved to the front", join(head, signer, sig, allSegs, index, end), pol, k.ID, false},
		{"SIGNATURE duplicated", join(head, signer, allSegs, index, sig, sig, end), pol, k.ID, false},
		{"SIGNER duplicated", join(head, signer, signer, allSegs, index, sig, end), pol, k.ID, false},
		{"SIGNER moved", join(head, segs[0], signer, bytes.Join(segs[1:], nil), index, sig, end), req, "unsigned", true},
		{"segment dropped", join(head, signer, bytes.Join(segs[1:], nil), index, sig, end), pol, k.ID, false},
		{"flipped bit in a segment", func() []byte {
			b := join(head, signer, allSegs, index, sig, end)
			b[len(pre)+len(head)+len(signer)+100] ^= 1
			return b
		}(), pol, "", false},
	} {
		err, complete := applyVerified(tc.ov, wd.base, tc.vo)
		if err == nil || complete {
			t.Errorf("%s: apply = %v, output complete %v; want a refusal and no END", tc.name, err, complete)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not mention %q", tc.name, err, tc.want)
		}
		var se *SignatureError
		if tc.want != "" && (!errors.As(err, &se) || se.Policy != tc.policy) {
			t.Errorf("%s: error %v (%T); want a SignatureError with Policy %v", tc.name, err, err, tc.policy)
		}
		t.Logf("%s: %v", tc.name, err)
	}
}

// TestRefusedEarly: unsigned (required) and untrusted overlays are refused
// before Apply reads the HEADER: no base is opened, no output written.
func TestRefusedEarly(t *testing.T) {
	wd := makeWorld(t)
	k := testKey(t)
	unsigned := pack(t, wd.diff, PackOptions{Codec: "zstd"})
	byOther := packSigned(t, wd.diff, PackOptions{Codec: "zstd"}, testKey(t))
	for name, ov := range map[string][]byte{"unsigned": unsigned, "untrusted": byOther} {
		var out bytes.Buffer
		v := NewVerifier(bytes.NewReader(ov), VerifyOptions{Trusted: ring(k), Require: true})
		opened := false
		err := cliutil.Filter("overlay-apply", v, &out, func(r *format.Reader, w *format.Writer) error {
			err := Apply(context.Background(), r, w, func(string) (Base, error) { opened = true; return wd.base, nil }, ApplyOptions{})
			if verr := v.Err(); verr != nil {
				return verr
			}
			return err
		})
		if err == nil || opened {
			t.Errorf("%s: err %v, base opened %v; want a refusal before the base is opened", name, err, opened)
		}
		r := format.NewReader(&out)
		if _, herr := r.Header(); herr == nil {
			t.Errorf("%s: output has a HEADER; want only an ERROR", name)
		}
	}
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	k := testKey(t)
	p := filepath.Join(dir, "alice")
	if err := sign.WriteKeyPair(p, k); err != nil {
		t.Fatal(err)
	}
	if err := sign.WriteKeyPair(p, k); err == nil {
		t.Errorf("second WriteKeyPair overwrote the key")
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("private key mode %o; want 600", st.Mode().Perm())
	}
	got, err := sign.LoadPrivate(p)
	if err != nil || got.ID != k.ID || !bytes.Equal(got.Key, k.Key) {
		t.Fatalf("LoadPrivate = %v, %v", got, err)
	}
	os.Chmod(p, 0o644)
	if _, err := sign.LoadPrivate(p); err == nil {
		t.Errorf("LoadPrivate accepted a world-readable key")
	}
	if _, err := sign.LoadTrusted(dir); err != nil {
		t.Errorf("LoadTrusted = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "bad.pub"), []byte("cloudlet-ed25519-public 0011223344556677 AAAA\n"), 0o644)
	if _, err := sign.LoadTrusted(dir); err == nil || !strings.Contains(err.Error(), "bad.pub") {
		t.Errorf("LoadTrusted with a bad key file = %v; want an error naming it", err)
	}
	if _, err := sign.LoadTrusted(t.TempDir()); err == nil {
		t.Errorf("LoadTrusted of an empty folder = nil; want an error")
	}
	if len(k.ID) != 16 {
		t.Errorf("key ID %q; want 16 hex digits", k.ID)
	}
}

// With signatures required, a signed overlay's MANIFEST is never passed on
// whole unless a HEAD_SIGNATURE after it verified: not when another frame
// follows it, not when the input ends after it, whatever the MANIFEST's
// size and the reader's buffer (a MANIFEST larger than the Verifier's own
// 64 KiB reads, issue 32).
func TestVerifierHoldsUnsignedManifest(t *testing.T) {
	key, err := sign.Generate(nil)
	if err != nil {
		t.Fatal(err)
	}
	trusted := sign.Keyring{key.ID: key.Public()}
	frame := func(b *bytes.Buffer, ty format.Type, p []byte) {
		var h [format.FrameHeadSize]byte
		h[0] = byte(ty)
		binary.LittleEndian.PutUint32(h[4:], uint32(len(p)))
		b.Write(h[:])
		b.Write(p)
		b.Write(make([]byte, format.FrameTailSize))
	}
	for _, size := range []int{1000, 200000} {
		for _, trunc := range []bool{false, true} {
			var b bytes.Buffer
			b.Write(make([]byte, format.PreambleSize))
			frame(&b, format.TypeHeader, make([]byte, 100))
			sp, err := sign.SignerPayload(key.ID)
			if err != nil {
				t.Fatal(err)
			}
			frame(&b, format.TypeSigner, sp)
			frame(&b, format.TypeManifest, make([]byte, size))
			manifestEnd := b.Len()
			if !trunc {
				frame(&b, format.TypeDisk, make([]byte, 600))
			}
			for _, bufsz := range []int{4096, 65536, 1 << 20} {
				v := NewVerifier(bytes.NewReader(b.Bytes()), VerifyOptions{Require: true, Trusted: trusted})
				var out []byte
				buf := make([]byte, bufsz)
				for {
					n, err := v.Read(buf)
					out = append(out, buf[:n]...)
					if err != nil {
						break
					}
				}
				if len(out) >= manifestEnd {
					t.Errorf("MANIFEST of %d bytes, truncated %v, reads of %d: %d bytes passed on, the whole MANIFEST (%d)", size, trunc, bufsz, len(out), manifestEnd)
				}
				var se *SignatureError
				if !trunc && (!errors.As(v.Err(), &se) || !se.Policy) {
					t.Errorf("MANIFEST of %d bytes followed by DISK, reads of %d: %v; want a policy refusal", size, bufsz, v.Err())
				}
			}
		}
	}
}
