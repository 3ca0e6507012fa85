package main

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
)

// makeBase builds a small base folder from a synthetic full stream: a
// 2 MiB disk image with data and a hole, 1 MiB of memory, a kernel.
func makeBase(t testing.TB, dir string) string {
	t.Helper()
	kit := filepath.Join(dir, "kit")
	os.MkdirAll(kit, 0o755)
	kernel := bytes.Repeat([]byte("not really a kernel "), 100000) // 2 MB: several FILE records
	if err := os.WriteFile(filepath.Join(kit, base.KernelFile), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	kSum, _ := base.FileSHA256(filepath.Join(kit, base.KernelFile))
	s, img := fullStream(t, dir, format.VMDesc{Kernel: kSum})
	b := filepath.Join(dir, "b1")
	cat := filepath.Join(dir, "cat1.json")
	if _, errOut, err := runTool(t, s, "--catalog", cat, "create", "--image", img, "--kit", kit, "--name", "t", b); err != nil {
		t.Fatalf("create: %v: %s", err, errOut)
	}
	return b
}

// fullStream writes dir/image.raw (2 MiB, data and a hole) and returns a
// full stream of a VM with 1 MiB of memory on it, booted as boot says
// (its Kernel, Initrd, Append), and the image's path.
func fullStream(t testing.TB, dir string, boot format.VMDesc) (*bytes.Buffer, string) {
	t.Helper()
	r := rand.New(rand.NewSource(7))
	img := filepath.Join(dir, "image.raw")
	data := make([]byte, 256<<10)
	r.Read(data)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 2<<20); err != nil {
		t.Fatal(err)
	}
	imgSum, _ := base.FileSHA256(img)
	var s bytes.Buffer
	w := format.NewWriter(&s)
	vmd := format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 2 << 20, DiskFormat: "raw",
		DiskBase: imgSum, Kernel: boot.Kernel, Initrd: boot.Initrd, Append: boot.Append, RAMBlocks: []format.RAMBlock{{ID: "mem", Size: 1 << 20}}}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vmd, Producer: []string{"test"}}))
	must(w.WriteDevState([]byte("QEVM device state")))
	page := make([]byte, 3*format.PageSize)
	r.Read(page)
	must(w.WriteMem(16*format.PageSize, page))
	must(w.WriteDisk(1<<20, page))
	must(w.Close())
	return &s, img
}

func runTool(t testing.TB, stdin *bytes.Buffer, args ...string) (string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	if stdin == nil {
		stdin = &bytes.Buffer{}
	}
	err := run(context.Background(), append([]string{"cloudlet-base"}, args...), stdin, &out, &errb)
	return out.String(), errb.String(), err
}

// A base exported and imported elsewhere is the same base (same ID, same
// files); bad exports leave nothing, and a catalogued base is not
// imported twice.
func TestExportImport(t *testing.T) {
	dir := t.TempDir()
	b1 := makeBase(t, dir)
	src, err := base.Open(b1)
	if err != nil {
		t.Fatal(err)
	}
	id := src.ID()
	src.Close()

	export, _, err := runTool(t, nil, "--catalog", filepath.Join(dir, "cat1.json"), "export", b1)
	if err != nil {
		t.Fatal(err)
	}
	ex := []byte(export)
	t.Logf("export: %d bytes", len(ex))

	cat := filepath.Join(dir, "cat2.json")
	dst := filepath.Join(dir, "remote", "b")
	out, errOut, err := runTool(t, bytes.NewBuffer(ex), "--catalog", cat, "import", "--add", dst)
	if err != nil {
		t.Fatalf("import: %v: %s", err, errOut)
	}
	if strings.TrimSpace(out) != id {
		t.Errorf("import printed %q, want the ID %s", out, id)
	}
	imported, err := base.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := imported.Verify(); err != nil || imported.ID() != id {
		t.Errorf("imported base: ID %s, verify %v; want %s", imported.ID(), err, id)
	}
	imported.Close()
	for _, f := range []string{base.KernelFile, base.DiskFile, base.MemFile, base.DevStateFile} {
		a, _ := os.ReadFile(filepath.Join(b1, f))
		b, _ := os.ReadFile(filepath.Join(dst, f))
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs after export and import", f)
		}
	}
	catBefore, _ := os.ReadFile(cat)
	if !bytes.Contains(catBefore, []byte(id)) {
		t.Errorf("catalog does not list %s:\n%s", id, catBefore)
	}

	nothingLeft := func(t *testing.T, d string) {
		t.Helper()
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s exists", d)
		}
		if m, _ := filepath.Glob(filepath.Join(filepath.Dir(d), ".*")); len(m) > 0 {
			t.Errorf("left behind: %v", m)
		}
		if now, _ := os.ReadFile(cat); !bytes.Equal(now, catBefore) {
			t.Errorf("catalog changed:\n%s", now)
		}
	}
	t.Run("already catalogued", func(t *testing.T) {
		d := filepath.Join(dir, "again", "b")
		_, _, err := runTool(t, bytes.NewBuffer(ex), "--catalog", cat, "import", "--add", d)
		if err == nil || !strings.Contains(err.Error(), "already in the catalog") {
			t.Errorf("err = %v", err)
		}
		nothingLeft(t, d)
	})
	flipped := bytes.Clone(ex)
	flipped[len(flipped)/2] ^= 0x10
	for name, in := range map[string][]byte{"truncated": ex[:len(ex)/2], "corrupt": flipped, "empty": nil} {
		t.Run(name, func(t *testing.T) {
			d := filepath.Join(dir, name, "b")
			_, _, err := runTool(t, bytes.NewBuffer(in), "--catalog", cat, "import", "--add", d)
			if code := cliutil.ExitCode(err); code != cliutil.ExitCorrupt {
				t.Errorf("exit %d (%v), want %d", code, err, cliutil.ExitCorrupt)
			}
			t.Logf("import: %v", err)
			nothingLeft(t, d)
		})
	}
	t.Run("wrong ID", func(t *testing.T) {
		// A stream whose content does not make the base it names.
		var s bytes.Buffer
		w := format.NewWriter(&s)
		b, _ := base.Open(b1)
		if err := b.WriteExport(w); err != nil {
			t.Fatal(err)
		}
		b.Close()
		d := filepath.Join(dir, "wrong", "b")
		_, err := base.Create(d, format.NewReader(&s), base.CreateOptions{ExpectID: strings.Repeat("0", 64)})
		if err == nil || !strings.Contains(err.Error(), "but the stream says") {
			t.Errorf("err = %v", err)
		}
		nothingLeft(t, d)
	})
}
