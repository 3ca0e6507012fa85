package main

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/codec"

	"github.com/creack/pty"
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
	master, tty, err := pty.Open()
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

// recordTypes returns the types of an overlay's records after the HEADER.
func recordTypes(t *testing.T, ov []byte) []string {
	t.Helper()
	r := format.NewReader(bytes.NewReader(ov))
	var types []string
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return types
		}
		if err != nil {
			t.Fatalf("reading the overlay: %v", err)
		}
		types = append(types, rec.Type.String())
	}
}

func writeLog(t *testing.T, l *format.AccessLog) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "access.json")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := format.WriteAccessLog(f, l); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOrderFlags(t *testing.T) {
	touch := writeLog(t, &format.AccessLog{Accesses: []format.Access{{Space: format.AccessMem, Offset: 65536, Length: 4096}}})
	none := writeLog(t, &format.AccessLog{Accesses: []format.Access{{Space: format.AccessDisk, Offset: 0, Length: 4096}}})
	outside := writeLog(t, &format.AccessLog{Accesses: []format.Access{{Space: format.AccessMem, Offset: 0, Length: 4096}, {Space: format.AccessMem, Offset: 1 << 20, Length: 4096}}})
	for _, tc := range []struct {
		args  []string
		usage bool
		want  string // in the error, or on stderr when it succeeds
	}{
		{[]string{"--order", "access"}, true, "--access-log"},
		{[]string{"--access-log", touch}, true, "--order offset"},
		{[]string{"--order", "offset", "--access-log", touch}, true, "--order offset"},
		{[]string{"--early-segment-size", "131072"}, true, "--order offset"},
		{[]string{"--order", "random"}, true, "random"},
		{[]string{"--order", "access", "--access-log", touch, "--early-segment-size", "100"}, true, "--early-segment-size"},
		{[]string{"--order", "access", "--access-log", touch + ".missing"}, false, "access log"},
		{[]string{"--order", "access", "--access-log", outside}, false, "access log " + outside + ": access 1 (mem 1048576+4096) lies outside"},
		{[]string{"--order", "access", "--access-log", none}, false, "packing in offset order"},
		{[]string{"--order", "access", "--access-log", touch, "--early-segment-size", "65536"}, false, ""},
	} {
		var out, errb bytes.Buffer
		err := run(context.Background(), append([]string{"overlay-pack"}, tc.args...), bytes.NewReader(diffStream(t)), &out, &errb)
		switch {
		case tc.usage && cliutil.ExitCode(err) != cliutil.ExitUsage:
			t.Errorf("%v = %v (exit %d); want a usage error", tc.args, err, cliutil.ExitCode(err))
		case tc.usage && out.Len() != 0:
			t.Errorf("%v wrote %d bytes on stdout; want none", tc.args, out.Len())
		case tc.want != "" && strings.HasPrefix(tc.want, "packing"):
			if err != nil || !strings.Contains(errb.String(), tc.want) || !strings.Contains(errb.String(), none) {
				t.Errorf("%v = %v, stderr %q; want success and a note naming the log", tc.args, err, errb.String())
			}
			continue
		case tc.want == "":
			if err != nil {
				t.Errorf("%v = %v; want success", tc.args, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v = %v; want an error with %q", tc.args, err, tc.want)
		}
	}
}

// TestManifestOrStreaming: by default nothing comes out before the input
// ended (the segments wait for the MANIFEST); with --no-manifest segments
// come out while the input still arrives. Both overlays hold the same
// records.
func TestManifestOrStreaming(t *testing.T) {
	tmp := t.TempDir()
	types := map[bool]string{}
	wait := 5 * time.Second // for the first output with --no-manifest
	for _, noManifest := range []bool{true, false} {
		args := []string{"overlay-pack", "--segment-size", "65536", "--workers", "1", "--tmpdir", tmp}
		if noManifest {
			args = append(args, "--no-manifest")
		}
		inR, inW := io.Pipe()
		outR, outW := io.Pipe()
		var errb bytes.Buffer
		done := make(chan error, 1)
		go func() {
			err := run(context.Background(), args, inR, outW, &errb)
			outW.CloseWithError(err)
			done <- err
		}()
		var got atomic.Int64
		var ov bytes.Buffer
		read := make(chan struct{})
		go func() {
			defer close(read)
			buf := make([]byte, 64<<10)
			for {
				n, err := outR.Read(buf)
				ov.Write(buf[:n])
				got.Add(int64(n))
				if err != nil {
					return
				}
			}
		}()
		w := format.NewWriter(inW)
		w.WriteHeader(&format.Header{Kind: format.KindDiff, BaseID: strings.Repeat("ab", 32), Producer: []string{"test"},
			VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 4 << 20, DiskSize: 1 << 20}})
		rnd := rand.New(rand.NewPCG(1, 2))
		page := make([]byte, 64<<10)
		for i := range 40 { // 40 segments of incompressible data
			for j := range page {
				page[j] = byte(rnd.Uint32())
			}
			w.WriteMem(uint64(i)*uint64(len(page)), page)
		}
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		for got.Load() == 0 && time.Since(t0) < wait {
			time.Sleep(10 * time.Millisecond)
		}
		wait = max(500*time.Millisecond, 3*time.Since(t0)) // what the default gets to show it waits
		if early := got.Load() > 0; early != noManifest {
			t.Errorf("--no-manifest %v: %d bytes out before the input ended; want output only with --no-manifest", noManifest, got.Load())
		}
		w.Close()
		inW.Close()
		if err := <-done; err != nil {
			t.Fatalf("%v = %v (%s)", args, err, errb.String())
		}
		<-read
		types[noManifest] = strings.Join(recordTypes(t, ov.Bytes()), " ")
	}
	if want := "MANIFEST " + types[true]; types[false] != want || strings.Contains(types[true], "MANIFEST") {
		t.Errorf("records %q and with --no-manifest %q; want the same but for the MANIFEST", types[false], types[true])
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("temporary files left in --tmpdir: %s", ents[0].Name())
	}
}
