package lazyfs

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needFUSE skips the test when there is no /dev/fuse, unless CI=true
// (where the test must run).
func needFUSE(t testing.TB) {
	t.Helper()
	if _, err := os.Stat("/dev/fuse"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI=true and no FUSE: %v", err)
		}
		t.Skipf("no FUSE: %v", err)
	}
}

// randBytes returns n deterministic pseudo-random bytes.
func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		v := r.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	return b
}

// baseFile writes data to a file and returns it opened for reading.
func baseFile(t testing.TB, data []byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "base")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// mountT mounts images on a fresh folder, unmounted at the end of the test.
func mountT(t testing.TB, images []*Image, o Options) (*Server, string) {
	t.Helper()
	needFUSE(t)
	dir := t.TempDir()
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	s, err := Mount(dir, images, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return s, dir
}

func openT(t testing.TB, path string, flag int) *os.File {
	t.Helper()
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		t.Fatal(err)
	}
	// FUSE files are pollable, so Go's Close waits for the reads in
	// flight, and this cleanup runs before mountT's Unmount, which ends
	// them: do not wait.
	t.Cleanup(func() { go f.Close() })
	return f
}

type readResult struct {
	data []byte
	err  error
}

// readAsync preads n bytes at off in a goroutine.
func readAsync(f *os.File, off int64, n int) <-chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b := make([]byte, n)
		_, err := f.ReadAt(b, off)
		ch <- readResult{b, err}
	}()
	return ch
}

// readNow preads n bytes at off, failing the test if that takes more than
// a few seconds (it waited for something it should not).
func readNow(t *testing.T, f *os.File, off int64, n int) []byte {
	t.Helper()
	select {
	case r := <-readAsync(f, off, n):
		if r.err != nil {
			t.Fatalf("read [%d, +%d): %v", off, n, r.err)
		}
		return r.data
	case <-time.After(5 * time.Second):
		t.Fatalf("read [%d, +%d) blocked", off, n)
	}
	return nil
}

// stillBlocked fails the test if ch delivers within 100 ms.
func stillBlocked[T any](t *testing.T, ch <-chan T, what string) {
	t.Helper()
	select {
	case r := <-ch:
		t.Fatalf("%s returned before its data arrived: %+v", what, r)
	case <-time.After(100 * time.Millisecond):
	}
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still blocked", what)
	}
	panic("unreachable")
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

const MiB = 1 << 20

func TestRead(t *testing.T) {
	const size = 16 * MiB
	base := randBytes(1, size)
	im := NewImage("disk.img", size, baseFile(t, base))
	// Regions 2 MiB apart, so that no readahead window reaches the next.
	must(t, im.Expect(2*MiB, 4096))        // a page
	must(t, im.Expect(4*MiB, 4096))        // a page zeroed later
	must(t, im.Expect(6*MiB+1024, 1024))   // part of a page
	must(t, im.Expect(8*MiB+16384, 65536)) // inside a read
	must(t, im.Expect(10*MiB, 4096))       // arrives before Mount
	must(t, im.Fill(10*MiB, randBytes(9, 4096)))
	if got, want := im.Pending(), int64(4096+4096+1024+65536); got != want {
		t.Fatalf("Pending = %d, want %d", got, want)
	}
	_, dir := mountT(t, []*Image{im}, Options{})
	f := openT(t, filepath.Join(dir, "disk.img"), os.O_RDONLY)

	st, err := f.Stat()
	must(t, err)
	if st.Size() != size || st.Mode() != 0o444 {
		t.Fatalf("stat: size %d mode %v", st.Size(), st.Mode())
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || sys.Gid != 0 {
		t.Fatalf("owner %d:%d", sys.Uid, sys.Gid)
	}

	t.Run("base", func(t *testing.T) {
		if got := readNow(t, f, 0, 4096); !bytes.Equal(got, base[:4096]) {
			t.Fatal("page 0 differs from the base")
		}
		if got := readNow(t, f, 12*MiB+100, 5000); !bytes.Equal(got, base[12*MiB+100:12*MiB+5100]) {
			t.Fatal("unaligned read differs from the base")
		}
	})
	t.Run("filled-before-mount", func(t *testing.T) {
		if got := readNow(t, f, 10*MiB, 4096); !bytes.Equal(got, randBytes(9, 4096)) {
			t.Fatal("page differs from what was filled")
		}
	})
	t.Run("expected-page", func(t *testing.T) {
		ch := readAsync(f, 2*MiB, 4096)
		stillBlocked(t, ch, "read of an expected page")
		data := randBytes(2, 4096)
		must(t, im.Fill(2*MiB, data))
		r := wait(t, ch, "read of a filled page")
		if r.err != nil || !bytes.Equal(r.data, data) {
			t.Fatalf("read after Fill: %v, equal %v", r.err, bytes.Equal(r.data, data))
		}
	})
	t.Run("zero", func(t *testing.T) {
		ch := readAsync(f, 4*MiB, 4096)
		stillBlocked(t, ch, "read of an expected page")
		must(t, im.Zero(4*MiB, 4096))
		r := wait(t, ch, "read of a zeroed page")
		if r.err != nil || !bytes.Equal(r.data, make([]byte, 4096)) {
			t.Fatalf("read after Zero: %v, zero %v", r.err, bytes.Equal(r.data, make([]byte, 4096)))
		}
	})
	t.Run("part-of-page", func(t *testing.T) {
		ch := readAsync(f, 6*MiB, 4096)
		stillBlocked(t, ch, "read of a partly expected page")
		data := randBytes(3, 1024)
		must(t, im.Fill(6*MiB+1024, data))
		r := wait(t, ch, "read of a filled page")
		want := slices.Concat(base[6*MiB:6*MiB+1024], data, base[6*MiB+2048:6*MiB+4096])
		if r.err != nil || !bytes.Equal(r.data, want) {
			t.Fatalf("read after Fill: %v, equal %v", r.err, bytes.Equal(r.data, want))
		}
	})
	t.Run("spanning", func(t *testing.T) {
		// [8 MiB, +128 KiB) holds base, expected [16K, 80K), base.
		ch := readAsync(f, 8*MiB, 128<<10)
		stillBlocked(t, ch, "read spanning an expected range")
		d1, d2 := randBytes(4, 32768), randBytes(5, 32768)
		must(t, im.Fill(8*MiB+16384, d1))
		stillBlocked(t, ch, "read spanning a half-filled range")
		must(t, im.Fill(8*MiB+16384+32768, d2))
		r := wait(t, ch, "read of a filled range")
		want := slices.Concat(base[8*MiB:8*MiB+16384], d1, d2, base[8*MiB+81920:8*MiB+128<<10])
		if r.err != nil || !bytes.Equal(r.data, want) {
			t.Fatalf("read after Fill: %v, equal %v", r.err, bytes.Equal(r.data, want))
		}
	})
	if p := im.Pending(); p != 0 {
		t.Fatalf("Pending = %d after everything arrived", p)
	}
	t.Run("read-only", func(t *testing.T) {
		if _, err := os.OpenFile(filepath.Join(dir, "new"), os.O_CREATE|os.O_WRONLY, 0o644); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("create: %v, want EROFS", err)
		}
		w, err := os.OpenFile(filepath.Join(dir, "disk.img"), os.O_RDWR, 0)
		must(t, err)
		defer w.Close()
		if _, err := w.WriteAt([]byte("x"), 0); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("write: %v, want EROFS", err)
		}
		if err := w.Truncate(0); !errors.Is(err, syscall.EROFS) {
			t.Fatalf("truncate: %v, want EROFS", err)
		}
		if got := readNow(t, w, 0, 4096); !bytes.Equal(got, base[:4096]) {
			t.Fatal("page 0 changed by a failed write")
		}
	})
}

func TestShortBase(t *testing.T) {
	// base shorter than the image, an image size that is not a multiple
	// of a sector, and an image without base.
	short := NewImage("short", 10000, bytes.NewReader([]byte("hello")))
	none := NewImage("none", 3*4096, nil)
	must(t, short.Expect(9728, 272)) // the last, partial sector
	if p := short.Pending(); p != 272 {
		t.Fatalf("Pending = %d, want 272", p)
	}
	if err := short.Expect(100, 512); err == nil {
		t.Fatal("Expect of an unaligned range succeeded")
	}
	if err := short.Fill(9728, make([]byte, 512)); err == nil {
		t.Fatal("Fill past the end succeeded")
	}
	must(t, short.Fill(9728, bytes.Repeat([]byte{7}, 272)))
	_, dir := mountT(t, []*Image{short, none}, Options{})
	got, err := os.ReadFile(filepath.Join(dir, "short"))
	must(t, err)
	want := slices.Concat([]byte("hello"), make([]byte, 9728-5), bytes.Repeat([]byte{7}, 272))
	if !bytes.Equal(got, want) {
		t.Fatalf("short: got %d bytes, differs", len(got))
	}
	got, err = os.ReadFile(filepath.Join(dir, "none"))
	must(t, err)
	if !bytes.Equal(got, make([]byte, 3*4096)) {
		t.Fatal("none: not all zero")
	}
	ents, err := os.ReadDir(dir)
	must(t, err)
	if len(ents) != 2 {
		t.Fatalf("dir holds %d entries", len(ents))
	}
}

// The tests that fault on a mapping of the mount do it in a helper
// process (the test binary again, see TestMain): a Go process must not
// fault on a FUSE mount it serves itself. A goroutine waiting in a page
// fault cannot be stopped, so a stop-the-world (GC, GOMAXPROCS) waits for
// it while the goroutines that would answer the fault are stopped.
const mapperEnv = "LAZYFS_TEST_MAPPER"

func TestMain(m *testing.M) {
	if path := os.Getenv(mapperEnv); path != "" {
		os.Exit(mapperMain(path, os.Getenv(mapperEnv+"_FLAGS")))
	}
	os.Exit(m.Run())
}

// mapperMain maps path privately (as QEMU maps a share=off
// memory-backend-file) and runs commands from stdin, one a line: "r OFF"
// loads the byte at OFF and answers "OFF VALUE" (or "fault ..."), "w OFF
// VALUE" stores one and answers "OFF".
func mapperMain(path, flags string) int {
	mode := os.O_RDONLY
	if strings.Contains(flags, "rw") {
		mode = os.O_RDWR // as QEMU before 8.2 opens it
	}
	f, err := os.OpenFile(path, mode, 0)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	st, err := f.Stat()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(st.Size()), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	if strings.Contains(flags, "random") {
		syscall.Madvise(m, syscall.MADV_RANDOM)
	}
	debug.SetPanicOnFault(true)
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var off, v int
		func() {
			defer func() {
				if r := recover(); r != nil {
					fmt.Println("fault:", r)
				}
			}()
			if n, _ := fmt.Sscanf(sc.Text(), "w %d %d", &off, &v); n == 2 {
				m[off] = byte(v)
				fmt.Println(off)
			} else if n, _ := fmt.Sscanf(sc.Text(), "r %d", &off); n == 1 {
				fmt.Println(off, m[off])
			} else {
				fmt.Println("bad command")
			}
		}()
	}
	return 0
}

// mapper is a helper process holding a private mapping of a file.
type mapper struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
}

func startMapper(t *testing.T, path, flags string) *mapper {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), mapperEnv+"="+path, mapperEnv+"_FLAGS="+flags)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	must(t, err)
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	mp := &mapper{cmd: cmd, in: in, lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mp.lines <- sc.Text()
		}
		close(mp.lines)
	}()
	// Before mountT's Unmount: a helper still waiting in a fault dies
	// of SIGKILL.
	t.Cleanup(func() {
		in.Close()
		cmd.Process.Kill()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Errorf("mapper helper does not exit")
		}
	})
	if l := wait(t, mp.lines, "mapper start"); l != "ready" {
		t.Fatalf("mapper: %q", l)
	}
	return mp
}

// touch loads the byte at off; the answer comes on the returned channel.
func (mp *mapper) touch(off int) <-chan string {
	fmt.Fprintf(mp.in, "r %d\n", off)
	return mp.lines
}

// load loads the byte at off, failing the test on a fault or a wait.
func (mp *mapper) load(t *testing.T, off int) byte {
	t.Helper()
	return parseLoad(t, wait(t, mp.touch(off), "load"), off)
}

func parseLoad(t *testing.T, l string, off int) byte {
	t.Helper()
	var o, v int
	if n, _ := fmt.Sscanf(l, "%d %d", &o, &v); n != 2 || o != off {
		t.Fatalf("load of byte %d: %q", off, l)
	}
	return byte(v)
}

func (mp *mapper) store(t *testing.T, off int, v byte) {
	t.Helper()
	fmt.Fprintf(mp.in, "w %d %d\n", off, v)
	if l := wait(t, mp.lines, "store"); l != fmt.Sprint(off) {
		t.Fatalf("store to byte %d: %q", off, l)
	}
}

func TestMmapPrivate(t *testing.T) {
	const size = 8 * MiB
	base := randBytes(6, size)
	bf := baseFile(t, base)
	im := NewImage("mem.ram", size, bf)
	must(t, im.Expect(4*MiB, 4096))
	_, dir := mountT(t, []*Image{im}, Options{})
	path := filepath.Join(dir, "mem.ram")
	mp := startMapper(t, path, "rw")

	if v := mp.load(t, 100); v != base[100] {
		t.Fatal("base page differs")
	}
	ch := mp.touch(4*MiB + 10)
	stillBlocked(t, ch, "touch of an expected page")
	data := randBytes(7, 4096)
	must(t, im.Fill(4*MiB, data))
	if v := parseLoad(t, wait(t, ch, "touch of a filled page"), 4*MiB+10); v != data[10] {
		t.Fatal("mapped page differs from what was filled")
	}

	// Writes to the private mapping stay in it.
	for _, off := range []int{100, 4*MiB + 10, 6 * MiB} {
		mp.store(t, off, ^mp.load(t, off))
	}
	if v := mp.load(t, 4*MiB+10); v != ^data[10] {
		t.Fatal("the mapping lost a write")
	}
	got := make([]byte, size)
	_, err := bf.ReadAt(got, 0)
	must(t, err)
	if !bytes.Equal(got, base) {
		t.Fatal("the base file changed")
	}
	im.storeMu.RLock()
	_, err = im.store.ReadAt(got[:4096], 4*MiB)
	im.storeMu.RUnlock()
	must(t, err)
	if !bytes.Equal(got[:4096], data) {
		t.Fatal("the store changed")
	}
	r := openT(t, path, os.O_RDONLY)
	if b := readNow(t, r, 0, 4096); !bytes.Equal(b, base[:4096]) {
		t.Fatal("the file changed (page 0)")
	}
	if b := readNow(t, r, 4*MiB, 4096); !bytes.Equal(b, data) {
		t.Fatal("the file changed (filled page)")
	}
	if b := readNow(t, r, 6*MiB, 4096); !bytes.Equal(b, base[6*MiB:6*MiB+4096]) {
		t.Fatal("the file changed (page at 6 MiB)")
	}
}

func TestFail(t *testing.T) {
	const size = 8 * MiB
	base := randBytes(8, size)
	im := NewImage("disk", size, baseFile(t, base))
	must(t, im.Expect(2*MiB, 4096))
	must(t, im.Expect(4*MiB, 4096))
	must(t, im.Expect(6*MiB, 4096))
	_, dir := mountT(t, []*Image{im}, Options{})
	f := openT(t, filepath.Join(dir, "disk"), os.O_RDONLY)

	data := randBytes(9, 4096)
	must(t, im.Fill(6*MiB, data))
	ch := readAsync(f, 2*MiB, 4096)
	stillBlocked(t, ch, "read of an expected page")
	im.Fail(errors.New("bad stream"))
	if r := wait(t, ch, "read after Fail"); !errors.Is(r.err, syscall.EIO) {
		t.Fatalf("waiting read after Fail: %v, want EIO", r.err)
	}
	if r := wait(t, readAsync(f, 4*MiB, 4096), "read of a pending page after Fail"); !errors.Is(r.err, syscall.EIO) {
		t.Fatalf("read of a pending page after Fail: %v, want EIO", r.err)
	}
	if b := readNow(t, f, 6*MiB, 4096); !bytes.Equal(b, data) {
		t.Fatal("arrived page differs after Fail")
	}
	if b := readNow(t, f, 0, 4096); !bytes.Equal(b, base[:4096]) {
		t.Fatal("base page differs after Fail")
	}
}

// TestFailFault: after Fail, a fault on a pending page raises SIGBUS
// (QEMU would crash, not hang), also for a fault that was waiting.
func TestFailFault(t *testing.T) {
	const size = 8 * MiB
	base := randBytes(12, size)
	im := NewImage("mem", size, baseFile(t, base))
	must(t, im.Expect(2*MiB, 4096))
	must(t, im.Expect(4*MiB, 4096))
	_, dir := mountT(t, []*Image{im}, Options{})
	mp := startMapper(t, filepath.Join(dir, "mem"), "")
	ch := mp.touch(2 * MiB)
	stillBlocked(t, ch, "touch of an expected page")
	im.Fail(errors.New("bad stream"))
	if l := wait(t, ch, "touch after Fail"); !strings.HasPrefix(l, "fault") {
		t.Fatalf("waiting touch after Fail: %q, want a fault", l)
	}
	if l := wait(t, mp.touch(4*MiB), "touch after Fail"); !strings.HasPrefix(l, "fault") {
		t.Fatalf("touch of a pending page after Fail: %q, want a fault", l)
	}
	if v := mp.load(t, 6*MiB); v != base[6*MiB] {
		t.Fatal("base page differs after Fail")
	}
}

func TestReadaheadBound(t *testing.T) {
	const size = 8 * MiB
	base := randBytes(10, size)
	im := NewImage("mem", size, baseFile(t, base))
	must(t, im.Expect(2*MiB, 4096)) // never filled
	_, dir := mountT(t, []*Image{im}, Options{})
	f := openT(t, filepath.Join(dir, "mem"), os.O_RDONLY)
	if b := readNow(t, f, 0, 4096); !bytes.Equal(b, base[:4096]) {
		t.Fatal("page 0 differs")
	}
	// Streaming through the first MiB grows the readahead window to its
	// bound, still far from 2 MiB.
	for off := int64(0); off < MiB; off += 64 << 10 {
		readNow(t, f, off, 64<<10)
	}
	// A fault reads the window around it: half the readahead bound
	// before, half after.
	mp := startMapper(t, filepath.Join(dir, "mem"), "")
	for _, off := range []int{MiB + 512<<10, 2*MiB - 128<<10, 2*MiB + 128<<10, 3 * MiB} {
		if v := mp.load(t, off); v != base[off] {
			t.Fatalf("byte %d differs", off)
		}
	}
}

func TestAccesses(t *testing.T) {
	// The bookkeeping: first reads only, in order, whole pages.
	var u Image
	for _, r := range [][2]int64{{8192, 8193}, {0, 16384}, {4096, 8192}, {40960, 41000}, {12288, 20480}} {
		u.noteAccess(r[0], r[1])
	}
	if got, want := u.Accesses(), []int64{8192, 0, 4096, 12288, 40960, 16384}; !slices.Equal(got, want) {
		t.Fatalf("Accesses = %v, want %v", got, want)
	}

	const size = 4 * MiB
	im := NewImage("mem", size, nil)
	// The smallest readahead: the kernel reads what is asked for.
	_, dir := mountT(t, []*Image{im}, Options{MaxReadAhead: 4096})
	f := openT(t, filepath.Join(dir, "mem"), os.O_RDONLY)
	for _, off := range []int64{MiB, 0, 3 * MiB, 0, MiB} {
		readNow(t, f, off, 4096)
	}
	got := im.Accesses()
	t.Logf("Accesses: %v", got)
	if len(got) < 3 || got[0] != MiB || got[1] != 0 || got[2] != 3*MiB {
		t.Fatalf("Accesses = %v, want [%d 0 %d ...]", got, MiB, 3*MiB)
	}
	seen := map[int64]bool{}
	for _, p := range got {
		if p%4096 != 0 || seen[p] {
			t.Fatalf("Accesses = %v: %d repeated or unaligned", got, p)
		}
		seen[p] = true
	}
}

// mountinfoHas reports whether /proc/self/mountinfo lists dir.
func mountinfoHas(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func TestUnmount(t *testing.T) {
	needFUSE(t)
	t.Run("idle", func(t *testing.T) {
		dir := t.TempDir()
		im := NewImage("a", 1<<20, nil)
		s, err := Mount(dir, []*Image{im}, Options{StoreDir: t.TempDir()})
		must(t, err)
		must(t, im.Fill(0, []byte("data")[:0]))
		must(t, im.Fill(0, make([]byte, 512)))
		b, err := os.ReadFile(filepath.Join(dir, "a"))
		must(t, err)
		if len(b) != 1<<20 {
			t.Fatalf("read %d bytes", len(b))
		}
		if !mountinfoHas(t, dir) {
			t.Fatal("not in mountinfo while mounted")
		}
		must(t, s.Unmount())
		if mountinfoHas(t, dir) {
			t.Fatal("still in mountinfo after Unmount")
		}
		must(t, s.Unmount())
		if err := im.Fill(0, make([]byte, 512)); err == nil {
			t.Fatal("Fill after Unmount succeeded")
		}
		if _, err := Mount(t.TempDir(), []*Image{im}, Options{}); err == nil {
			t.Fatal("an image mounted twice")
		}
	})
	t.Run("blocked-read", func(t *testing.T) {
		dir := t.TempDir()
		im := NewImage("a", 4<<20, nil)
		must(t, im.Expect(2<<20, 4096))
		s, err := Mount(dir, []*Image{im}, Options{StoreDir: t.TempDir()})
		must(t, err)
		f, err := os.Open(filepath.Join(dir, "a"))
		must(t, err)
		defer f.Close()
		ch := readAsync(f, 2<<20, 4096)
		stillBlocked(t, ch, "read of an expected page")
		done := make(chan error, 1)
		go func() { done <- s.Unmount() }()
		if err := wait(t, done, "Unmount with a blocked read"); err != nil {
			t.Fatalf("Unmount: %v", err)
		}
		if r := wait(t, ch, "read during Unmount"); r.err == nil {
			t.Fatal("the blocked read succeeded")
		} else {
			t.Logf("blocked read: %v", r.err)
		}
		if mountinfoHas(t, dir) {
			t.Fatal("still in mountinfo after Unmount")
		}
		if _, err := f.ReadAt(make([]byte, 10), 0); err == nil {
			t.Fatal("read of the open file after Unmount succeeded")
		} else {
			t.Logf("read after Unmount: %v", err)
		}
		must(t, s.Unmount())
	})
	t.Run("blocked-fault", func(t *testing.T) {
		dir := t.TempDir()
		im := NewImage("a", 4<<20, nil)
		must(t, im.Expect(2<<20, 4096))
		s, err := Mount(dir, []*Image{im}, Options{StoreDir: t.TempDir()})
		must(t, err)
		mp := startMapper(t, filepath.Join(dir, "a"), "")
		ch := mp.touch(2 << 20)
		stillBlocked(t, ch, "touch of an expected page")
		done := make(chan error, 1)
		go func() { done <- s.Unmount() }()
		if err := wait(t, done, "Unmount with a blocked fault"); err != nil {
			t.Fatalf("Unmount: %v", err)
		}
		if l := wait(t, ch, "touch during Unmount"); !strings.HasPrefix(l, "fault") {
			t.Fatalf("blocked touch during Unmount: %q, want a fault", l)
		}
		if mountinfoHas(t, dir) {
			t.Fatal("still in mountinfo after Unmount")
		}
	})
}

const childEnv = "LAZYFS_TEST_CHILD_DIR"

// TestStaleMount mounts in a child process, kills it with SIGKILL, and
// checks that Cleanup removes the dead mount it leaves.
func TestStaleMount(t *testing.T) {
	if dir := os.Getenv(childEnv); dir != "" {
		im := NewImage("mem", 1<<20, nil)
		if _, err := Mount(dir, []*Image{im}, Options{}); err != nil {
			fmt.Println("mount:", err)
			os.Exit(1)
		}
		fmt.Println("ready")
		select {}
	}
	needFUSE(t)
	dir := t.TempDir()
	t.Cleanup(func() { Cleanup(dir) }) // before TempDir's removal
	cmd := exec.Command(os.Args[0], "-test.run=^TestStaleMount$", "-test.v=false")
	cmd.Env = append(os.Environ(), childEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("child: %q %v", line, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "mem")); err != nil {
		t.Fatalf("child's mount: %v", err)
	}
	must(t, cmd.Process.Signal(syscall.SIGKILL))
	cmd.Wait()

	// (A stat may still be answered from the kernel's attribute cache.)
	_, err = os.ReadDir(dir)
	if !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("readdir of the dead mount: %v, want ENOTCONN", err)
	}
	if _, err := os.ReadFile(filepath.Join(dir, "mem")); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("read in the dead mount: %v, want ENOTCONN", err)
	}
	if !mountinfoHas(t, dir) {
		t.Fatal("the dead mount is not in mountinfo")
	}
	must(t, Cleanup(dir))
	if mountinfoHas(t, dir) {
		t.Fatal("still in mountinfo after Cleanup")
	}
	if _, err := os.ReadDir(dir); err != nil {
		t.Fatalf("dir after Cleanup: %v", err)
	}
	must(t, Cleanup(dir))
	// The folder can be mounted again.
	s, err := Mount(dir, []*Image{NewImage("x", 4096, nil)}, Options{StoreDir: t.TempDir()})
	must(t, err)
	must(t, s.Unmount())
}

// BenchmarkRead reads a 256 MiB image through the mount with sequential
// 1 MiB preads, everything arrived (from the store), dropping the page
// cache before each pass so that every read goes to the server.
func BenchmarkRead(b *testing.B) {
	const size = 256 * MiB
	im := NewImage("mem", size, nil)
	must(b, im.Expect(0, size))
	chunk := randBytes(11, MiB)
	for off := int64(0); off < size; off += MiB {
		must(b, im.Fill(off, chunk))
	}
	_, dir := mountT(b, []*Image{im}, Options{})
	f := openT(b, filepath.Join(dir, "mem"), os.O_RDONLY)
	buf := make([]byte, MiB)
	b.SetBytes(MiB)
	b.ResetTimer()
	off := int64(size)
	for i := 0; i < b.N; i++ {
		if off == size {
			b.StopTimer()
			must(b, fadviseDontNeed(f))
			off = 0
			b.StartTimer()
		}
		if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
			b.Fatal(err)
		}
		off += MiB
	}
}

func fadviseDontNeed(f *os.File) error {
	const posixFadvDontneed = 4
	_, _, e := syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), 0, 0, posixFadvDontneed, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// TestManyWaiting: reads waiting for expected data hold the kernel's
// asynchronous (readahead) request slots; reads of the base must still go
// through.
func TestManyWaiting(t *testing.T) {
	const size = 128 * MiB
	const waiting = 40
	im := NewImage("disk", size, nil)
	for i := range int64(waiting) {
		must(t, im.Expect(i*2*MiB+MiB, 4096))
	}
	_, dir := mountT(t, []*Image{im}, Options{})
	f := openT(t, filepath.Join(dir, "disk"), os.O_RDONLY)
	var chs []<-chan readResult
	for i := range int64(waiting) {
		chs = append(chs, readAsync(f, i*2*MiB+MiB, 4096))
	}
	stillBlocked(t, chs[0], "read of an expected page")
	readNow(t, f, 100*MiB, 4096)
	for i := range int64(waiting) {
		must(t, im.Fill(i*2*MiB+MiB, make([]byte, 4096)))
	}
	for _, ch := range chs {
		if r := wait(t, ch, "read of a filled page"); r.err != nil {
			t.Fatal(r.err)
		}
	}
}

// TestInterrupt: a read waiting for expected data returns EINTR when the
// kernel interrupts it; for a page fault the kernel then faults again
// instead of raising SIGBUS.
func TestInterrupt(t *testing.T) {
	im := NewImage("mem", 8*MiB, nil)
	must(t, im.Expect(4*MiB, 4096))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if errno := im.readAt(ctx, make([]byte, 4096), 4*MiB, true); errno != syscall.EINTR {
		t.Fatalf("interrupted read: %v, want EINTR", errno)
	}

	_, dir := mountT(t, []*Image{im}, Options{})
	// Without readahead (MADV_RANDOM) a fault reads its page
	// synchronously, and that request is interrupted by every signal the
	// thread gets: the helper's Go runtime preempts the goroutine stuck
	// in the fault with SIGURG every 10 ms or so.
	mp := startMapper(t, filepath.Join(dir, "mem"), "random")
	ch := mp.touch(4*MiB + 1)
	select {
	case l := <-ch:
		t.Fatalf("touch of an expected page returned before its data arrived: %q", l)
	case <-time.After(300 * time.Millisecond):
	}
	must(t, im.Fill(4*MiB, bytes.Repeat([]byte{0x5a}, 4096)))
	if v := parseLoad(t, wait(t, ch, "touch of a filled page"), 4*MiB+1); v != 0x5a {
		t.Fatal("mapped page differs from what was filled")
	}
}

// TestServerAccesses: first reads of two images merge in the order they
// happened; ReadAt (for the serving process) reads arrived data and the
// base, refuses pending ranges, and is not counted as an access.
func TestServerAccesses(t *testing.T) {
	const size = 1 * MiB
	baseData := randBytes(7, size)
	a := NewImage("a", size, baseFile(t, baseData))
	b := NewImage("b", size, nil)
	must(t, a.Expect(64*1024, 4096))
	srv, dir := mountT(t, []*Image{a, b}, Options{MaxReadAhead: 4096})
	fa := openT(t, filepath.Join(dir, "a"), os.O_RDONLY)
	fb := openT(t, filepath.Join(dir, "b"), os.O_RDONLY)
	readNow(t, fb, 8192, 4096)
	readNow(t, fa, 0, 4096)
	readNow(t, fb, 0, 4096)

	p := make([]byte, 8192)
	if _, err := a.ReadAt(p, 60*1024); err == nil || !strings.Contains(err.Error(), "not arrived") {
		t.Fatalf("ReadAt of a pending range: %v", err)
	}
	data := randBytes(8, 4096)
	must(t, a.Fill(64*1024, data))
	if _, err := a.ReadAt(p, 60*1024); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p[:4096], baseData[60*1024:64*1024]) || !bytes.Equal(p[4096:], data) {
		t.Fatal("ReadAt: wrong bytes (want the base, then the arrived data)")
	}
	got := srv.Accesses()
	want := []Access{{"b", 8192, 4096}, {"a", 0, 4096}, {"b", 0, 4096}}
	if !slices.Equal(got, want) {
		t.Fatalf("Accesses = %v, want %v (ReadAt must not count)", got, want)
	}
}

// TestChildrenDoNotInheritConnection: a process started after Mount (QEMU)
// must not hold the FUSE connection, or it would keep it alive after this
// process died and hang on it.
func TestChildrenDoNotInheritConnection(t *testing.T) {
	mountT(t, []*Image{NewImage("a", 4096, nil)}, Options{})
	out, err := exec.Command("ls", "-l", "/proc/self/fd/").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child inherited /dev/fuse: %s", out)
	}
}
