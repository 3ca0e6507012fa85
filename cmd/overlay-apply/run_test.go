package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/overlay"

	"github.com/creack/pty"
)

var baseID = strings.Repeat("ab", 32)

// setup makes a base folder, a catalog naming it, and an overlay against it.
func setup(t *testing.T) (dir, catalog string, ov []byte) {
	dir = t.TempDir()
	mem := bytes.Repeat([]byte("base memory "), 1<<20/12+1)[:1<<20]
	os.WriteFile(filepath.Join(dir, "mem.ram"), mem, 0o644)
	os.WriteFile(filepath.Join(dir, "disk.img"), make([]byte, 1<<20), 0o644)
	vm := format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 1 << 20}
	if err := base.WriteMeta(dir, &base.Meta{ID: baseID, VM: vm}); err != nil {
		t.Fatal(err)
	}
	catalog = filepath.Join(t.TempDir(), "bases.json")
	c := &base.Catalog{Path: catalog, Entries: []base.Entry{{Name: "other", SHA256: strings.Repeat("cd", 32), Path: "/nonexistent"}, {Name: "b", SHA256: baseID, Path: dir}}}
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}

	var diff bytes.Buffer
	w := format.NewWriter(&diff)
	w.WriteHeader(&format.Header{Kind: format.KindDiff, BaseID: baseID, Producer: []string{"test"},
		VM: vm})
	w.WriteMem(0, bytes.Repeat([]byte("page"), 1024))
	w.WriteCopy(format.Copy{Space: format.SpaceMem, Source: format.SourceBaseMem, Offset: 8192, SourceOffset: 12, Length: 4096})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := cliutil.Filter("overlay-pack", &diff, &out, func(r *format.Reader, w *format.Writer) error {
		return overlay.Pack(context.Background(), r, w, overlay.PackOptions{})
	})
	if err != nil {
		t.Fatal(err)
	}
	return dir, catalog, out.Bytes()
}

func TestApply(t *testing.T) {
	dir, catalog, ov := setup(t)
	mem, _ := os.ReadFile(filepath.Join(dir, "mem.ram"))
	for _, args := range [][]string{{"--base", dir}, {"--catalog", catalog}, {"--base", dir, "--resolve-copies"}} {
		resolve := slices.Contains(args, "--resolve-copies")
		pr, pw := io.Pipe()
		var errb bytes.Buffer
		go func() {
			pw.CloseWithError(run(context.Background(), append([]string{"overlay-apply"}, args...), bytes.NewReader(ov), pw, &errb))
		}()
		r := format.NewReader(pr)
		var copied []byte
		var kept []format.Copy
		for {
			rec, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("overlay-apply %v: %v (stderr %s)", args, err, errb.String())
			}
			if rec.Type == format.TypeDelta || (rec.Type == format.TypeCopy && resolve) {
				t.Fatalf("overlay-apply %v left a %s record", args, rec.Type)
			}
			if c, err := rec.CopyRecord(); err == nil {
				kept = append(kept, c)
			}
			if off, data, err := rec.DataRecord(); err == nil && off == 8192 {
				copied = bytes.Clone(data)
			}
		}
		want := []format.Copy{{Space: format.SpaceMem, Source: format.SourceBaseMem, Offset: 8192, SourceOffset: 12, Length: 4096}}
		switch {
		case resolve && !bytes.Equal(copied, mem[12:12+4096]):
			t.Errorf("overlay-apply %v: COPY from base memory not resolved to the base's bytes", args)
		case !resolve && (!slices.Equal(kept, want) || copied != nil):
			t.Errorf("overlay-apply %v passed COPY records %+v and data %v at 8192; want the COPY %+v as it was", args, kept, copied != nil, want)
		}
	}
}

func TestWrongBase(t *testing.T) {
	dir, _, ov := setup(t)
	other := t.TempDir()
	for _, f := range []string{"mem.ram", "disk.img"} {
		b, _ := os.ReadFile(filepath.Join(dir, f))
		os.WriteFile(filepath.Join(other, f), b, 0o644)
	}
	base.WriteMeta(other, &base.Meta{ID: strings.Repeat("ef", 32), VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 1 << 20}})
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"overlay-apply", "--base", other}, bytes.NewReader(ov), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), baseID) || !strings.Contains(err.Error(), other) {
		t.Fatalf("overlay-apply with the wrong base = %v; want an error naming both IDs and the folder", err)
	}
	r := format.NewReader(&out)
	for {
		_, err := r.Next()
		if err == io.EOF {
			t.Fatal("output verifies although the base was wrong")
		}
		if err != nil {
			break
		}
	}
}

func TestUsage(t *testing.T) {
	dir, _, ov := setup(t)
	for _, args := range [][]string{{"--base", dir, "extra"}, {"--bogus"}} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"overlay-apply"}, args...), bytes.NewReader(ov), &out, &errb)
		if cliutil.ExitCode(err) != cliutil.ExitUsage || out.Len() != 0 {
			t.Errorf("overlay-apply %v = %v (exit %d), %d bytes on stdout; want a usage error, no output", args, err, cliutil.ExitCode(err), out.Len())
		}
	}
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	defer master.Close()
	go io.Copy(io.Discard, master)
	var errb bytes.Buffer
	if err := run(context.Background(), []string{"overlay-apply", "--base", dir}, bytes.NewReader(ov), tty, &errb); err == nil || !strings.Contains(err.Error(), "terminal") {
		t.Errorf("overlay-apply to a terminal = %v; want a refusal", err)
	}
}
