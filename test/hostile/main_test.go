package hostile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/sign"
)

// binDir holds the tools TestMain built.
var binDir string

var tools = []string{"overlay-apply", "overlay-pack", "cloudlet-base"}

func TestMain(m *testing.M) {
	code := func() int {
		d, err := guesttest.BuildTools("clhostile-bin-", tools...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(d)
		binDir = d
		defer closeFixtures()
		return m.Run()
	}()
	os.Exit(code)
}

// Memory of the synthetic bases (sparse files: they cost little but
// hashing): the tests' holds 4*smallZeroFrom ranges, the benchmark's
// LargeRanges.
const (
	testMem  = 384 << 20
	benchMem = 1536 << 20
)

// fixture is what the tests or benchmarks share: a synthetic base made
// without QEMU, its catalog, and a trusted key.
type fixture struct {
	mem     uint64 // the base's memory
	work    string // everything lives below it
	baseDir string
	catalog string
	trusted string // folder holding the trusted key's .pub
	keyID   string
	base    *Base
	err     error
}

// fixtures are made on first use, one per memory size, and removed by
// TestMain.
var fixtures struct {
	sync.Mutex
	m map[uint64]*fixture
}

func closeFixtures() {
	fixtures.Lock()
	defer fixtures.Unlock()
	for _, f := range fixtures.m {
		if f.work != "" {
			os.RemoveAll(f.work)
		}
	}
}

// getFixture returns the fixture whose base has mem bytes of memory.
func getFixture(tb testing.TB, mem uint64) *fixture {
	tb.Helper()
	fixtures.Lock()
	defer fixtures.Unlock()
	f := fixtures.m[mem]
	if f == nil {
		if fixtures.m == nil {
			fixtures.m = map[uint64]*fixture{}
		}
		f = &fixture{mem: mem}
		fixtures.m[mem] = f
		start := time.Now()
		f.err = f.setup()
		tb.Logf("fixture: synthetic base of %d MiB of memory made in %v (err %v)", mem>>20, time.Since(start).Round(time.Millisecond), f.err)
	}
	if f.err != nil {
		tb.Fatalf("fixture: %v", f.err)
	}
	return f
}

func (f *fixture) setup() error {
	w, err := os.MkdirTemp("", "clhostile-")
	if err != nil {
		return err
	}
	f.work = w
	f.catalog = filepath.Join(w, "catalog.json")
	f.baseDir = filepath.Join(w, "base")
	for _, d := range []string{"kit", "keys", "runs", "case"} {
		if err := os.MkdirAll(filepath.Join(w, d), 0o755); err != nil {
			return err
		}
	}
	kernel := filepath.Join(w, "kit", base.KernelFile)
	if err := os.WriteFile(kernel, bytes.Repeat([]byte("not really a kernel "), 3000), 0o644); err != nil {
		return err
	}
	kSum, err := base.FileSHA256(kernel)
	if err != nil {
		return err
	}
	full, img, err := fullStream(w, f.mem, kSum)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := f.runTool(bytes.NewReader(full), &out, "cloudlet-base", "create", "--image", img, "--kernel", kernel, "--name", "hostile", f.baseDir); err != nil {
		return err
	}
	if f.base, err = LoadBase(f.baseDir); err != nil {
		return err
	}
	k, err := sign.Generate(nil)
	if err != nil {
		return err
	}
	f.trusted, f.keyID = filepath.Join(w, "keys"), k.ID
	return os.WriteFile(filepath.Join(f.trusted, "hostile.pub"), k.Public().MarshalPublic(), 0o644)
}

// fullStream writes dir/image.raw (2 MiB, data and a hole) and returns a
// full stream of a VM with mem bytes of memory on it (a few pages of
// data, the rest zero), booted with the kernel of sha256 kernel, and the
// image's path: what cloudlet-base create makes a base of, as
// vm-capture's output would be.
func fullStream(dir string, mem uint64, kernel string) ([]byte, string, error) {
	r := rand.New(rand.NewSource(7))
	img := filepath.Join(dir, "image.raw")
	data := make([]byte, 256<<10)
	r.Read(data)
	if err := os.WriteFile(img, data, 0o644); err != nil {
		return nil, "", err
	}
	if err := os.Truncate(img, 2<<20); err != nil {
		return nil, "", err
	}
	imgSum, err := base.FileSHA256(img)
	if err != nil {
		return nil, "", err
	}
	var s bytes.Buffer
	w := format.NewWriter(&s)
	vmd := format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: mem, DiskSize: 2 << 20, DiskFormat: "raw",
		DiskBase: imgSum, Kernel: kernel, RAMBlocks: []format.RAMBlock{{ID: "mem", Size: mem}}}
	page := make([]byte, 3*format.PageSize)
	r.Read(page)
	err = errors.Join(
		w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vmd, Producer: []string{"test/hostile"}}),
		w.WriteDevState([]byte("QEVM device state")),
		w.WriteMem(16*format.PageSize, page),
		w.WriteDisk(1<<20, page),
		w.Close())
	return s.Bytes(), img, err
}

// signer is the key ID a signed input names (the fixture's trusted key),
// or "" for an unsigned one.
func (f *fixture) signer(signed bool) string {
	if signed {
		return f.keyID
	}
	return ""
}

// env is the tools' environment: a private TMPDIR, the fixture's catalog
// and run root.
func (f *fixture) env(tmp string) []string {
	return append(os.Environ(), "TMPDIR="+tmp, "CLOUDLET_CATALOG="+f.catalog, "CLOUDLET_RUN_DIR="+filepath.Join(f.work, "runs"))
}

// runTool runs one tool to completion (setup steps).
func (f *fixture) runTool(stdin io.Reader, stdout io.Writer, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	c.Env = f.env(os.TempDir())
	var errb bytes.Buffer
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, &errb
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return nil
}

// newCase makes a case folder below the fixture with a private TMPDIR
// (tmp) and a target folder (target) for the tool to write into.
func (f *fixture) newCase(tb testing.TB) (tmp, target string) {
	tb.Helper()
	d, err := os.MkdirTemp(filepath.Join(f.work, "case"), "")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(d) })
	tmp, target = filepath.Join(d, "tmp"), filepath.Join(d, "target")
	for _, x := range []string{tmp, target} {
		if err := os.Mkdir(x, 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	return tmp, target
}

// result is what one run of a tool cost.
type result struct {
	Code     int           // exit status (-1: did not run or was killed)
	Stderr   string        // what it said
	CPU      time.Duration // user + system time of the process
	Wall     time.Duration
	PeakDisk int64 // bytes of blocks the watched folders (and deleted files it held open) had at most
	Out      int64 // bytes it wrote on stdout
	TimedOut bool  // killed at the context's deadline
}

// String sums r up for the test log.
func (r *result) String() string {
	return fmt.Sprintf("exit %d, cpu %.3fs, wall %.3fs, peak disk %.1f MiB, stdout %.1f MiB; %s",
		r.Code, r.CPU.Seconds(), r.Wall.Seconds(), float64(r.PeakDisk)/(1<<20), float64(r.Out)/(1<<20), firstLine(r.Stderr))
}

// measure runs tool with args and in on stdin, counting its stdout, and
// samples every 20 ms the blocks of the files below watch and of the
// deleted files the process holds open.
func (f *fixture) measure(ctx context.Context, tmp string, in []byte, watch []string, tool string, args ...string) (*result, error) {
	c := exec.CommandContext(ctx, filepath.Join(binDir, tool), args...)
	c.Env = f.env(tmp)
	c.WaitDelay = 10 * time.Second
	var out countWriter
	var errb bytes.Buffer
	c.Stdin, c.Stdout, c.Stderr = bytes.NewReader(in), &out, &errb
	start := time.Now()
	if err := c.Start(); err != nil {
		return nil, err
	}
	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			peak = max(peak, diskUsage(watch, c.Process.Pid))
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	err := c.Wait()
	close(stop)
	<-sampled
	r := &result{Code: -1, Stderr: errb.String(), Wall: time.Since(start), Out: out.n, TimedOut: ctx.Err() != nil}
	r.PeakDisk = max(peak, diskUsage(watch, 0))
	if st := c.ProcessState; st != nil {
		r.CPU = st.UserTime() + st.SystemTime()
		r.Code = st.ExitCode()
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		return r, err
	}
	return r, nil
}

// countWriter counts and drops what is written to it.
type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

// diskUsage returns the bytes of blocks allocated to the regular files
// below dirs and, for pid > 0, to the deleted files pid holds open (the
// scratch files tools unlink as soon as they make them), each file
// counted once.
func diskUsage(dirs []string, pid int) int64 {
	seen := map[[2]uint64]bool{}
	var total int64
	add := func(st *syscall.Stat_t) {
		k := [2]uint64{st.Dev, st.Ino}
		if st.Mode&syscall.S_IFMT == syscall.S_IFREG && !seen[k] {
			seen[k] = true
			total += st.Blocks * 512
		}
	}
	for _, d := range dirs {
		filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				var st syscall.Stat_t
				if syscall.Lstat(p, &st) == nil {
					add(&st)
				}
			}
			return nil // files come and go while the tool runs
		})
	}
	if pid > 0 {
		fds := fmt.Sprintf("/proc/%d/fd", pid)
		ents, _ := os.ReadDir(fds)
		for _, e := range ents {
			p := filepath.Join(fds, e.Name())
			if l, err := os.Readlink(p); err == nil && strings.HasSuffix(l, " (deleted)") {
				var st syscall.Stat_t
				if syscall.Stat(p, &st) == nil {
					add(&st)
				}
			}
		}
	}
	return total
}

// entries lists what is left in dir.
func entries(dir string) []string {
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 400 {
		s = s[:400] + "..."
	}
	return s
}
