package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/sign"
)

func TestSign(t *testing.T) {
	key := filepath.Join(t.TempDir(), "k")
	k, _ := sign.Generate(nil)
	if err := sign.WriteKeyPair(key, k); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"overlay-pack", "--sign", key}, bytes.NewReader(diffStream(t)), &out, &errb); err != nil {
		t.Fatalf("overlay-pack --sign = %v (%s)", err, errb.String())
	}
	r := format.NewReader(&out)
	var types []string
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, rec.Type.String())
	}
	if got := strings.Join(types, " "); got != "SIGNER SEGMENT INDEX SIGNATURE" {
		t.Errorf("signed overlay records: %s; want SIGNER SEGMENT INDEX SIGNATURE", got)
	}
	if !strings.Contains(errb.String(), k.ID) {
		t.Errorf("stderr %q does not name the key %s", errb.String(), k.ID)
	}
	os.Chmod(key, 0o640)
	out.Reset()
	if err := run(context.Background(), []string{"overlay-pack", "--sign", key}, bytes.NewReader(diffStream(t)), &out, &errb); err == nil || out.Len() != 0 {
		t.Errorf("overlay-pack with a group-readable key = %v, %d bytes out; want a refusal and no output", err, out.Len())
	}
	if err := run(context.Background(), []string{"overlay-pack", "--sign", key + ".missing"}, bytes.NewReader(diffStream(t)), &out, &errb); err == nil {
		t.Errorf("overlay-pack with a missing key succeeded")
	}
}
