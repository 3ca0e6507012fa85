package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
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
