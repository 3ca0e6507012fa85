// Package faults is the fault campaign of issue 9: damaged overlays and
// killed pipeline stages against the real tools (built in TestMain) and
// the real guest. Nothing may resume a wrong VM, change a base, or leave
// a run folder, a temporary file or a QEMU process behind.
//
//	CI=true go test -v ./test/faults               # seed 20261124
//	go test -v ./test/faults -faults.seed 7          # or CLOUDLET_FAULT_SEED=7
package faults

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/guesttest"
)

var seedFlag = flag.Uint64("faults.seed", 0, "seed of the fault campaign (default $CLOUDLET_FAULT_SEED or 20261124)")

func seed() uint64 {
	if *seedFlag != 0 {
		return *seedFlag
	}
	if s, err := strconv.ParseUint(os.Getenv("CLOUDLET_FAULT_SEED"), 10, 64); err == nil && s != 0 {
		return s
	}
	return 20261124
}

var binDir string // the built tools

var tools = []string{"vm-resume", "vm-capture", "vm-console", "mem-diff", "disk-diff", "overlay-pack", "overlay-apply", "cloudlet-base", "overlay-keygen"}

func TestMain(m *testing.M) {
	flag.Parse()
	code := func() int {
		d, err := guesttest.BuildTools("clfault-bin-", tools...)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(d)
		binDir = d
		code := m.Run()
		if fx != nil {
			fx.close()
		}
		return code
	}()
	os.Exit(code)
}

// fixture is what the campaign shares: two bases and a real overlay of
// the reference workload against the first.
type fixture struct {
	kit     guesttest.GuestKit
	work    string // everything lives below it; QEMU command lines name it
	baseA   string // the overlay's base
	baseB   string // another base (one memory page differs)
	full1   string // full capture of the changed VM
	diff    string // mem-diff | disk-diff of it
	ovPath  string
	ov      []byte
	stat    map[string]string // base A files: size and mtime
	err     error
	cleanup []func()
}

var (
	fx     *fixture
	fxOnce sync.Once
)

func (f *fixture) close() {
	for i := len(f.cleanup) - 1; i >= 0; i-- {
		f.cleanup[i]()
	}
	if f.work != "" {
		if out, _ := exec.Command("pgrep", "-f", f.work).Output(); len(bytes.TrimSpace(out)) > 0 {
			fmt.Fprintf(os.Stderr, "faults: processes left under %s: %s\n", f.work, out)
		}
		os.RemoveAll(f.work)
	}
}

// env is the environment of the tools: a private TMPDIR (checked for
// leftovers) and catalog.
func (f *fixture) env(tmp string) []string {
	return append(os.Environ(), "TMPDIR="+tmp, "CLOUDLET_CATALOG="+filepath.Join(f.work, "catalog.json"),
		"CLOUDLET_RUN_DIR="+filepath.Join(f.work, "runs"))
}

func (f *fixture) cmd(ctx context.Context, tmp, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	c.Env = f.env(tmp)
	c.WaitDelay = 10 * time.Second
	return c
}

// run runs one tool to completion and fails the setup on error.
func (f *fixture) run(stdin io.Reader, stdout io.Writer, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := f.cmd(ctx, os.TempDir(), name, args...)
	var errb bytes.Buffer
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, &errb
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return nil
}

func (f *fixture) runFile(in, out string, name string, args ...string) error {
	var r io.Reader = bytes.NewReader(nil)
	if in != "" {
		fi, err := os.Open(in)
		if err != nil {
			return err
		}
		defer fi.Close()
		r = fi
	}
	fo, err := os.Create(out)
	if err != nil {
		return err
	}
	defer fo.Close()
	return f.run(r, fo, name, args...)
}

// resumeBase resumes base A into run folder dir (not waiting for the guest).
func (f *fixture) resumeBase(dir string) error {
	var st bytes.Buffer
	if err := f.run(nil, &st, "cloudlet-base", "stream", f.baseA); err != nil {
		return err
	}
	return f.run(&st, io.Discard, "vm-resume", "--base", f.baseA, "--kit", f.kit.Dir, "--run-dir", dir, "--name", "clfault",
		"--accel", accel())
}

func accel() string {
	if a := os.Getenv("CLOUDLET_ACCEL"); a != "" {
		return a
	}
	return "auto"
}

func (f *fixture) stop(dir string) {
	f.run(nil, io.Discard, "vm-resume", "stop", dir)
}

func getFixture(t *testing.T) *fixture {
	t.Helper()
	kit := guesttest.Kit(t)
	fxOnce.Do(func() {
		start := time.Now()
		fx = &fixture{kit: kit}
		fx.err = fx.setup()
		t.Logf("fixture: %v (err %v)", time.Since(start).Round(time.Second), fx.err)
	})
	if fx.err != nil {
		t.Fatalf("fixture: %v", fx.err)
	}
	return fx
}

func (f *fixture) setup() error {
	w, err := os.MkdirTemp("", "clfault-")
	if err != nil {
		return err
	}
	f.work = w
	for _, d := range []string{"runs", "case"} {
		os.MkdirAll(filepath.Join(w, d), 0o755)
	}
	p := func(n string) string { return filepath.Join(w, n) }
	// Base A: the kit guest booted and captured.
	r0 := p("r0")
	if err := f.run(nil, io.Discard, "vm-resume", "launch", "--kit", f.kit.Dir, "--name", "clfault", "--run-dir", r0, "--accel", accel()); err != nil {
		return err
	}
	f.cleanup = append(f.cleanup, func() { f.stop(r0) })
	if err := f.run(nil, io.Discard, "vm-console", "--wait-ready", r0, "sync"); err != nil {
		return err
	}
	if err := f.runFile("", p("full0"), "vm-capture", "--run", r0, "--quit"); err != nil {
		return err
	}
	f.baseA, f.baseB = p("baseA"), p("baseB")
	create := func(stream, dir string) error {
		return f.runFile(stream, p("create.out"), "cloudlet-base", "create", "--image", f.kit.Rootfs, "--kit", f.kit.Dir, "--name", filepath.Base(dir), dir)
	}
	if err := create(p("full0"), f.baseA); err != nil {
		return err
	}
	// Base B: the same capture with one memory page changed.
	if err := alterPage(p("full0"), p("full0b")); err != nil {
		return err
	}
	if err := create(p("full0b"), f.baseB); err != nil {
		return err
	}
	os.Remove(p("full0"))
	os.Remove(p("full0b"))
	// The reference workload on a VM resumed from base A.
	r1 := p("r1")
	if err := f.resumeBase(r1); err != nil {
		return err
	}
	f.cleanup = append(f.cleanup, func() { f.stop(r1) })
	if err := f.run(nil, io.Discard, "vm-console", r1,
		"clwork counter --file /run/counter & clwork serve >/dev/null 2>&1 & clwork writefiles --mib 2 --dir /root/data --seed 9 && clwork fillmem --mib 4 --seed 9 && sync"); err != nil {
		return err
	}
	f.full1, f.diff, f.ovPath = p("full1"), p("diff"), p("app.overlay")
	if err := f.runFile("", f.full1, "vm-capture", "--run", r1, "--quit"); err != nil {
		return err
	}
	if err := f.runFile(f.full1, p("diff1"), "mem-diff", "--base", f.baseA); err != nil {
		return err
	}
	if err := f.runFile(p("diff1"), f.diff, "disk-diff", "--base", f.baseA); err != nil {
		return err
	}
	if err := f.runFile(f.diff, f.ovPath, "overlay-pack", "--segment-size", "262144"); err != nil {
		return err
	}
	if f.ov, err = os.ReadFile(f.ovPath); err != nil {
		return err
	}
	f.stat, err = statDir(f.baseA)
	return err
}

// alterPage copies a full stream, changing one byte of its first MEM page.
func alterPage(in, out string) error {
	b, err := os.ReadFile(in)
	if err != nil {
		return err
	}
	r := format.NewReader(bytes.NewReader(b))
	h, err := r.Header()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	w.WriteHeader(h)
	done := false
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if rec.Type == format.TypeMem && !done {
			rec.Payload[8] ^= 0x5a
			done = true
		}
		if err := w.WriteRecord(rec); err != nil {
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.WriteFile(out, buf.Bytes(), 0o644)
}

// statDir records size and modification time of every file in dir.
func statDir(dir string) (map[string]string, error) {
	m := map[string]string{}
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		m[p] = fmt.Sprintf("%d %d.%d %d.%d", fi.Size(), st.Mtim.Sec, st.Mtim.Nsec, st.Ctim.Sec, st.Ctim.Nsec)
		return nil
	})
	return m, err
}

// lost lists what a failed case left behind: the run folder, files in the
// private TMPDIR, QEMU processes naming the case folder, changes to base A.
func (f *fixture) lost(caseDir, run, tmp string) []string {
	var l []string
	if _, err := os.Stat(run); err == nil {
		ents, _ := os.ReadDir(run)
		names := []string{}
		for _, e := range ents {
			names = append(names, e.Name())
		}
		l = append(l, "run folder "+run+" left: "+strings.Join(names, " "))
	}
	if ents, _ := os.ReadDir(tmp); len(ents) > 0 {
		names := []string{}
		for _, e := range ents {
			names = append(names, e.Name())
		}
		l = append(l, "temporary files left in TMPDIR: "+strings.Join(names, " "))
	}
	if out, _ := exec.Command("pgrep", "-f", caseDir).Output(); len(bytes.TrimSpace(out)) > 0 {
		l = append(l, "process left running: pid "+strings.Join(strings.Fields(string(out)), " "))
		f.stop(run)
	}
	st, err := statDir(f.baseA)
	if err != nil {
		l = append(l, "base A: "+err.Error())
	} else {
		for k, v := range f.stat {
			if st[k] != v {
				l = append(l, fmt.Sprintf("base A file %s changed (%s -> %s)", k, v, st[k]))
			}
		}
		if len(st) != len(f.stat) {
			l = append(l, fmt.Sprintf("base A holds %d files, had %d", len(st), len(f.stat)))
		}
	}
	return l
}

var caseSeq struct {
	sync.Mutex
	n int
}

// newCase makes a case folder with a private TMPDIR; run is where
// vm-resume would put the VM.
func (f *fixture) newCase(t *testing.T) (dir, run, tmp string) {
	caseSeq.Lock()
	caseSeq.n++
	n := caseSeq.n
	caseSeq.Unlock()
	dir = filepath.Join(f.work, "case", strconv.Itoa(n))
	run, tmp = filepath.Join(dir, "run"), filepath.Join(dir, "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, run, tmp
}

// verifyBase re-hashes base A.
func (f *fixture) verifyBase(t *testing.T) {
	b, err := base.Open(f.baseA)
	if err != nil {
		t.Fatalf("base A: %v", err)
	}
	defer b.Close()
	if err := b.Verify(); err != nil {
		t.Errorf("base A changed: %v", err)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
