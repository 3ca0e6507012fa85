package resume

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/capture"
	"cloudlet/lib/console"
	"cloudlet/lib/diff"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/instance"
	"cloudlet/lib/vm"
)

func TestMain(m *testing.M) { os.Exit(guesttest.Main(m)) }

// vmT is a running instance with its console, stopped at test end.
type vmT struct {
	t    testing.TB
	info *instance.Info
	con  *console.Console
}

func attach(t testing.TB, info *instance.Info, fresh bool) *vmT {
	t.Helper()
	t.Cleanup(func() { Stop(context.Background(), info.RunDir) })
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	con, err := console.Dial(ctx, info.Serial)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { con.Close() })
	if fresh {
		if err := con.WaitFor(ctx, guesttest.ReadyMarker); err != nil {
			t.Fatalf("guest not ready: %v\n%s", err, con.Tail(2000))
		}
	}
	return &vmT{t, info, con}
}

func (v *vmT) run(cmd string) string {
	v.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, code, err := v.con.Run(ctx, cmd)
	if err != nil || code != 0 {
		v.t.Fatalf("guest %q: exit %d, %v\n%s", cmd, code, err, out)
	}
	return strings.TrimSpace(out)
}

func runDir(t testing.TB, name string) string {
	d, err := os.MkdirTemp("", "cl-"+name+"-")
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(d) // resume creates it
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func launch(t testing.TB, kit guesttest.GuestKit, port int) *vmT {
	return launchOpt(t, kit, 256, []vm.Forward{{Proto: "tcp", HostPort: port, GuestPort: 80}}, guesttest.DefaultAppend)
}

func launchMem(t testing.TB, kit guesttest.GuestKit, memMiB int) *vmT {
	return launchOpt(t, kit, memMiB, nil, guesttest.DefaultAppend)
}

func launchOpt(t testing.TB, kit guesttest.GuestKit, memMiB int, fwd []vm.Forward, appendLine string) *vmT {
	info, err := Launch(context.Background(), LaunchOptions{
		Options: Options{Name: "t", RunDir: runDir(t, "l"), Accel: os.Getenv("CLOUDLET_ACCEL"), Forwards: fwd},
		Image:   kit.Rootfs, Kernel: kit.Kernel, Initrd: kit.Initrd, Append: appendLine, MemMiB: memMiB,
	})
	if err != nil {
		t.Fatal(err)
	}
	return attach(t, info, true)
}

// captureTo runs a capture into a pipe and returns its reader.
func captureTo(t testing.TB, info *instance.Info, after capture.After) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		w := format.NewWriter(pw)
		_, err := capture.Capture(context.Background(), capture.Options{Instance: info, After: after, Stage: "vm-capture"}, w)
		if err != nil {
			w.WriteError("vm-capture", err.Error())
		}
		pw.CloseWithError(err)
	}()
	return pr
}

func counter(v *vmT) int {
	n, err := strconv.Atoi(v.run("cat /run/counter"))
	if err != nil {
		v.t.Fatal(err)
	}
	return n
}

func get(t *testing.T, port int) string {
	t.Helper()
	var last error
	for i := 0; i < 50; i++ {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return string(b)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("page through forwarded port %d: %v", port, last)
	return ""
}

// prepare starts the counter and the web server and writes files and memory.
func prepare(v *vmT, seed int) (files, mem string) {
	v.run("clwork counter --file /run/counter &")
	v.run("clwork serve >/dev/null 2>&1 &")
	files = v.run(fmt.Sprintf("clwork writefiles --mib 2 --dir /root/data%d --seed %d && sync", seed, seed))
	mem = v.run(fmt.Sprintf("clwork fillmem --mib 8 --seed %d", seed))
	time.Sleep(500 * time.Millisecond)
	return files, mem
}

func check(t *testing.T, v *vmT, seed int, files, mem string, before int, port int) {
	t.Helper()
	v.con.Send("\n")
	after := counter(v)
	time.Sleep(400 * time.Millisecond)
	later := counter(v)
	if after < before || later <= after {
		t.Errorf("counter %d before capture, %d then %d after resume; want it to carry on rising from %d", before, after, later, before)
	}
	paths := []string{}
	for _, l := range strings.Split(files, "\n") {
		if f := strings.Fields(l); len(f) == 2 {
			paths = append(paths, f[1])
		}
	}
	if got := v.run("clwork checksum " + strings.Join(paths, " ")); got != files {
		t.Errorf("files after resume:\n%s\nwant\n%s", got, files)
	}
	mf := strings.Fields(mem)
	if got := v.run("clwork checksum " + mf[1]); got != mem {
		t.Errorf("memory data after resume: %s; want %s", got, mem)
	}
	if page := get(t, port); !strings.Contains(page, "<") {
		t.Errorf("page through the forwarded port = %q", page)
	}
}

// Test 1: capture | resume of a full stream.
func TestCaptureResumeFull(t *testing.T) {
	kit := guesttest.Kit(t)
	p1, p2 := guesttest.FreePort(t), guesttest.FreePort(t)
	v := launch(t, kit, p1)
	files, mem := prepare(v, 1)
	before := counter(v)
	stream := captureTo(t, v.info, capture.Quit)
	info, err := FromStream(context.Background(), format.NewReader(stream), StreamOptions{
		Options: Options{Name: "t", RunDir: runDir(t, "r"), Accel: os.Getenv("CLOUDLET_ACCEL"), Forwards: []vm.Forward{{Proto: "tcp", HostPort: p2, GuestPort: 80}}},
		Images:  []string{kit.Rootfs}, KitDirs: []string{kit.Dir},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("resume timings: %v", info.Timings)
	check(t, attach(t, info, false), 1, files, mem, before, p2)
	if info.Resumed != "full" || !info.MemShared {
		t.Errorf("resumed instance = %+v; want a full resume into a shared RAM file", info)
	}
}

// makeBase launches the kit guest and captures it into a base folder.
func makeBase(t testing.TB, kit guesttest.GuestKit) string {
	return makeBaseAppend(t, kit, guesttest.DefaultAppend)
}

// makeBaseAppend makes a base whose guest booted with kernel command line
// appendLine.
func makeBaseAppend(t testing.TB, kit guesttest.GuestKit, appendLine string) string {
	v := launchOpt(t, kit, 256, nil, appendLine)
	v.run("sync")
	dir := filepath.Join(t.TempDir(), "base")
	if _, err := base.Create(dir, format.NewReader(captureTo(t, v.info, capture.Quit)),
		base.CreateOptions{Name: "kit", Image: kit.Rootfs, KitDirs: []string{kit.Dir}}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Test 2: resume a base, change the guest, capture, diff, resume relative
// to the base; the base is unchanged.
func TestRelativeResume(t *testing.T) {
	kit := guesttest.Kit(t)
	bdir := makeBase(t, kit)
	b, err := base.Open(bdir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	p1, p2 := guesttest.FreePort(t), guesttest.FreePort(t)
	so := StreamOptions{Options: Options{Name: "t", RunDir: runDir(t, "b"), Accel: os.Getenv("CLOUDLET_ACCEL"), Forwards: []vm.Forward{{Proto: "tcp", HostPort: p1, GuestPort: 80}}}, KitDirs: []string{kit.Dir}}
	info, err := FromBase(context.Background(), bdir, so)
	if err != nil {
		t.Fatal(err)
	}
	v := attach(t, info, false)
	v.con.Send("\n")
	files, mem := prepare(v, 2)
	before := counter(v)

	// capture -> mem-diff -> disk-diff (raw pages only: no copies to resolve)
	stream := captureTo(t, info, capture.Quit)
	var d1, d2 bytes.Buffer
	open := func(string) (*base.Base, error) { return base.Open(bdir) }
	opt := diff.Options{NoDedup: true}
	w := format.NewWriter(&d1)
	if _, err := diff.Run(format.NewReader(stream), w, diff.Config{Stage: "mem-diff", Space: format.SpaceMem, Options: opt, Open: open}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	w = format.NewWriter(&d2)
	st, err := diff.Run(format.NewReader(&d1), w, diff.Config{Stage: "disk-diff", Space: format.SpaceDisk, Options: opt, Open: open})
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Logf("diff stream %d bytes (disk: %+v)", d2.Len(), st)

	so.BaseDir, so.RunDir, so.Forwards = bdir, runDir(t, "r"), []vm.Forward{{Proto: "tcp", HostPort: p2, GuestPort: 80}}
	raw := bytes.Clone(d2.Bytes())
	info2, err := FromStream(context.Background(), format.NewReader(&d2), so)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relative resume timings: %v", info2.Timings)
	check(t, attach(t, info2, false), 2, files, mem, before, p2)

	// The same stream with its memory before the device state: vm-resume
	// spools what the feeder cannot take yet and the guest is as right.
	p3 := guesttest.FreePort(t)
	so.RunDir, so.Forwards = runDir(t, "o"), []vm.Forward{{Proto: "tcp", HostPort: p3, GuestPort: 80}}
	info3, err := FromStream(context.Background(), format.NewReader(memoryFirst(t, raw)), so)
	if err != nil {
		t.Fatal(err)
	}
	check(t, attach(t, info3, false), 2, files, mem, before, p3)
	if err := b.Verify(); err != nil {
		t.Errorf("base changed: %v", err)
	}
}

// memoryFirst rewrites a stream with its memory records first, then the
// device state, then the rest.
func memoryFirst(t *testing.T, stream []byte) io.Reader {
	t.Helper()
	r := format.NewReader(bytes.NewReader(stream))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	var mem, dev, rest []format.Record
	nmem := 0
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		c := *rec
		c.Payload = bytes.Clone(rec.Payload)
		switch rec.Type {
		case format.TypeMem, format.TypeMemZero:
			mem = append(mem, c)
			nmem++
		case format.TypeDevState:
			dev = append(dev, c)
		default:
			rest = append(rest, c)
		}
	}
	if nmem == 0 || len(dev) == 0 {
		t.Fatalf("stream has %d memory and %d DEVSTATE records; the test needs both", nmem, len(dev))
	}
	var out bytes.Buffer
	w := format.NewWriter(&out)
	if err := w.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	for _, list := range [][]format.Record{mem, dev, rest} {
		for i := range list {
			if err := w.WriteRecord(&list[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return &out
}

// Test 3: a QEMU started by hand with plain RAM (no memory file) is
// captured through the RAM-section parser, and the stream resumes.
func TestCaptureForeignVM(t *testing.T) {
	kit := guesttest.Kit(t)
	dir := runDir(t, "f")
	top := filepath.Join(t.TempDir(), "top.qcow2")
	in, err := vm.Start(context.Background(), vm.Config{
		Name: "foreign", RunDir: dir, MemMiB: 256, MemPlain: true, Accel: os.Getenv("CLOUDLET_ACCEL"),
		Kernel: kit.Kernel, Initrd: kit.Initrd, Append: guesttest.DefaultAppend,
		Disk: top, BaseDisk: kit.Rootfs, Net: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Stop(context.Background()) })
	v := attach(t, &instance.Info{Summary: instance.Summary{RunDir: dir, Serial: in.SerialPath()}}, true)
	v.run("clwork counter --file /run/counter &")
	mem := v.run("clwork fillmem --mib 4 --seed 3")
	files := v.run("clwork writefiles --mib 1 --dir /root/f --seed 3 && sync")
	time.Sleep(300 * time.Millisecond)
	before := counter(v)

	pr, pw := io.Pipe()
	go func() {
		w := format.NewWriter(pw)
		_, err := capture.Capture(context.Background(), capture.Options{QMP: in.QMPPath(), Disk: top, After: capture.Quit}, w)
		if err != nil {
			w.WriteError("vm-capture", err.Error())
		}
		pw.CloseWithError(err)
	}()
	info, err := FromStream(context.Background(), format.NewReader(pr), StreamOptions{
		Options: Options{Name: "t", RunDir: runDir(t, "r"), Accel: os.Getenv("CLOUDLET_ACCEL")},
		Images:  []string{kit.Rootfs}, KitDirs: []string{kit.Dir},
	})
	if err != nil {
		t.Fatal(err)
	}
	v2 := attach(t, info, false)
	v2.con.Send("\n")
	if after := counter(v2); after < before {
		t.Errorf("counter %d after resume; was %d before capture", after, before)
	}
	if got := v2.run("clwork checksum " + strings.Fields(mem)[1]); got != mem {
		t.Errorf("memory data after resume = %q; want %q", got, mem)
	}
	var paths []string
	for _, l := range strings.Split(files, "\n") {
		paths = append(paths, strings.Fields(l)[1])
	}
	if got := v2.run("clwork checksum " + strings.Join(paths, " ")); got != files {
		t.Errorf("files after resume:\n%s\nwant\n%s", got, files)
	}
}

// rewrite copies a stream with its header changed by fn.
func rewrite(t *testing.T, in []byte, fn func(*format.Header)) []byte {
	r := format.NewReader(bytes.NewReader(in))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	fn(h)
	var out bytes.Buffer
	w := format.NewWriter(&out)
	if err := w.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		w.WriteRecord(rec)
	}
	w.Close()
	return out.Bytes()
}

// Test 4: bad input gives a clear error, leaves no QEMU and no run folder.
func TestBadStreams(t *testing.T) {
	kit := guesttest.Kit(t)
	v := launch(t, kit, guesttest.FreePort(t))
	full, err := io.ReadAll(captureTo(t, v.info, capture.Quit))
	if err != nil {
		t.Fatal(err)
	}
	flipped := bytes.Clone(full)
	flipped[len(flipped)/2] ^= 0x10
	cases := []struct {
		name   string
		stream []byte
		want   string
	}{
		{"truncated", full[:len(full)*3/5], "unexpected EOF"},
		{"corrupt", flipped, "checksum"},
		{"ram size", rewrite(t, full, func(h *format.Header) {
			h.VM.MemSize *= 2
			h.VM.RAMBlocks[0].Size *= 2
		}), "refused the device state"},
		{"missing base", rewrite(t, full, func(h *format.Header) {
			h.Kind, h.MemRelative, h.BaseID = format.KindDiff, true, strings.Repeat("ab", 32)
		}), "abababab"},
		{"empty", nil, "unexpected EOF"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := runDir(t, "bad")
			_, err := FromStream(context.Background(), format.NewReader(bytes.NewReader(tc.stream)), StreamOptions{
				Options: Options{Name: "t", RunDir: dir, Accel: os.Getenv("CLOUDLET_ACCEL")},
				Images:  []string{kit.Rootfs}, KitDirs: []string{kit.Dir}, Catalog: filepath.Join(t.TempDir(), "catalog.json"),
			})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FromStream = %v; want an error mentioning %q", err, tc.want)
			}
			if _, serr := os.Stat(dir); serr == nil {
				t.Errorf("run folder %s left behind", dir)
			}
			if out, _ := exec.Command("pgrep", "-f", dir).Output(); len(out) > 0 {
				t.Errorf("processes left running for %s: %s", dir, out)
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
}
