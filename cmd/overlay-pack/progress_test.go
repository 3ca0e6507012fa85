package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"

	"github.com/creack/pty"
)

// The overlay is the same bytes with progress drawn on a terminal and
// without; --stats counts what stream-inspect would (END's frames, the
// output's size, the input's size).
func TestProgressAndStats(t *testing.T) {
	in := diffStream(t)
	dir := t.TempDir()
	inPath := filepath.Join(dir, "in.diff")
	if err := os.WriteFile(inPath, in, 0o644); err != nil {
		t.Fatal(err)
	}
	pack := func(stderr io.Writer, args ...string) []byte {
		t.Helper()
		f, err := os.Open(inPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out, err := os.CreateTemp(dir, "out")
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if err := run(context.Background(), append([]string{"overlay-pack", "--codec", "zstd"}, args...), f, out, stderr); err != nil {
			t.Fatalf("overlay-pack %v: %v", args, err)
		}
		b, _ := os.ReadFile(out.Name())
		return b
	}
	var quiet bytes.Buffer
	plain := pack(&quiet, "--stats", filepath.Join(dir, "stats.json"))
	if quiet.Len() != 0 {
		t.Errorf("stderr not a terminal, yet: %q", quiet.String())
	}

	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var screen bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&screen, ptmx); close(done) }()
	drawn := pack(tty)
	tty.Close()
	<-done
	if !bytes.Equal(plain, drawn) {
		t.Error("the overlay differs with progress drawn")
	}
	if !strings.Contains(screen.String(), "overlay-pack: done: read") {
		t.Errorf("no progress on the terminal: %q", screen.String())
	}

	b, err := os.ReadFile(filepath.Join(dir, "stats.json"))
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Stage    string `json:"stage"`
		BytesIn  int64  `json:"bytes_in"`
		BytesOut int64  `json:"bytes_out"`
		Records  uint64 `json:"records"`
		OK       bool   `json:"ok"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("--stats: %v: %s", err, b)
	}
	r := format.NewReader(bytes.NewReader(plain))
	for {
		if _, err := r.Next(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if st.Stage != "overlay-pack" || !st.OK || st.BytesIn != int64(len(in)) || st.BytesOut != int64(len(plain)) || st.Records != r.End().Frames {
		t.Errorf("--stats %s; want %d bytes in, %d out, %d records (END)", b, len(in), len(plain), r.End().Frames)
	}
}
