package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--clients", filepath.Join(dir, "none")}, "make it with one line per client"},
		{[]string{"--clients", filepath.Join(dir, "none"), "--require-signature"}, "needs --trusted-keys"},
		{[]string{"extra"}, "argument"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"cloudletd"}, tc.args...), nil, &out, &errb)
		if err == nil || !strings.Contains(err.Error()+errb.String(), tc.want) || out.Len() != 0 {
			t.Errorf("%v: err %v, stderr %q, stdout %q; want %q", tc.args, err, errb.String(), out.String(), tc.want)
		}
	}
}

// The host key is made once (mode 0600) and the same key is read back.
func TestHostKey(t *testing.T) {
	p := filepath.Join(t.TempDir(), "etc", "host_key")
	k1, err := hostKey(p)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v, mode %v", err, st.Mode())
	}
	k2, err := hostKey(p)
	if err != nil || !bytes.Equal(k1.PublicKey().Marshal(), k2.PublicKey().Marshal()) {
		t.Fatalf("the key read back differs: %v", err)
	}
	os.WriteFile(p, []byte("not a key"), 0o600)
	if _, err := hostKey(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("a bad key file: %v", err)
	}
}
