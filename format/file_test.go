package format

import (
	"bytes"
	"errors"
	"testing"
)

// FILE records: whole streams only, chunks in order, names checked.
func TestFileRecords(t *testing.T) {
	write := func(kind string, fn func(w *Writer) error) []byte {
		var buf bytes.Buffer
		w := NewWriter(&buf)
		if err := w.WriteHeader(testHeader(kind)); err != nil {
			t.Fatal(err)
		}
		if err := fn(w); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}
	big := bytes.Repeat([]byte("k"), MaxRecordData+10)
	ok := write(KindFull, func(w *Writer) error { return w.WriteFile("vmlinuz", 0, big) })
	recs, err := readAll(NewReader(bytes.NewReader(ok)))
	if err != nil {
		t.Fatal(err)
	}
	var back []byte
	for _, g := range recs {
		r := Record{Type: g.Type, Payload: g.Payload}
		f, err := r.FileRecord()
		if err != nil || f.Name != "vmlinuz" || f.Offset != uint64(len(back)) {
			t.Fatalf("FILE record %+v, %v", f, err)
		}
		back = append(back, f.Data...)
	}
	if len(recs) != 2 || !bytes.Equal(back, big) {
		t.Errorf("%d records, %d bytes back; want 2 records, %d bytes", len(recs), len(back), len(big))
	}
	for name, stream := range map[string][]byte{
		"in a diff stream": write(KindDiff, func(w *Writer) error { return w.WriteFile("vmlinuz", 0, []byte("x")) }),
		"out of order":     write(KindFull, func(w *Writer) error { return w.WriteFile("vmlinuz", 5, []byte("x")) }),
		"bad name":         write(KindFull, func(w *Writer) error { return w.WriteFile("../etc/passwd", 0, []byte("x")) }),
	} {
		_, err := readAll(NewReader(bytes.NewReader(stream)))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want malformed", name, err)
		}
	}
}
