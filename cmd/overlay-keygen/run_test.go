package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/lib/sign"
)

func TestKeygen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "alice")
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"overlay-keygen", p}, nil, &out, &errb); err != nil {
		t.Fatalf("overlay-keygen = %v (%s)", err, errb.String())
	}
	priv, err := sign.LoadPrivate(p)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sign.LoadPublic(p + ".pub")
	if err != nil || pub.ID != priv.ID || !strings.HasPrefix(out.String(), priv.ID+" ") {
		t.Errorf("public key %v, %v; stdout %q; want the key ID %s", pub, err, out.String(), priv.ID)
	}
	if err := run(context.Background(), []string{"overlay-keygen", p}, nil, &out, &errb); err == nil {
		t.Errorf("overlay-keygen over an existing key succeeded")
	}
	if err := run(context.Background(), []string{"overlay-keygen"}, nil, &out, &errb); err == nil {
		t.Errorf("overlay-keygen without a file succeeded")
	}
}
