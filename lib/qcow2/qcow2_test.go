package qcow2

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	kib = 1 << 10
	mib = 1 << 20
	gib = 1 << 30
)

// requireQemu skips without qemu-img and qemu-io, unless CI=true.
func requireQemu(tb testing.TB) {
	tb.Helper()
	for _, tool := range []string{"qemu-img", "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				tb.Fatalf("%s is required in CI: %v", tool, err)
			}
			tb.Skipf("%s not installed", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// qemuCheck fails unless `qemu-img check` finds the image clean.
func qemuCheck(t *testing.T, top string) {
	t.Helper()
	out, err := run(t, "qemu-img", "check", "-f", "qcow2", "--output=json", top)
	if err != nil {
		human, _ := run(t, "qemu-img", "check", "-f", "qcow2", top)
		t.Fatalf("qemu-img check %s: %v\n%s\n%s", top, err, out, human)
	}
	var r struct {
		CheckErrors int `json:"check-errors"`
		Leaks       int `json:"leaks"`
		Corruptions int `json:"corruptions"`
		Format      string
	}
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("qemu-img check output: %v\n%s", err, out)
	}
	if r.CheckErrors != 0 || r.Leaks != 0 || r.Corruptions != 0 || r.Format != "qcow2" {
		t.Fatalf("qemu-img check %s: not clean:\n%s", top, out)
	}
}

// qemuCompare fails unless the qcow2 top reads the same as the raw file.
func qemuCompare(t *testing.T, top, raw string) {
	t.Helper()
	out, err := run(t, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", top, raw)
	if err != nil || !strings.Contains(out, "identical") {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", top, raw, err, out)
	}
}

// region is a range of a raw file holding random content.
type region struct{ off, n int64 }

// makeRaw writes a sparse raw file of size bytes with the deterministic
// random content of seed in the regions.
func makeRaw(t *testing.T, path string, size int64, regions []region, seed int64) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(seed))
	for _, r := range regions {
		buf := make([]byte, r.n)
		rng.Read(buf)
		if _, err := f.WriteAt(buf, r.off); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// op is one write of a scenario.
type op struct {
	off, n int64
	zero   bool
}

func (o op) String() string {
	if o.zero {
		return fmt.Sprintf("zero %d+%d", o.off, o.n)
	}
	return fmt.Sprintf("write %d+%d", o.off, o.n)
}

// planner picks non-overlapping ops.
type planner struct {
	rng  *rand.Rand
	size int64
	used []uint64 // sector bitmap
	ops  []op
}

func newPlanner(size int64, seed int64) *planner {
	return &planner{rng: rand.New(rand.NewSource(seed)), size: size, used: make([]uint64, (size/sectorSize+63)/64)}
}

// add takes the op if its sectors are free and inside the disk.
func (p *planner) add(o op) bool {
	if o.n <= 0 || o.off < 0 || o.off+o.n > p.size {
		return false
	}
	s0, s1 := o.off/sectorSize, (o.off+o.n)/sectorSize
	for s := s0; s < s1; s++ {
		if p.used[s/64]&(1<<uint(s%64)) != 0 {
			return false
		}
	}
	for s := s0; s < s1; s++ {
		p.used[s/64] |= 1 << uint(s%64)
	}
	p.ops = append(p.ops, o)
	return true
}

// reserve marks a range used without an op (kept for QEMU's writes).
func (p *planner) reserve(off, n int64) {
	for s := off / sectorSize; s < (off+n)/sectorSize; s++ {
		p.used[s/64] |= 1 << uint(s%64)
	}
}

// random adds up to count random ops inside [lo, hi).
func (p *planner) random(lo, hi int64, count int) {
	r := p.rng
	sec := func(a, b int64) int64 { return a + r.Int63n(b-a+1) } // sectors
	for tries := 0; count > 0 && tries < count*50; tries++ {
		var o op
		at := lo + r.Int63n(hi-lo)
		switch r.Intn(9) {
		case 0: // 4 KiB aligned data
			o = op{off: at &^ (4*kib - 1), n: 4 * kib * sec(1, 32)}
		case 1: // 512-byte aligned, odd sized
			o = op{off: at &^ (sectorSize - 1), n: sectorSize * sec(1, 9)}
		case 2: // spanning a cluster boundary
			b := (at/clusterSize + 1) * clusterSize
			o = op{off: b - sectorSize*sec(1, 200), n: 0}
			o.n = b - o.off + sectorSize*sec(1, 200)
		case 3: // large, several clusters
			o = op{off: at &^ (sectorSize - 1), n: sectorSize * sec(200, 4096)}
		case 4: // zero whole clusters
			o = op{off: at &^ (clusterSize - 1), n: clusterSize * sec(1, 4), zero: true}
		case 5: // zero part of a subcluster
			o = op{off: at &^ (sectorSize - 1), n: sectorSize * sec(1, 3), zero: true}
		case 6: // zero mixed whole and partial subclusters
			o = op{off: at &^ (sectorSize - 1), n: sectorSize * sec(3, 40), zero: true}
		case 7: // spanning an L2 table boundary, when the zone has one
			b := (at/(l2Entries*clusterSize) + 1) * (l2Entries * clusterSize)
			if b >= hi {
				continue
			}
			o = op{off: b - sectorSize*sec(1, 300), n: 0}
			o.n = b - o.off + sectorSize*sec(1, 300)
			o.zero = r.Intn(3) == 0
		case 8: // 2 KiB aligned data (no copying)
			o = op{off: at &^ (subclusterSize - 1), n: subclusterSize * sec(1, 6)}
		}
		if o.off < lo || o.off+o.n > hi {
			continue
		}
		if p.add(o) {
			count--
		}
	}
}

// scenario is a Writer over a raw base and the expected raw content.
type scenario struct {
	t        *testing.T
	dir      string
	size     int64
	basePath string
	top      string
	expPath  string
	exp      *os.File
	w        *Writer
	rng      *rand.Rand
}

func newScenario(t *testing.T, size, baseSize int64, regions []region, seed int64) *scenario {
	dir := t.TempDir()
	s := &scenario{t: t, dir: dir, size: size, rng: rand.New(rand.NewSource(seed + 1))}
	s.basePath = filepath.Join(dir, "base.raw")
	s.expPath = filepath.Join(dir, "expected.raw")
	s.top = filepath.Join(dir, "top.qcow2")
	base := makeRaw(t, s.basePath, baseSize, regions, seed)
	s.exp = makeRaw(t, s.expPath, baseSize, regions, seed)
	if err := s.exp.Truncate(size); err != nil {
		t.Fatal(err)
	}
	w, err := Create(s.top, size, s.basePath, "raw", base)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Abort)
	s.w = w
	return s
}

// apply does o on the Writer and on the expected file.
func (s *scenario) apply(o op) {
	t := s.t
	t.Helper()
	buf := make([]byte, o.n)
	if o.zero {
		if err := s.w.WriteZeroes(o.off, o.n); err != nil {
			t.Fatalf("%v: %v", o, err)
		}
	} else {
		s.rng.Read(buf)
		n, err := s.w.WriteAt(buf, o.off)
		if err != nil || n != len(buf) {
			t.Fatalf("%v: %d, %v", o, n, err)
		}
	}
	if _, err := s.exp.WriteAt(buf, o.off); err != nil {
		t.Fatal(err)
	}
}

// checkRead compares Writer.ReadAt with the expected content.
func (s *scenario) checkRead(off, n int64) {
	t := s.t
	t.Helper()
	off = max(0, off)
	n = min(n, s.size-off)
	if n <= 0 {
		return
	}
	got := make([]byte, n)
	want := make([]byte, n)
	if k, err := s.w.ReadAt(got, off); k != int(n) || (err != nil && !(err == io.EOF && off+n == s.size)) {
		t.Fatalf("ReadAt %d+%d: %d, %v", off, n, k, err)
	}
	if _, err := s.exp.ReadAt(want, off); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		i := 0
		for got[i] == want[i] {
			i++
		}
		t.Fatalf("ReadAt %d+%d: first difference at offset %d: %#x, want %#x", off, n, off+int64(i), got[i], want[i])
	}
}

// fixed places the ops that the QEMU stage writes around, starting at
// cluster index c0: cluster c0 gets 4 KiB of data at its start, c0+1 is
// wholly zero (no host cluster), c0+2 has data and zero subclusters, c0+3
// stays untouched, c0+4 has zero subclusters and no data (no host
// cluster). It returns QEMU's writes.
func fixed(p *planner, c0 int64) []op {
	at := func(c, off int64) int64 { return (c0+c)*clusterSize + off }
	for _, o := range []op{
		{off: at(0, 0), n: 4 * kib},
		{off: at(1, 0), n: clusterSize, zero: true},
		{off: at(2, 0), n: 4 * kib},
		{off: at(2, 8*kib), n: 8 * kib, zero: true},
		{off: at(2, 20*kib), n: 1536},
		{off: at(4, 4*kib), n: 8 * kib, zero: true},
	} {
		if !p.add(o) {
			panic(fmt.Sprintf("fixed op %v overlaps", o))
		}
	}
	p.reserve(at(0, 4*kib), clusterSize-4*kib)
	p.reserve(at(2, 16*kib), 4*kib)
	p.reserve(at(3, 0), clusterSize)
	p.reserve(at(4, 0), 4*kib)
	p.reserve(at(4, 12*kib), clusterSize-12*kib)
	return []op{
		{off: at(0, 512), n: 1024},           // over written data, in place
		{off: at(0, 8*kib+512), n: 1024},     // unallocated subcluster of an allocated cluster
		{off: at(1, 4*kib+512), n: 512},      // zero cluster without host cluster
		{off: at(2, 8*kib+1024), n: 512},     // zero subcluster of an allocated cluster
		{off: at(2, 20*kib+1024), n: 2048},   // partly written subcluster, completed at Close
		{off: at(3, 512), n: 70000},          // fresh cluster and beyond
		{off: at(0, 60*kib), n: 8*kib + 512}, // across the cluster boundary into a zero cluster
		{off: at(4, 512), n: 1024},           // unallocated subcluster of a cluster with zero subclusters only
		{off: at(4, 6*kib+512), n: 1024},     // zero subcluster of a cluster without host cluster
	}
}

// finish checks ReadAt, closes, checks the image with qemu-img, then lets
// qemu-io write qemuOps and checks again.
func (s *scenario) finish(p *planner, qemuOps []op, fullRead bool) {
	t := s.t
	t.Helper()
	for _, o := range p.ops {
		s.checkRead(o.off-3000, o.n+6000)
	}
	for range 50 {
		off := s.rng.Int63n(s.size)
		s.checkRead(off, 1+s.rng.Int63n(300*kib))
	}
	if fullRead {
		s.checkRead(0, s.size)
	}
	if err := s.w.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.w.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("ReadAt after Close: no error")
	}
	qemuCheck(t, s.top)
	qemuCompare(t, s.top, s.expPath)

	if len(qemuOps) == 0 {
		return
	}
	args := []string{"-f", "qcow2"}
	pat := make([]byte, 0)
	for _, o := range qemuOps {
		args = append(args, "-c", fmt.Sprintf("write -P 0xab %d %d", o.off, o.n))
		pat = append(pat[:0], bytes.Repeat([]byte{0xab}, int(o.n))...)
		if _, err := s.exp.WriteAt(pat, o.off); err != nil {
			t.Fatal(err)
		}
	}
	args = append(args, s.top)
	out, err := run(t, "qemu-io", args...)
	if err != nil || strings.Count(out, "wrote ") != len(qemuOps) {
		t.Fatalf("qemu-io %q: %v\n%s", args, err, out)
	}
	qemuCheck(t, s.top)
	qemuCompare(t, s.top, s.expPath)
}

func TestRandomSmall(t *testing.T) {
	requireQemu(t)
	for seed := int64(1); seed <= 4; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			const size = 16 * mib
			s := newScenario(t, size, size, []region{{0, size}}, seed)
			p := newPlanner(size, seed)
			qops := fixed(p, 10)
			p.random(0, size, 300)
			p.rng.Shuffle(len(p.ops), func(i, j int) { p.ops[i], p.ops[j] = p.ops[j], p.ops[i] })
			for i, o := range p.ops {
				s.apply(o)
				if i%20 == 0 {
					s.checkRead(s.rng.Int63n(size), 1+s.rng.Int63n(200*kib))
				}
			}
			s.finish(p, append(qops, op{off: size - 1536, n: 1536}), true)
		})
	}
}

func TestRandomLargeSparse(t *testing.T) {
	requireQemu(t)
	const size = 3 * gib
	const l2span = l2Entries * clusterSize // 256 MiB
	zones := []region{
		{0, 8 * mib},
		{l2span - 4*mib, 8 * mib},
		{2*l2span - 2*mib, 4 * mib},
		{5*l2span + 100*mib, 6 * mib},
		{size - 8*mib, 8 * mib},
	}
	s := newScenario(t, size, size, zones, 7)
	p := newPlanner(size, 7)
	qops := fixed(p, (l2span+mib)/clusterSize)
	// Writes across L2 table boundaries, data and zero.
	for _, o := range []op{
		{off: l2span - 3*kib, n: 9 * kib},
		{off: 2*l2span - 64*kib - 512, n: 200 * kib, zero: true},
	} {
		if !p.add(o) {
			t.Fatalf("%v overlaps", o)
		}
	}
	for _, z := range zones {
		p.random(z.off, z.off+z.n, 120)
	}
	// A few writes where the base is a hole.
	p.random(gib, gib+32*mib, 20)
	p.rng.Shuffle(len(p.ops), func(i, j int) { p.ops[i], p.ops[j] = p.ops[j], p.ops[i] })
	for _, o := range p.ops {
		s.apply(o)
	}
	s.finish(p, append(qops, op{off: 2*gib + 3*kib, n: 5000}), false)

	out, err := run(t, "qemu-img", "info", "--output=json", s.top)
	if err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	var info struct {
		VirtualSize    int64  `json:"virtual-size"`
		ClusterSize    int64  `json:"cluster-size"`
		BackingFile    string `json:"backing-filename"`
		BackingFormat  string `json:"backing-filename-format"`
		FormatSpecific struct {
			Data struct {
				Compat       string `json:"compat"`
				ExtendedL2   bool   `json:"extended-l2"`
				RefcountBits int    `json:"refcount-bits"`
				Corrupt      bool   `json:"corrupt"`
			} `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	d := info.FormatSpecific.Data
	if info.VirtualSize != size || info.ClusterSize != clusterSize || info.BackingFile != s.basePath || info.BackingFormat != "raw" ||
		d.Compat != "1.1" || !d.ExtendedL2 || d.RefcountBits != 16 || d.Corrupt {
		t.Fatalf("qemu-img info:\n%s", out)
	}
}

// A backing file shorter than the disk reads as zero beyond its end, in
// the Writer as in QEMU.
func TestShortBacking(t *testing.T) {
	requireQemu(t)
	const size = 4 * mib
	s := newScenario(t, size, mib+1024, []region{{0, mib + 1024}}, 11)
	p := newPlanner(size, 11)
	for _, o := range []op{
		{off: mib - 512, n: 1024},
		{off: mib + 512, n: 512},
		{off: mib + 4*kib + 512, n: 512, zero: true},
		{off: 2 * mib, n: 512},
	} {
		p.add(o)
	}
	p.random(0, size, 80)
	for _, o := range p.ops {
		s.apply(o)
	}
	s.finish(p, []op{{off: mib + 2048, n: 512}, {off: 3 * mib, n: 512}}, true)
}

func TestQcow2Backing(t *testing.T) {
	requireQemu(t)
	const size = 8 * mib
	s := newScenario(t, size, size, []region{{0, 2 * mib}, {5 * mib, mib}}, 21)
	// Replace the raw backing by a qcow2 copy of it; base still reads the
	// same virtual content.
	s.w.Abort()
	bq := filepath.Join(s.dir, "base.qcow2")
	if out, err := run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", s.basePath, bq); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	base, err := os.Open(s.basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	if s.w, err = Create(s.top, size, bq, "qcow2", base); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.w.Abort)
	p := newPlanner(size, 21)
	p.random(0, size, 100)
	for _, o := range p.ops {
		s.apply(o)
	}
	s.finish(p, []op{{off: 512, n: 4096}}, true)
	out, err := run(t, "qemu-img", "info", "--output=json", s.top)
	if err != nil || !strings.Contains(out, `"backing-filename-format": "qcow2"`) {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
}

func TestNoBacking(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	top := filepath.Join(dir, "top.qcow2")
	w, err := Create(top, 64*gib, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{7}, 3*512)
	if _, err := w.WriteAt(data, 40*gib+512); err != nil {
		t.Fatal(err)
	}
	if err := w.WriteZeroes(10*gib, 2*clusterSize); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, top)
	out, err := run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("read -P 7 %d 1536", int64(40*gib+512)),
		"-c", fmt.Sprintf("read -P 0 %d 512", int64(40*gib)), "-c", fmt.Sprintf("read -P 0 %d 512", int64(40*gib+2048)), top)
	if err != nil || strings.Count(out, "read ") != 3 || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io: %v\n%s", err, out)
	}
}

func TestZeroSize(t *testing.T) {
	requireQemu(t)
	top := filepath.Join(t.TempDir(), "top.qcow2")
	w, err := Create(top, 0, "", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, top)
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.raw")
	base := makeRaw(t, basePath, 512*mib, nil, 0)
	top := filepath.Join(dir, "top.qcow2")
	w, err := Create(top, 512*mib, basePath, "raw", base)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	p := make([]byte, 4096)
	if _, err := w.WriteAt(p, 4096); err != nil {
		t.Fatal(err)
	}
	wantErr := func(err error, want string) {
		t.Helper()
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
	}
	_, err = w.WriteAt(p, 100)
	wantErr(err, "qcow2: write at offset 100 of 4096 bytes: offset not a multiple of 512")
	_, err = w.WriteAt(p[:1000], 0)
	wantErr(err, "qcow2: write at offset 0 of 1000 bytes: length not a multiple of 512")
	_, err = w.WriteAt(p, 512*mib-512)
	wantErr(err, "qcow2: write at offset 536870400 of 4096 bytes: beyond the 536870912-byte disk")
	_, err = w.WriteAt(p, -512)
	wantErr(err, "qcow2: write at offset -512 of 4096 bytes: beyond the 536870912-byte disk")
	_, err = w.WriteAt(p, 4608)
	wantErr(err, "qcow2: write at offset 4608 of 4096 bytes: sector at offset 4608 already written")
	_, err = w.WriteAt(p, 1024)
	wantErr(err, "qcow2: write at offset 1024 of 4096 bytes: sector at offset 4096 already written")
	wantErr(w.WriteZeroes(0, 100*kib), "qcow2: write zeroes at offset 0 of 102400 bytes: sector at offset 4096 already written")
	wantErr(w.WriteZeroes(512, 700), "qcow2: write zeroes at offset 512 of 700 bytes: length not a multiple of 512")
	wantErr(w.WriteZeroes(512*mib, 512), "qcow2: write zeroes at offset 536870912 of 512 bytes: beyond the 536870912-byte disk")
	if err := w.WriteZeroes(64*kib, 64*kib); err != nil {
		t.Fatal(err)
	}
	_, err = w.WriteAt(p[:512], 100*kib)
	wantErr(err, "qcow2: write at offset 102400 of 512 bytes: sector at offset 102400 already written")
	// Failed calls changed nothing: the sectors around the write are free.
	if _, err := w.WriteAt(p, 0); err != nil {
		t.Errorf("write before the first write: %v", err)
	}
	if _, err := w.WriteAt(p[:512], 8192); err != nil {
		t.Errorf("write after the first write: %v", err)
	}

	if _, err := Create(top, 512*mib, basePath, "raw", base); !errors.Is(err, os.ErrExist) {
		t.Errorf("Create on an existing file: %v", err)
	}
	if _, err := Create(filepath.Join(dir, "x"), 1000, basePath, "raw", base); err == nil {
		t.Error("Create with an unaligned size: no error")
	}
	if _, err := Create(filepath.Join(dir, "x"), mib, basePath, "vmdk", base); err == nil {
		t.Error("Create with backing format vmdk: no error")
	}
	if _, err := Create(filepath.Join(dir, "x"), mib, basePath, "raw", nil); err == nil {
		t.Error("Create without base reader: no error")
	}
	if _, err := Create(filepath.Join(dir, "x"), mib, "/"+strings.Repeat("a", 1023), "raw", base); err == nil {
		t.Error("Create with a 1024-byte backing name: no error")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed Creates left a file: %v", err)
	}

	w.Abort()
	if _, err := os.Stat(top); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Abort: %v", err)
	}
	if _, err := w.WriteAt(p, 64*mib); err == nil {
		t.Error("WriteAt after Abort: no error")
	}
	if err := w.Close(); err == nil {
		t.Error("Close after Abort: no error")
	}
}

type failingReader struct{}

func (failingReader) ReadAt(p []byte, off int64) (int, error) {
	return 0, fmt.Errorf("disk on fire at %d", off)
}

// A Close that fails (here: the backing cannot be read to complete a
// subcluster) removes the file.
func TestCloseErrorRemoves(t *testing.T) {
	top := filepath.Join(t.TempDir(), "top.qcow2")
	w, err := Create(top, mib, "/nonexistent/base.raw", "raw", failingReader{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err == nil || !strings.Contains(err.Error(), "disk on fire at 512") {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Stat(top); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after a failed Close: %v", err)
	}
	w.Abort() // no-op
}

// Refcount structures for a file of more than one refcount block (2 GiB of
// host clusters) and more than one refcount table cluster.
func TestPlanRefcounts(t *testing.T) {
	for _, dataClusters := range []int64{0, 1, refcountsPerBlock - 5, refcountsPerBlock, 3 * refcountsPerBlock, 8192*refcountsPerBlock + 7} {
		w := &Writer{size: 64 * gib, next: (1 + dataClusters) * clusterSize}
		l := w.plan([]int64{0, 5000, 100000})
		if l.clusters != 1+dataClusters+3+1+l.rtCluster+l.rbCount {
			t.Errorf("%d data clusters: %d clusters in all, want %d", dataClusters, l.clusters, 1+dataClusters+3+1+l.rtCluster+l.rbCount)
		}
		if l.rbCount*refcountsPerBlock < l.clusters || (l.rbCount-1)*refcountsPerBlock >= l.clusters {
			t.Errorf("%d data clusters: %d refcount blocks for %d clusters", dataClusters, l.rbCount, l.clusters)
		}
		if l.rtCluster*clusterSize/8 < l.rbCount || (l.rtCluster-1)*clusterSize/8 >= l.rbCount {
			t.Errorf("%d data clusters: %d refcount table clusters for %d blocks", dataClusters, l.rtCluster, l.rbCount)
		}
		if l.rbOffset != l.rtOffset+l.rtCluster*clusterSize || (l.rbOffset/clusterSize)+l.rbCount != l.clusters {
			t.Errorf("%d data clusters: layout %+v", dataClusters, l)
		}
	}
}

// BenchmarkWrite writes 128 MiB in 4 KiB-aligned records of 64 KiB-1 MiB
// at scattered places of a 1 GiB disk, and closes the image.
func BenchmarkWrite(b *testing.B) {
	const total = 128 * mib
	const size = gib
	dir := b.TempDir()
	basePath := filepath.Join(dir, "base.raw")
	base, err := os.Create(basePath)
	if err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	if err := base.Truncate(size); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	var recs []op
	for pos, sum := int64(0), int64(0); sum < total; {
		pos += 4 * kib * rng.Int63n(64)
		n := min(4*kib*(16+rng.Int63n(241)), total-sum)
		recs = append(recs, op{off: pos, n: n})
		pos += n
		sum += n
	}
	rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	data := make([]byte, mib)
	rng.Read(data)
	top := filepath.Join(dir, "top.qcow2")
	b.SetBytes(total)
	b.ResetTimer()
	for range b.N {
		w, err := Create(top, size, basePath, "raw", base)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range recs {
			if _, err := w.WriteAt(data[:r.n], r.off); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(top)
		b.StartTimer()
	}
}

// Files that end exactly at the end of what one refcount block covers, and
// one cluster past it: QEMU's next allocation needs a new refcount block.
func TestRefcountBlockBoundary(t *testing.T) {
	requireQemu(t)
	// The empty image's metadata (refcount table, block, one L1 cluster)
	// stays in clusters 1-3, free after Close.
	const empty = 3
	for _, data := range []int64{refcountsPerBlock - 12 - empty, refcountsPerBlock - 11 - empty} {
		t.Run(fmt.Sprint(data, "clusters"), func(t *testing.T) {
			const size = 4 * gib
			top := filepath.Join(t.TempDir(), "top.qcow2")
			w, err := Create(top, size, "", "", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Abort()
			buf := bytes.Repeat([]byte{0x5a}, subclusterSize)
			for ci := range data {
				if _, err := w.WriteAt(buf, ci*clusterSize); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(top)
			if err != nil {
				t.Fatal(err)
			}
			// header + empty image + data + 8 L2 tables + L1 + refcount table + blocks
			want := int64(1+empty+data+8+1+1+1) * clusterSize
			if data+12+empty > refcountsPerBlock {
				want += clusterSize
			}
			if fi.Size() != want {
				t.Fatalf("file of %d bytes, want %d", fi.Size(), want)
			}
			qemuCheck(t, top)
			at := int64(3*gib + 512)
			out, err := run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("write -P 0xab %d 4096", at), top)
			if err != nil || !strings.Contains(out, "wrote ") {
				t.Fatalf("qemu-io: %v\n%s", err, out)
			}
			qemuCheck(t, top)
			out, err = run(t, "qemu-io", "-f", "qcow2", "-c", fmt.Sprintf("read -P 0xab %d 4096", at),
				"-c", fmt.Sprintf("read -P 0x5a %d 2048", (data-1)*clusterSize), "-c", fmt.Sprintf("read -P 0 %d 2048", (data-1)*clusterSize+2048), top)
			if err != nil || strings.Count(out, "read ") != 3 || strings.Contains(out, "Pattern verification failed") {
				t.Fatalf("qemu-io: %v\n%s", err, out)
			}
		})
	}
}

// From Create on, the file is a valid (empty) image over its backing file,
// as QEMU must open it at start, before the data is written; after Close
// the empty image's metadata clusters are free, not leaked.
func TestValidFromCreate(t *testing.T) {
	requireQemu(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, bytes.Repeat([]byte{7}, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	bf, err := os.Open(base)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	top := filepath.Join(dir, "top.qcow2")
	w, err := Create(top, 1<<20, base, "raw", bf)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	qemuCheck(t, top)
	out, err := run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 7 0 1M", top)
	if err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("the empty image does not read as its backing file: %v\n%s", err, out)
	}
	if _, err := w.WriteAt(bytes.Repeat([]byte{9}, 8192), 65536); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	qemuCheck(t, top)
	out, err = run(t, "qemu-io", "-r", "-f", "qcow2", "-c", "read -P 9 65536 8192", "-c", "read -P 7 0 65536", top)
	if err != nil || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("after Close: %v\n%s", err, out)
	}
}

// TestRewrite writes ranges again after AllowRewrite (a live stream's later
// passes): data over data, data over zero subclusters and zero over data,
// in every alignment; the latest write wins, in ReadAt and for QEMU.
func TestRewrite(t *testing.T) {
	requireQemu(t)
	for seed := int64(1); seed <= 3; seed++ {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			const size = 16 * mib
			s := newScenario(t, size, size, []region{{0, size}}, seed)
			s.w.AllowRewrite()
			all := newPlanner(size, seed)
			for pass := range 3 { // each pass's ops are disjoint; passes overlap
				p := newPlanner(size, seed*10+int64(pass))
				p.random(0, size, 200)
				for _, o := range p.ops {
					s.apply(o)
				}
				all.ops = append(all.ops, p.ops...)
			}
			s.finish(all, nil, true)
		})
	}
	// Without AllowRewrite a second write is refused.
	s := newScenario(t, mib, mib, []region{{0, mib}}, 9)
	s.apply(op{off: 4096, n: 4096})
	if _, err := s.w.WriteAt(make([]byte, 512), 4096+512); err == nil || !strings.Contains(err.Error(), "already written") {
		t.Fatalf("second write without AllowRewrite: %v", err)
	}
}
