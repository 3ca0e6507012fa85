package format

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzReader feeds arbitrary bytes to the Reader. It must never panic, and
// whatever it accepts must survive being written again and read back equal.
func FuzzReader(f *testing.F) {
	f.Add(sample(f))
	seeds, _ := filepath.Glob(filepath.Join("testdata", "*.bin"))
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		h, err := r.Header()
		if err != nil {
			return
		}
		var out bytes.Buffer
		w := NewWriter(&out)
		if err := w.WriteHeader(h); err != nil {
			t.Fatalf("accepted header does not write back: %v", err)
		}
		var recs []got
		for {
			rec, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return
			}
			recs = append(recs, got{rec.Type, bytes.Clone(rec.Payload)})
			if err := w.WriteRecord(rec); err != nil {
				t.Fatalf("WriteRecord: %v", err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		back, err := readAll(NewReader(&out))
		if err != nil {
			t.Fatalf("rewritten stream does not read back: %v", err)
		}
		if len(back) != len(recs) {
			t.Fatalf("read back %d records; want %d", len(back), len(recs))
		}
		for i := range back {
			if back[i].Type != recs[i].Type || !bytes.Equal(back[i].Payload, recs[i].Payload) {
				t.Fatalf("record %d differs after rewrite", i)
			}
		}
	})
}
