package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/overlay"
	"cloudlet/lib/sign"

	"github.com/cespare/xxhash/v2"
)

// signedOverlay packs the diff setup packs, signed with k.
func signedOverlay(t *testing.T, k *sign.PrivateKey) []byte {
	return signedOverlayWith(t, k, overlay.PackOptions{})
}

func signedOverlayWith(t *testing.T, k *sign.PrivateKey, o overlay.PackOptions) []byte {
	t.Helper()
	var diff bytes.Buffer
	w := format.NewWriter(&diff)
	vm := format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 1 << 20}
	w.WriteHeader(&format.Header{Kind: format.KindDiff, BaseID: baseID, Producer: []string{"test"}, VM: vm})
	w.WriteMem(0, bytes.Repeat([]byte("page"), 1024))
	w.WriteCopy(format.Copy{Space: format.SpaceMem, Source: format.SourceBaseMem, Offset: 8192, SourceOffset: 12, Length: 4096})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	hw := sign.NewHashWriter(&out)
	err := cliutil.Filter("overlay-pack", &diff, hw, func(r *format.Reader, w *format.Writer) error {
		return overlay.PackSigned(context.Background(), r, w, hw, o, k)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

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

func TestTrustedKeys(t *testing.T) {
	dir, _, ov := setup(t)
	keys := t.TempDir()
	trusted, _ := sign.Generate(nil)
	stranger, _ := sign.Generate(nil)
	if err := sign.WriteKeyPair(filepath.Join(keys, "alice"), trusted); err != nil {
		t.Fatal(err)
	}
	good, bad := signedOverlay(t, trusted), signedOverlay(t, stranger)
	for _, tc := range []struct {
		name string
		in   []byte
		args []string
		want string // "" = success
	}{
		{"signed by a trusted key", good, []string{"--trusted-keys", keys, "--require-signature"}, ""},
		{"signed, not required", good, []string{"--trusted-keys", keys}, ""},
		{"unsigned, not required", ov, []string{"--trusted-keys", keys}, ""},
		{"unsigned, required", ov, []string{"--trusted-keys", keys, "--require-signature"}, "unsigned overlay"},
		{"untrusted signer", bad, []string{"--trusted-keys", keys}, stranger.ID},
		{"no policy: signatures skipped", bad, nil, ""},
		{"--require-signature alone", good, []string{"--require-signature"}, "--trusted-keys"},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"overlay-apply", "--base", dir}, tc.args...)
		err := run(context.Background(), args, bytes.NewReader(tc.in), &out, &errb)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want %q in it", tc.name, err, tc.want)
		}
		if tc.name != "--require-signature alone" && cliutil.ExitCode(err) != 1 {
			t.Errorf("%s: exit code %d; want 1 (refused)", tc.name, cliutil.ExitCode(err))
		}
		if complete(out.Bytes()) {
			t.Errorf("%s: output is a complete stream", tc.name)
		}
	}
	// A flipped byte inside the signature: refused as altered (exit 3).
	sigAt := bytes.LastIndex(good, []byte{byte(format.TypeSignature), 0, 0, 0, byte(sign.SignatureSize), 0, 0, 0})
	if sigAt < 0 {
		t.Fatal("no SIGNATURE frame in the signed overlay")
	}
	alt := bytes.Clone(good)
	alt[sigAt+format.FrameHeadSize+sign.SignerSize+5] ^= 1
	n := format.FrameHeadSize + sign.SignatureSize // recompute the frame's Check
	binary.LittleEndian.PutUint64(alt[sigAt+n:], xxhash.Sum64(alt[sigAt:sigAt+n]))
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"overlay-apply", "--base", dir, "--trusted-keys", keys}, bytes.NewReader(alt), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), trusted.ID) || !strings.Contains(err.Error(), "does not verify") || cliutil.ExitCode(err) != 3 {
		t.Errorf("altered signature: %v (exit %d); want a refusal naming %s, exit 3", err, cliutil.ExitCode(err), trusted.ID)
	}
}

// outputManifest returns the MANIFEST of overlay-apply's output, if any.
func outputManifest(t *testing.T, out []byte) *format.Manifest {
	t.Helper()
	r := format.NewReader(bytes.NewReader(out))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	rec, err := r.Next()
	if err != nil || rec.Type != format.TypeManifest {
		return nil
	}
	m, err := rec.ManifestRecord(h)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestOutputManifest: the output's MANIFEST names the key of a verified
// head; with --require-signature, an overlay whose head is not signed (an
// older overlay-pack's) applies without one, so it cannot start early.
func TestOutputManifest(t *testing.T) {
	dir, _, ov := setup(t)
	keys := t.TempDir()
	k, _ := sign.Generate(nil)
	if err := sign.WriteKeyPair(filepath.Join(keys, "alice"), k); err != nil {
		t.Fatal(err)
	}
	signed := signedOverlay(t, k)
	old := signedOverlayWith(t, k, overlay.PackOptions{NoManifest: true})
	trust := []string{"--trusted-keys", keys}
	require := []string{"--trusted-keys", keys, "--require-signature"}
	for _, tc := range []struct {
		name   string
		in     []byte
		args   []string
		signer string // of the output MANIFEST; "-": none
		stderr string
	}{
		{"unsigned", ov, nil, "", ""},
		{"signed, not checked", signed, nil, "", ""},
		{"signed, checked", signed, trust, k.ID, "head included"},
		{"signed, required", signed, require, k.ID, "head included"},
		{"old-style signed, required", old, require, "-", "no MANIFEST"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"overlay-apply", "--base", dir}, tc.args...), bytes.NewReader(tc.in), &out, &errb)
		if err != nil || !complete(out.Bytes()) {
			t.Fatalf("%s: %v (%s)", tc.name, err, errb.String())
		}
		m := outputManifest(t, out.Bytes())
		switch {
		case tc.signer == "-" && m != nil:
			t.Errorf("%s: output MANIFEST %+v; want none", tc.name, m)
		case tc.signer != "-" && (m == nil || m.Signer != tc.signer || len(m.Mem) == 0):
			t.Errorf("%s: output MANIFEST %+v; want one with signer %q", tc.name, m, tc.signer)
		}
		if !strings.Contains(errb.String(), tc.stderr) {
			t.Errorf("%s: stderr %q; want %q in it", tc.name, errb.String(), tc.stderr)
		}
	}
}
