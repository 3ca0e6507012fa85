package diff

import (
	"bytes"
	"encoding/binary"
	"io"
	"path/filepath"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
)

// BenchmarkMemDiffScan: mem-diff over a 2 GiB full stream in which 10% of
// the pages changed (goal: >= 1 GB/s of guest RAM on one core).
//
//	go test -run XXX -bench MemDiffScan -benchtime 3x -cpu 1 ./lib/diff/
func BenchmarkMemDiffScan(b *testing.B) {
	const size = 2 << 30
	dir := b.TempDir()
	mem := make([]byte, size)
	for off := 0; off < size; off += Page { // every page distinct, cheap to make
		for i := 0; i < Page; i += 512 {
			binary.LittleEndian.PutUint64(mem[off+i:], uint64(off+i)*0x9E3779B97F4A7C15)
		}
	}
	vm := format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: size, RAMBlocks: []format.RAMBlock{{ID: "mem", Size: size}}}
	var bs bytes.Buffer
	w := format.NewWriter(&bs)
	w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vm})
	w.WriteMem(0, mem)
	w.Close()
	bdir := filepath.Join(dir, "base")
	if _, err := base.Create(bdir, format.NewReader(&bs), base.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	bs = bytes.Buffer{}
	for off := 0; off < size; off += 10 * Page { // change every tenth page
		mem[off+100] ^= 0xff
	}
	w = format.NewWriter(&bs)
	w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vm})
	w.WriteMem(0, mem)
	w.Close()
	mem = nil
	in := bs.Bytes()
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := Run(format.NewReader(bytes.NewReader(in)), format.NewWriter(io.Discard), Config{Stage: "mem-diff", Space: format.SpaceMem, Options: Options{ScratchIn: dir},
			Open: func(string) (*base.Base, error) { return base.Open(bdir) }})
		if err != nil {
			b.Fatal(err)
		}
		if want := uint64((size/Page+9)/10) * Page; st.Raw != want {
			b.Fatalf("raw = %d; want %d", st.Raw, want)
		}
	}
}
