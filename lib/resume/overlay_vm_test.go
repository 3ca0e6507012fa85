package resume

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/capture"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/diff"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/instance"
	"cloudlet/lib/overlay"
	"cloudlet/lib/vm"
)

// stage runs one in-process pipeline stage from in to a buffer.
func stage(t testing.TB, name string, in io.Reader, fn func(r *format.Reader, w *format.Writer) error) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := cliutil.Filter(name, in, &out, fn); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out.Bytes()
}

// makeOverlay captures a VM resumed from bdir and turns it into an overlay:
// vm-capture | mem-diff | disk-diff | overlay-pack, with dedup and deltas.
func makeOverlay(t testing.TB, capt io.Reader, bdir, codec string) []byte {
	return packDiff(t, makeDiff(t, capt, bdir), overlay.PackOptions{Codec: codec})
}

// packDiff is overlay-pack.
func packDiff(t testing.TB, diff []byte, o overlay.PackOptions) []byte {
	return stage(t, "overlay-pack", bytes.NewReader(diff), func(r *format.Reader, w *format.Writer) error {
		return overlay.Pack(context.Background(), r, w, o)
	})
}

// makeDiff is mem-diff | disk-diff, with dedup and deltas.
func makeDiff(t testing.TB, capt io.Reader, bdir string) []byte {
	open := func(string) (*base.Base, error) { return base.Open(bdir) }
	opt := diff.Options{Delta: diff.DeltaXOR}
	d1 := stage(t, "mem-diff", capt, func(r *format.Reader, w *format.Writer) error {
		st, err := diff.Run(r, w, diff.Config{Stage: "mem-diff", Space: format.SpaceMem, Options: opt, Open: open})
		t.Logf("mem-diff: %+v", st)
		return err
	})
	d2 := stage(t, "disk-diff", bytes.NewReader(d1), func(r *format.Reader, w *format.Writer) error {
		st, err := diff.Run(r, w, diff.Config{Stage: "disk-diff", Space: format.SpaceDisk, Options: opt, Open: open})
		t.Logf("disk-diff: %+v", st)
		return err
	})
	return d2
}

func applyAndResume(ctx context.Context, ov []byte, bdir string, so StreamOptions) (string, error) {
	return applyAndResumeWith(ctx, ov, bdir, so, overlay.ApplyOptions{KeepCopies: true})
}

func applyAndResumeWith(ctx context.Context, ov []byte, bdir string, so StreamOptions, ao overlay.ApplyOptions) (string, error) {
	pr, pw := io.Pipe()
	go func() {
		err := cliutil.Filter("overlay-apply", bytes.NewReader(ov), pw, func(r *format.Reader, w *format.Writer) error {
			return overlay.Apply(ctx, r, w, func(id string) (overlay.Base, error) { return base.Locate(bdir, "", id) }, ao)
		})
		pw.CloseWithError(err)
	}()
	so.BaseDir = bdir
	info, err := FromStream(ctx, format.NewReader(pr), so)
	io.Copy(io.Discard, pr)
	if err != nil {
		return "", err
	}
	return info.RunDir, nil
}

// TestOverlayRoundTrip: capture -> diff -> pack -> apply -> resume on the
// real guest, per codec, with COPY records resolved by vm-resume (the
// default) or by overlay-apply, and pages written into QEMU's RAM (the
// default) or through the migration stream; then damaged overlays and a
// wrong base fail before any guest runs and leave the base unchanged and
// nothing behind.
func TestOverlayRoundTrip(t *testing.T) {
	kit := guesttest.Kit(t)
	c := customize(t, kit, 4)
	bdir, b, so, files, mem, before, full := c.bdir, c.b, c.so, c.files, c.mem, c.before, c.full
	overlays := map[string][]byte{}
	for _, codec := range []string{"zstd", "xz"} {
		overlays[codec] = makeOverlay(t, bytes.NewReader(full), bdir, codec)
		t.Logf("%s overlay: %d bytes (full capture %d bytes)", codec, len(overlays[codec]), len(full))
	}
	for _, v := range []struct {
		codec, memWrite string
		keepCopies      bool
	}{
		{"zstd", MemWriteDirect, true},
		{"xz", MemWriteDirect, false},
		{"zstd", MemWriteMigration, true},
	} {
		name := fmt.Sprintf("%s, pages %s, copies kept %v", v.codec, v.memWrite, v.keepCopies)
		port := guesttest.FreePort(t)
		so.RunDir, so.Forwards = runDir(t, "o"+v.codec), []vm.Forward{{Proto: "tcp", HostPort: port, GuestPort: 80}}
		so.MemWrite = v.memWrite
		run, err := applyAndResumeWith(context.Background(), overlays[v.codec], bdir, so, overlay.ApplyOptions{KeepCopies: v.keepCopies})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ri, _ := readInfo(run)
		check(t, attach(t, ri, false), 4, files, mem, before, port)
		Stop(context.Background(), run)
	}
	so.MemWrite = ""

	ov := overlays["zstd"]
	flipped := bytes.Clone(ov)
	flipped[len(ov)/3] ^= 0x01
	other := makeBase(t, kit) // a different base (different memory)
	for name, tc := range map[string]struct {
		ov   []byte
		base string
		want string
	}{
		"flipped byte": {flipped, bdir, "checksum"},
		"truncated":    {ov[:len(ov)/2], bdir, "unexpected EOF"},
		"wrong base":   {ov, other, "wrong base"},
	} {
		dir := runDir(t, "bad")
		so.RunDir, so.Forwards = dir, nil
		_, err := applyAndResume(context.Background(), tc.ov, tc.base, so)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want %q", name, err, tc.want)
		}
		if _, serr := os.Stat(dir); serr == nil {
			t.Errorf("%s: run folder left behind", name)
		}
		if out, _ := exec.Command("pgrep", "-f", dir).Output(); len(out) > 0 {
			t.Errorf("%s: QEMU left running: %s", name, out)
		}
	}
	if err := b.Verify(); err != nil {
		t.Errorf("base changed: %v", err)
	}
}

func readInfo(dir string) (*instance.Info, error) { return instance.Read(dir) }

// customized is a VM resumed from a fresh base, changed by the reference
// workload and captured.
type customized struct {
	bdir       string
	b          *base.Base // open until the test ends
	so         StreamOptions
	files, mem string // what check expects
	before     int    // the counter at capture
	full       []byte // the full stream
}

// customize makes a base, resumes it, runs the workload with seed
// (prepare) and captures the VM (vm-capture --quit).
func customize(t *testing.T, kit guesttest.GuestKit, seed int) *customized {
	c := &customized{bdir: makeBase(t, kit)}
	var err error
	if c.b, err = base.Open(c.bdir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.b.Close() })
	c.so = StreamOptions{Options: Options{Name: "t", Accel: os.Getenv("CLOUDLET_ACCEL")}, KitDirs: []string{kit.Dir}, BaseDir: c.bdir}
	c.so.RunDir = runDir(t, "b")
	info, err := FromBase(context.Background(), c.bdir, c.so)
	if err != nil {
		t.Fatal(err)
	}
	v := attach(t, info, false)
	v.con.Send("\n")
	c.files, c.mem = prepare(v, seed)
	c.before = counter(v)
	if c.full, err = io.ReadAll(captureTo(t, info, capture.Quit)); err != nil {
		t.Fatal(err)
	}
	return c
}
