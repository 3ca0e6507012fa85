package codec

import (
	"bytes"
	"testing"
)

// FuzzXZ feeds forged xz segments to every LZMA implementation in the
// build: none may panic, return data of another length than declared, or
// accept it with other bytes than another implementation accepting it.
func FuzzXZ(f *testing.F) {
	for _, b := range lzmaBackends() {
		for _, n := range []int{0, 100, 5000} {
			src := pages(uint64(n), n)
			comp, err := b.compress(nil, src, 6)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(comp, uint16(n))
		}
	}
	f.Fuzz(func(t *testing.T, comp []byte, n uint16) {
		var got [][]byte
		for _, b := range lzmaBackends() {
			out, err := b.decompress(make([]byte, 0, int(n)), comp)
			if err != nil {
				continue
			}
			if len(out) != int(n) {
				t.Fatalf("%s returned %d bytes for a segment of %d", b.name, len(out), n)
			}
			got = append(got, out)
		}
		for _, g := range got[min(1, len(got)):] {
			if !bytes.Equal(g, got[0]) {
				t.Fatalf("the LZMA implementations accepted the segment with different output")
			}
		}
	})
}
