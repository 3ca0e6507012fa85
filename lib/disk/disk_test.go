package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	mib         = 1 << 20
	baseSize    = 64 * mib
	clusterSize = 64 << 10 // qcow2 default, as qemu-img create reports it
)

func requireTools(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"qemu-img", "qemu-nbd"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				tb.Fatalf("%s is required in CI: %v", tool, err)
			}
			tb.Skipf("%s not installed", tool)
		}
	}
}

func fill(b []byte, seed int64) {
	rand.New(rand.NewSource(seed)).Read(b)
}

// baseRanges are the ranges of the base that hold data; the rest are holes.
var baseRanges = [][2]int64{
	{0, 4 * mib},
	{8 * mib, 12 * mib},
	{20 * mib, 21 * mib},
	{30 * mib, 31 * mib},
	{63 * mib, 64 * mib},
}

// makeBase writes a sparse 64 MiB raw base with a few patterns and returns
// its path and content.
func makeBase(t testing.TB, dir string) (string, []byte) {
	t.Helper()
	path := filepath.Join(dir, "base.raw")
	content := make([]byte, baseSize)
	for i, r := range baseRanges {
		b := content[r[0]:r[1]]
		switch i % 3 {
		case 0:
			for j := range b {
				b[j] = byte(j*31 + j>>12)
			}
		case 1:
			for j := range b {
				b[j] = 0xA5
			}
		default:
			fill(b, int64(i))
		}
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(baseSize); err != nil {
		t.Fatal(err)
	}
	for _, r := range baseRanges {
		if _, err := f.WriteAt(content[r[0]:r[1]], r[0]); err != nil {
			t.Fatal(err)
		}
	}
	return path, content
}

func hashFile(t testing.TB, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// noProcess fails when a process whose command line contains s exists.
func noProcess(t testing.TB, s string) {
	t.Helper()
	out, err := exec.Command("pgrep", "-af", s).CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return // none
	}
	if err != nil {
		t.Fatalf("pgrep: %v %s", err, out)
	}
	t.Errorf("process left behind: %s", out)
}

func TestRawDataExtents(t *testing.T) {
	path, _ := makeBase(t, t.TempDir())
	exts, err := RawDataExtents(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("raw data extents: %v", exts)
	covered := func(off, end int64) bool {
		for _, e := range exts {
			if e.Offset <= off && end <= e.End() {
				return true
			}
		}
		return false
	}
	for _, r := range baseRanges {
		if !covered(r[0], r[1]) {
			t.Errorf("data range %v not covered", r)
		}
	}
	for _, e := range exts {
		if !e.Data || e.Zero {
			t.Errorf("extent %+v flags", e)
		}
		// The big hole must stay a hole (file systems here track 4 KiB blocks).
		if e.Offset < 50*mib && e.End() > 40*mib {
			t.Errorf("extent %+v overlaps the hole [40 MiB, 50 MiB)", e)
		}
	}
	empty := filepath.Join(t.TempDir(), "empty")
	os.WriteFile(empty, nil, 0o644)
	if exts, err := RawDataExtents(empty); err != nil || len(exts) != 0 {
		t.Errorf("empty file: %v %v", exts, err)
	}
}

type change struct {
	off, n int64
	zero   bool // WriteZeroes instead of WriteAt
	data   []byte
}

func TestTopLayerRoundTrip(t *testing.T) {
	requireTools(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	base, model := makeBase(t, dir)
	baseHash := hashFile(t, base)
	top := filepath.Join(dir, "top.qcow2")

	if err := CreateTop(ctx, "base.raw", "raw", top); err == nil {
		t.Error("CreateTop accepted a relative base")
	}
	if err := CreateTop(ctx, base, "raw", top); err != nil {
		t.Fatal(err)
	}
	if exts, err := Extents(ctx, top); err != nil || len(exts) != 0 {
		t.Fatalf("fresh top: %v %v", exts, err)
	}

	changes := []change{
		{off: 0, n: 4096},                               // cluster-aligned start
		{off: 1*mib + 1536, n: 2560},                    // 512-aligned, inside one cluster
		{off: 3*clusterSize - 512, n: 1024},             // straddles two clusters
		{off: 10*mib + 512, n: 5 * mib},                 // several NBD requests
		{off: 2 * mib, n: clusterSize, data: nil},       // all-zero data over base data (detect-zeroes)
		{off: 20 * mib, n: 256 << 10, zero: true},       // aligned WriteZeroes over base data
		{off: 30*mib + 512, n: 128 << 10, zero: true},   // unaligned WriteZeroes over base data
		{off: baseSize - 1536, n: 1536},                 // the very end of the disk
		{off: 45 * mib, n: 3 * clusterSize, zero: true}, // zeroes over a base hole
	}
	for i := range changes {
		c := &changes[i]
		if !c.zero {
			c.data = make([]byte, c.n)
			if c.off != 2*mib {
				fill(c.data, int64(100+i))
			}
		}
	}

	srv, err := Serve(ctx, top, "qcow2", false)
	if err != nil {
		t.Fatal(err)
	}
	sock, pid := srv.Socket, srv.Pid()
	cl := srv.Client
	if cl.Size() != baseSize || cl.ReadOnly() {
		t.Fatalf("size %d read-only %v", cl.Size(), cl.ReadOnly())
	}
	for _, c := range changes {
		if c.zero {
			if err := cl.WriteZeroes(c.off, c.n); err != nil {
				t.Fatal(err)
			}
			clear(model[c.off : c.off+c.n])
		} else {
			if _, err := cl.WriteAt(c.data, c.off); err != nil {
				t.Fatal(err)
			}
			copy(model[c.off:], c.data)
		}
	}
	if err := cl.Flush(); err != nil {
		t.Fatal(err)
	}
	// While the writer holds the image, a read-only server can still open
	// it (--force-share).
	ro, err := Serve(ctx, top, "qcow2", true)
	if err != nil {
		t.Fatalf("read-only serve beside a writer: %v", err)
	}
	if ro.Client.Size() != baseSize {
		t.Errorf("read-only size %d", ro.Client.Size())
	}
	if err := ro.Close(); err != nil {
		t.Error(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
	noProcess(t, sock)
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("qemu-nbd pid %d still exists: %v", pid, err)
	}
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Errorf("socket folder left: %v", err)
	}

	// Extents list exactly the written ranges rounded out to clusters.
	exts, err := Extents(ctx, top)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range exts {
		t.Logf("top extent [%d, %d) %7d KiB data=%v zero=%v", e.Offset, e.End(), e.Length>>10, e.Data, e.Zero)
	}
	want := roundedUnion(changes)
	got := coverage(exts)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("extents cover %v\nwant %v", got, want)
	}
	for _, e := range exts {
		if e.Offset%clusterSize != 0 || (e.End()%clusterSize != 0 && e.End() != baseSize) {
			t.Errorf("extent %+v not cluster-aligned", e)
		}
	}
	// The aligned WriteZeroes became zero clusters, not data.
	flagsAt := func(off int64) (data, zero bool) {
		for _, e := range exts {
			if e.Offset <= off && off < e.End() {
				return e.Data, e.Zero
			}
		}
		t.Errorf("no extent at %d", off)
		return
	}
	if d, z := flagsAt(20 * mib); d || !z {
		t.Errorf("aligned WriteZeroes: data=%v zero=%v, want a zero cluster", d, z)
	}
	if d, z := flagsAt(45 * mib); d || !z {
		t.Errorf("WriteZeroes over a hole: data=%v zero=%v, want a zero cluster", d, z)
	}
	if d, _ := flagsAt(10*mib + 1); !d {
		t.Error("written data not reported as data")
	}

	// Reading the top back gives base + changes byte for byte.
	rd, err := Serve(ctx, top, "qcow2", true)
	if err != nil {
		t.Fatal(err)
	}
	if !rd.Client.ReadOnly() {
		t.Error("read-only export not flagged read-only")
	}
	if _, err := rd.Client.WriteAt([]byte{1}, 0); err == nil {
		t.Error("write to read-only export succeeded")
	}
	back := make([]byte, baseSize)
	if n, err := rd.Client.ReadAt(back, 0); err != nil || n != baseSize {
		t.Fatal(n, err)
	}
	rsock := rd.Socket
	if err := rd.Close(); err != nil {
		t.Fatal(err)
	}
	noProcess(t, rsock)
	if !bytes.Equal(back, model) {
		for i := range back {
			if back[i] != model[i] {
				t.Fatalf("top differs from base+changes first at byte %d", i)
			}
		}
	}
	if hashFile(t, base) != baseHash {
		t.Error("base image changed")
	}
	out, err := exec.Command("qemu-img", "check", top).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "No errors were found") {
		t.Errorf("qemu-img check: %v\n%s", err, out)
	}
}

// roundedUnion returns the union of the changes rounded out to clusters.
func roundedUnion(changes []change) [][2]int64 {
	var rs [][2]int64
	for _, c := range changes {
		s := c.off / clusterSize * clusterSize
		e := min((c.off+c.n+clusterSize-1)/clusterSize*clusterSize, baseSize)
		rs = append(rs, [2]int64{s, e})
	}
	return union(rs)
}

func coverage(exts []Extent) [][2]int64 {
	var rs [][2]int64
	for _, e := range exts {
		rs = append(rs, [2]int64{e.Offset, e.End()})
	}
	return union(rs)
}

func union(rs [][2]int64) [][2]int64 {
	for i := range rs { // insertion sort: tiny inputs
		for j := i; j > 0 && rs[j][0] < rs[j-1][0]; j-- {
			rs[j], rs[j-1] = rs[j-1], rs[j]
		}
	}
	var out [][2]int64
	for _, r := range rs {
		if n := len(out); n > 0 && r[0] <= out[n-1][1] {
			out[n-1][1] = max(out[n-1][1], r[1])
			continue
		}
		out = append(out, r)
	}
	return out
}

func TestServeContextCancel(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "img.raw")
	if err := os.WriteFile(img, make([]byte, mib), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := Serve(ctx, img, "raw", false)
	if err != nil {
		t.Fatal(err)
	}
	pid, sock := srv.Pid(), srv.Socket
	cancel()
	deadline := time.Now().Add(15 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("qemu-nbd still running after cancel: %v", err)
	}
	if _, err := srv.Client.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("read after the server was stopped succeeded")
	}
	srv.Close() // may report the broken connection; must not hang
	noProcess(t, sock)
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Errorf("socket folder left: %v", err)
	}

	// A context that is already done starts nothing.
	if _, err := Serve(ctx, img, "raw", true); !errors.Is(err, context.Canceled) {
		t.Errorf("serve with a cancelled context: %v", err)
	}
}

func TestServeBadImage(t *testing.T) {
	requireTools(t)
	dir := t.TempDir()
	img := filepath.Join(dir, "notqcow.img")
	if err := os.WriteFile(img, make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Serve(context.Background(), img, "qcow2", true)
	if err == nil || !strings.Contains(err.Error(), "qemu-nbd") {
		t.Fatalf("err %v", err)
	}
	t.Logf("error: %v", err)
	noProcess(t, img)
	if _, err := Serve(context.Background(), img, "qcow2,x=y", true); err == nil {
		t.Error("bad format accepted")
	}
	if _, err := Serve(context.Background(), filepath.Join(dir, "missing"), "raw", true); err == nil {
		t.Error("missing image accepted")
	}
}

func TestParseMap(t *testing.T) {
	out := `[{ "start": 0, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 327680},
{ "start": 65536, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 900000},
{ "start": 131072, "length": 917504, "depth": 1, "present": true, "zero": true, "data": false, "offset": 65536},
{ "start": 1048576, "length": 131072, "depth": 0, "present": true, "zero": true, "data": false},
{ "start": 1179648, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 1}]`
	exts, err := parseMap([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{0, 131072, true, false},
		{1048576, 131072, false, true},
		{1179648, 65536, true, false},
	}
	if fmt.Sprint(exts) != fmt.Sprint(want) {
		t.Errorf("got %v want %v", exts, want)
	}
	if _, err := parseMap([]byte(`[{"start": 10, "length": 5}, {"start": 0, "length": 5}]`)); err == nil {
		t.Error("out-of-order map accepted")
	}
}

// BenchmarkNBD writes then reads 256 MiB through qemu-nbd, in 4 MiB calls
// (split by the client into 2 MiB requests), for a raw image and a qcow2
// top layer over an empty raw base.
func BenchmarkNBD(b *testing.B) {
	requireTools(b)
	const total = 256 * mib
	buf := make([]byte, 4*mib)
	fill(buf, 1)
	for _, format := range []string{"raw", "qcow2"} {
		dir := b.TempDir()
		img := filepath.Join(dir, "img."+format)
		base := filepath.Join(dir, "base.raw")
		if err := os.WriteFile(base, nil, 0o644); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(base, total); err != nil {
			b.Fatal(err)
		}
		if format == "raw" {
			img = base
		} else if err := CreateTop(context.Background(), base, "raw", img); err != nil {
			b.Fatal(err)
		}
		srv, err := Serve(context.Background(), img, format, false)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(format+"/write", func(b *testing.B) {
			b.SetBytes(total)
			for b.Loop() {
				for off := int64(0); off < total; off += int64(len(buf)) {
					if _, err := srv.Client.WriteAt(buf, off); err != nil {
						b.Fatal(err)
					}
				}
				if err := srv.Client.Flush(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(format+"/read", func(b *testing.B) {
			b.SetBytes(total)
			for b.Loop() {
				for off := int64(0); off < total; off += int64(len(buf)) {
					if _, err := srv.Client.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
		if err := srv.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
