package base

import (
	"bytes"
	"crypto/sha256"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// fileSHA skips holes and seqHash hashes as written; both give the sha256
// of the file's bytes, and a punched hole reads as zeros.
func TestSparseHashes(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	const size = 64 << 20
	p := filepath.Join(t.TempDir(), "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, size)
	seq := newSeqHash(size)
	for off := uint64(1 << 20); off < size-(1<<20); off += uint64(1+r.IntN(16)) << 20 {
		data := make([]byte, 4096*(1+r.IntN(64)))
		for i := range data {
			data[i] = byte(r.Uint32())
		}
		copy(want[off:], data)
		seq.write(off, data)
		if _, err := f.WriteAt(data, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	sum := sha256.Sum256(want)
	got, err := fileSHA(p)
	if err != nil || !bytes.Equal(got, sum[:]) {
		t.Errorf("fileSHA = %x, %v; want %x", got, err, sum)
	}
	if got := seq.sum(); !bytes.Equal(got, sum[:]) {
		t.Errorf("seqHash = %x; want %x", got, sum)
	}
	// Out of order: seqHash gives up, so the caller hashes the file.
	s2 := newSeqHash(size)
	s2.write(8192, []byte{1})
	s2.write(0, []byte{1})
	if s2.sum() != nil {
		t.Error("seqHash of writes out of order gave a digest")
	}
	// A punched hole: zeros, and no blocks.
	var st0 syscall.Stat_t
	syscall.Stat(p, &st0)
	if err := punchHole(f, 0, size); err != nil {
		t.Fatal(err)
	}
	var st1 syscall.Stat_t
	syscall.Stat(p, &st1)
	zero := sha256.Sum256(make([]byte, size))
	if got, _ := fileSHA(p); !bytes.Equal(got, zero[:]) || st1.Blocks >= st0.Blocks || st1.Size != size {
		t.Errorf("after punchHole: sha %x (want zeros), %d blocks (before %d), size %d", got, st1.Blocks, st0.Blocks, st1.Size)
	}
}
