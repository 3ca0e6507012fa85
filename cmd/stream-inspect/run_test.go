package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/overlay"
)

func TestSummary(t *testing.T) {
	in, err := os.ReadFile("../../format/testdata/diff.golden")
	if err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"stream-inspect"}, bytes.NewReader(in), &out, &errb); err != nil {
		t.Fatalf("run = %v; stderr %s", err, errb.String())
	}
	var s struct {
		Header  struct{ Kind string }
		Records map[string]struct{ Records int }
		Intact  bool
	}
	if err := json.Unmarshal(out.Bytes(), &s); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, out.String())
	}
	if s.Header.Kind != "diff" || s.Records["COPY"].Records != 3 || !s.Intact {
		t.Errorf("summary = %+v; want kind diff, 3 COPY, intact", s)
	}
}

func TestRecordsAndBroken(t *testing.T) {
	in, _ := os.ReadFile("../../format/testdata/diff.golden")
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"stream-inspect", "--records"}, bytes.NewReader(in), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 10 {
		t.Errorf("--records printed %d lines; want 10", n)
	}
	bad, _ := os.ReadFile("../../format/testdata/missing-end.bin")
	out.Reset()
	err := run(context.Background(), []string{"stream-inspect"}, bytes.NewReader(bad), &out, &errb)
	if err == nil || !strings.Contains(out.String(), `"intact": false`) {
		t.Errorf("missing END: err = %v, out %s; want an error and intact false", err, out.String())
	}
}

func TestPass(t *testing.T) {
	in, _ := os.ReadFile("../../format/testdata/diff.golden")
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"stream-inspect", "--pass"}, bytes.NewReader(in), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), in) || !strings.Contains(errb.String(), "HEADER") {
		t.Errorf("--pass changed the stream or printed no summary on stderr")
	}
}

// The summary of an overlay says its order (the front end decides on
// early start by it); a diff stream has none.
func TestSummaryOrder(t *testing.T) {
	in, err := os.ReadFile("../../format/testdata/diff.golden")
	if err != nil {
		t.Fatal(err)
	}
	summaryOrder := func(b []byte) string {
		t.Helper()
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{"stream-inspect"}, bytes.NewReader(b), &out, &errb); err != nil {
			t.Fatalf("run = %v; stderr %s", err, errb.String())
		}
		var s struct{ Order *string }
		if err := json.Unmarshal(out.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		if s.Order == nil {
			return "(none)"
		}
		return *s.Order
	}
	if got := summaryOrder(in); got != "(none)" {
		t.Errorf("diff stream: order %q, want none", got)
	}
	for _, o := range []overlay.PackOptions{
		{TempDir: t.TempDir()},
		{TempDir: t.TempDir(), Order: format.OrderAccess, AccessFile: "test.access", Access: &format.AccessLog{Version: format.AccessLogVersion,
			Accesses: []format.Access{{Space: format.AccessMem, Offset: 0, Length: 1 << 20}}}},
	} {
		var ovl bytes.Buffer
		w := format.NewWriter(&ovl)
		if err := overlay.Pack(context.Background(), format.NewReader(bytes.NewReader(in)), w, o); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		want := o.Order
		if want == "" {
			want = format.OrderOffset
		}
		if got := summaryOrder(ovl.Bytes()); got != want {
			t.Errorf("overlay packed in %s order: summary says %q", want, got)
		}
	}
}
