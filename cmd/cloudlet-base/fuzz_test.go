package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"cloudlet/lib/base"
)

// FuzzImport feeds cloudlet-base import mutations of a real base export.
// Whatever the input, import either makes a base that verifies and has
// the ID the export claims, or fails and leaves nothing: no folder, no
// temporary folder. Declared sizes are capped low (as an operator would
// with --max-mem and --max-disk) so a mutated size costs nothing.
func FuzzImport(f *testing.F) {
	dir := f.TempDir()
	b := makeBase(f, dir)
	var export bytes.Buffer
	if err := run(context.Background(), []string{"cloudlet-base", "--catalog", filepath.Join(dir, "c.json"), "export", b}, nil, &export, &bytes.Buffer{}); err != nil {
		f.Fatal(err)
	}
	f.Add(export.Bytes())
	f.Add(export.Bytes()[:export.Len()/2])
	f.Fuzz(func(t *testing.T, in []byte) {
		parent := t.TempDir()
		dst := filepath.Join(parent, "b")
		m, err := importBase(context.Background(), bytes.NewReader(in), dst, nil,
			base.CreateOptions{Name: "f", Limits: base.Limits{MaxMem: 16 << 20, MaxDisk: 16 << 20}})
		if err != nil {
			if left, _ := os.ReadDir(parent); len(left) > 0 {
				t.Fatalf("import failed (%v) and left %v", err, left)
			}
			return
		}
		got, err := base.Open(dst)
		if err != nil {
			t.Fatalf("import made a base that does not open: %v", err)
		}
		defer got.Close()
		if err := got.Verify(); err != nil || got.ID() != m.ID {
			t.Fatalf("imported base %s (meta %s) does not verify: %v", got.ID(), m.ID, err)
		}
	})
}
