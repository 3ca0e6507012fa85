package format

import (
	"bytes"
	"io"
	"testing"
)

// BenchmarkPassThrough measures a stage that reads page records and writes
// them out again (verify, validate, re-checksum): the cost every stage pays.
func BenchmarkPassThrough(b *testing.B) {
	const total = 256 << 20
	h := testHeader(KindFull)
	h.VM.MemSize = total
	var in bytes.Buffer
	w := NewWriter(&in)
	w.WriteHeader(h)
	data := bytes.Repeat([]byte("0123456789abcdef"), MaxRecordData/16)
	for off := uint64(0); off < total; off += MaxRecordData {
		w.WriteMem(off, data)
	}
	w.Close()
	src := in.Bytes()
	b.SetBytes(total)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r := NewReader(bytes.NewReader(src))
		hh, _ := r.Header()
		pw := NewWriter(io.Discard)
		pw.WriteHeader(hh)
		for {
			rec, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			pw.WriteRecord(rec)
		}
		if err := pw.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
