package main

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/codec"
)

func diffStream(t *testing.T) []byte {
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	h := &format.Header{Kind: format.KindDiff, BaseID: strings.Repeat("ab", 32), Producer: []string{"test"},
		VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 1 << 20}}
	if err := w.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	w.WriteMem(0, bytes.Repeat([]byte("page"), 4096))
	w.WriteCopy(format.Copy{Space: format.SpaceMem, Source: format.SourceBaseMem, Offset: 65536, SourceOffset: 0, Length: 4096})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestPipe(t *testing.T) {
	for _, codec := range []string{"zstd", "xz", "auto"} {
		pr, pw := io.Pipe()
		var errb bytes.Buffer
		go func() {
			pw.CloseWithError(run(context.Background(), []string{"overlay-pack", "--codec", codec}, bytes.NewReader(diffStream(t)), pw, &errb))
		}()
		r := format.NewReader(pr)
		h, err := r.Header()
		if err != nil || h.Kind != format.KindOverlay {
			t.Fatalf("--codec %s: header = %+v, %v; want an overlay", codec, h, err)
		}
		var segs int
		for {
			rec, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("--codec %s: reading the overlay: %v (stderr %s)", codec, err, errb.String())
			}
			if rec.Type == format.TypeSegment {
				segs++
			}
		}
		if segs != 1 || r.End().SHA256 == "" {
			t.Errorf("--codec %s: %d segments, END sha256 %q; want 1 and a sha256", codec, segs, r.End().SHA256)
		}
		if codec == "auto" && !strings.Contains(errb.String(), "chose") {
			t.Errorf("--codec auto printed no decision on stderr: %q", errb.String())
		}
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--codec", "gzip"}, {"--level", "0"}, {"--codec", "xz", "--level", "12"}, {"--codec", "auto", "--level", "3"}, {"--segment-size", "100"}, {"--bandwidth", "-1"}, {"extra"}, {"--nope"},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"overlay-pack"}, args...), bytes.NewReader(diffStream(t)), &out, &errb)
		if err == nil || out.Len() != 0 {
			t.Errorf("overlay-pack %v = %v, %d bytes on stdout; want a usage error and no output", args, err, out.Len())
		}
	}
}

func TestRefuseTerminal(t *testing.T) {
	tty, master, err := cliutil.OpenTerminal()
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	defer master.Close()
	go io.Copy(io.Discard, master)
	var errb bytes.Buffer
	err = run(context.Background(), []string{"overlay-pack"}, bytes.NewReader(diffStream(t)), tty, &errb)
	if err == nil || !strings.Contains(err.Error(), "terminal") {
		t.Errorf("overlay-pack to a terminal = %v; want a refusal", err)
	}
	if err := run(context.Background(), []string{"overlay-pack", "--force"}, bytes.NewReader(diffStream(t)), tty, &errb); err != nil {
		t.Errorf("overlay-pack --force to a terminal = %v; want success", err)
	}
}

func TestCodecsList(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"overlay-pack", "--codecs"}, strings.NewReader(""), &out, &errb); err != nil {
		t.Fatalf("--codecs = %v (stderr %s)", err, errb.String())
	}
	for _, want := range []string{"zstd levels 1-19 (default 3): ", "xz levels 1-9 (default 9): " + codec.Impl(codec.XZ)} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--codecs printed %q; want a line with %q", out.String(), want)
		}
	}
}
