package format

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// The device state of a stream is capped at MaxDevState, all records
// together, and the refusal names the record that crossed it and where
// (issue 32: 200 segments of zero DEVSTATE grew a spool to 3.2 GB).
func TestDevStateCap(t *testing.T) {
	const chunk = 15 << 20
	var s bytes.Buffer
	w := NewWriter(&s)
	if err := w.WriteHeader(testHeader(KindFull)); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, chunk)
	n := MaxDevState/chunk + 1
	for range n {
		if err := w.WriteDevState(zero); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := readAll(NewReader(&s))
	var ce *CorruptError
	if !errors.Is(err, ErrTooLarge) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "device state") {
		t.Fatalf("%d DEVSTATE bytes: %v; want ErrTooLarge", n*chunk, err)
	}
	// The record that crossed the cap is refused, not one later: the
	// reader went no further than the cap, one record and the frames.
	if ce.Offset < MaxDevState || ce.Offset > MaxDevState+2*MaxRecordData {
		t.Errorf("refused at offset %d; want just past %d", ce.Offset, MaxDevState)
	}
	t.Log(err)
}

// A segment holds at most MaxSegmentRecords records: the one after is
// refused, the ones before are read.
func TestSegmentRecordCap(t *testing.T) {
	h := testHeader(KindOverlay)
	var s bytes.Buffer
	w := NewBodyWriter(&s)
	for i := range MaxSegmentRecords + 1 {
		if err := w.WriteMemZero(uint64(i)*PageSize, PageSize); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	h.VM.MemSize = uint64(MaxSegmentRecords+1) * PageSize
	h.VM.RAMBlocks = []RAMBlock{{ID: "mem", Size: h.VM.MemSize}}
	r := NewBodyReader(s.Bytes(), NewValidator(h).InSegment())
	var err error
	recs := 0
	for err == nil {
		if _, err = r.Next(); err == nil {
			recs++
		}
	}
	if !errors.Is(err, ErrTooLarge) || recs != MaxSegmentRecords {
		t.Errorf("%d distinct records: %v after %d; want ErrTooLarge after %d", MaxSegmentRecords+1, err, recs, MaxSegmentRecords)
	}
}

// A MANIFEST lists at most MaxManifestRanges ranges, counted before any
// is checked.
func TestManifestRangeCap(t *testing.T) {
	h := testHeader(KindDiff)
	h.VM.MemSize = uint64(MaxManifestRanges+1) * 2 * PageSize
	h.VM.RAMBlocks = []RAMBlock{{ID: "mem", Size: h.VM.MemSize}}
	for _, n := range []int{MaxManifestRanges, MaxManifestRanges + 1} {
		m := &Manifest{Order: OrderOffset}
		for i := n; i > 0; i-- { // descending, as the crafted input of issue 32
			m.Mem = append(m.Mem, [2]uint64{uint64(i) * 2 * PageSize, PageSize})
		}
		err := m.Validate(h)
		if (n > MaxManifestRanges) != errors.Is(err, ErrTooLarge) || (n <= MaxManifestRanges && err != nil) {
			t.Errorf("MANIFEST of %d ranges: %v", n, err)
		}
	}
}
