package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/lib/sign"
)

func TestSign(t *testing.T) {
	key := filepath.Join(t.TempDir(), "k")
	k, _ := sign.Generate(nil)
	if err := sign.WriteKeyPair(key, k); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "SIGNER MANIFEST HEAD_SIGNATURE SEGMENT INDEX SIGNATURE"},
		{[]string{"--no-manifest"}, "SIGNER SEGMENT INDEX SIGNATURE"},
	} {
		out.Reset()
		args := append([]string{"overlay-pack", "--sign", key}, tc.args...)
		if err := run(context.Background(), args, bytes.NewReader(diffStream(t)), &out, &errb); err != nil {
			t.Fatalf("%v = %v (%s)", args, err, errb.String())
		}
		if got := strings.Join(recordTypes(t, out.Bytes()), " "); got != tc.want {
			t.Errorf("%v: signed overlay records: %s; want %s", args, got, tc.want)
		}
		if !strings.Contains(errb.String(), k.ID) {
			t.Errorf("stderr %q does not name the key %s", errb.String(), k.ID)
		}
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
