package resume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/capture"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/instance"
	"cloudlet/lib/overlay"
	"cloudlet/lib/vm"
)

// slowReader hands out b at rate bytes per second; left is what it has
// not handed out yet.
type slowReader struct {
	b     []byte
	rate  float64
	start time.Time
	left  atomic.Int64
}

func newSlowReader(b []byte, rate float64) *slowReader {
	s := &slowReader{b: b, rate: rate}
	s.left.Store(int64(len(b)))
	return s
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.start.IsZero() {
		s.start = time.Now()
	}
	done := len(s.b) - int(s.left.Load())
	if done == len(s.b) {
		return 0, io.EOF
	}
	allowed := int(time.Since(s.start).Seconds() * s.rate)
	for allowed <= done {
		time.Sleep(5 * time.Millisecond)
		allowed = int(time.Since(s.start).Seconds() * s.rate)
	}
	n := copy(p, s.b[done:min(allowed, len(s.b))])
	s.left.Add(-int64(n))
	return n, nil
}

// applied resolves an overlay into the diff stream vm-resume reads.
func applied(t testing.TB, ov []byte, bdir string) []byte {
	return stage(t, "overlay-apply", bytes.NewReader(ov), func(r *format.Reader, w *format.Writer) error {
		return overlay.Apply(context.Background(), r, w, func(id string) (overlay.Base, error) { return base.Locate(bdir, "", id) }, overlay.ApplyOptions{KeepCopies: true})
	})
}

// withManifest makes sure a diff stream carries a MANIFEST after its
// HEADER (overlay-apply writes one when the overlay has one).
func withManifest(t testing.TB, in []byte) []byte {
	t.Helper()
	r := format.NewReader(bytes.NewReader(in))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	var recs [][]byte
	var types []format.Type
	var m format.Manifest
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type == format.TypeManifest {
			return in
		}
		types, recs = append(types, rec.Type), append(recs, bytes.Clone(rec.Payload))
		sp, off, n, ok := recordTarget(rec)
		switch {
		case !ok:
		case sp == format.SpaceMem:
			m.Mem = appendRange(m.Mem, off, n)
		default:
			m.Disk = appendRange(m.Disk, off, n)
		}
	}
	var out bytes.Buffer
	w := format.NewWriter(&out)
	must(t, w.WriteHeader(h))
	must(t, w.WriteMeta(format.TypeManifest, &m))
	for i := range recs {
		must(t, w.WriteRecord(&format.Record{Type: types[i], Flags: types[i].DefaultFlags(), Payload: recs[i]}))
	}
	must(t, w.Close())
	return out.Bytes()
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func appendRange(rs [][2]uint64, off, n uint64) [][2]uint64 {
	if k := len(rs); k > 0 && rs[k-1][0]+rs[k-1][1] == off {
		rs[k-1][1] += n
		return rs
	}
	return append(rs, [2]uint64{off, n})
}

func recordTarget(rec *format.Record) (uint8, uint64, uint64, bool) {
	switch rec.Type {
	case format.TypeMem, format.TypeDisk:
		off, data, _ := rec.DataRecord()
		return map[bool]uint8{true: format.SpaceMem, false: format.SpaceDisk}[rec.Type == format.TypeMem], off, uint64(len(data)), true
	case format.TypeMemZero, format.TypeDiskZero:
		off, n, _ := rec.ZeroRecord()
		return map[bool]uint8{true: format.SpaceMem, false: format.SpaceDisk}[rec.Type == format.TypeMemZero], off, n, true
	case format.TypeCopy:
		c, _ := rec.CopyRecord()
		return c.Space, c.Offset, c.Length, true
	}
	return 0, 0, 0, false
}

// lazyMounted reports whether a lazyfs mount under dir is still listed.
func lazyMounted(dir string) bool {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	return bytes.Contains(b, []byte(dir))
}

// TestEarlyStart: the guest of a resumed overlay answers through its
// forwarded port while the stream is still arriving through a slow pipe;
// once it has arrived, its files and memory are what a plain synthesis
// gives; a stream whose tail is corrupt kills the started instance and
// leaves no QEMU, mount or run folder; the base never changes.
func TestEarlyStart(t *testing.T) {
	kit := guesttest.Kit(t)
	bdir := makeBase(t, kit)
	b, err := base.Open(bdir)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	so := StreamOptions{Options: Options{Name: "t", Accel: os.Getenv("CLOUDLET_ACCEL")}, KitDirs: []string{kit.Dir}, BaseDir: bdir}
	so.RunDir = runDir(t, "b")
	info, err := FromBase(context.Background(), bdir, so)
	if err != nil {
		t.Fatal(err)
	}
	v := attach(t, info, false)
	v.con.Send("\n")
	files, mem := prepare(v, 5)
	before := counter(v)
	full, err := io.ReadAll(captureTo(t, info, capture.Quit))
	if err != nil {
		t.Fatal(err)
	}
	stream := withManifest(t, applied(t, makeOverlay(t, bytes.NewReader(full), bdir, "zstd"), bdir))
	// The stream takes about 20 s to arrive.
	rate := float64(len(stream)) / 20
	t.Logf("diff stream with manifest: %d bytes at %.1f MB/s", len(stream), rate/1e6)

	port := guesttest.FreePort(t)
	so.RunDir, so.Forwards = runDir(t, "early"), []vm.Forward{{Proto: "tcp", HostPort: port, GuestPort: 80}}
	slow := newSlowReader(stream, rate)
	var answeredLeft atomic.Int64
	answeredLeft.Store(-1)
	var runningAt time.Duration
	served, err := FromStreamEarly(context.Background(), format.NewReader(slow), so, func(info *instance.Info) {
		runningAt = time.Since(slow.start)
		t.Logf("guest running after %v, %d of %d stream bytes still to come", runningAt, slow.left.Load(), len(stream))
		go func() {
			deadline := time.Now().Add(60 * time.Second)
			for time.Now().Before(deadline) {
				if page, err := httpGetQuick(port); err == nil && strings.Contains(page, "<") {
					answeredLeft.Store(slow.left.Load())
					t.Logf("app answered after %v with %d stream bytes still to come", time.Since(slow.start), answeredLeft.Load())
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
	})
	if err != nil {
		t.Fatal(err)
	}
	total := time.Since(slow.start)
	t.Logf("stream arrived in %v", total)
	waited := make(chan error, 1)
	go func() { waited <- served.Wait(context.Background()) }()
	if left := answeredLeft.Load(); left <= 0 {
		t.Errorf("the app did not answer before the stream had arrived (bytes left when it answered: %d)", left)
	}
	ri, err := instance.Read(served.Info.RunDir)
	if err != nil {
		t.Fatal(err)
	}
	check(t, attach(t, ri, false), 5, files, mem, before, port)
	Stop(context.Background(), ri.RunDir)
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Wait did not return after the VM stopped")
	}
	if lazyMounted(ri.RunDir) {
		t.Error("mount left after the VM stopped")
	}
	if _, err := os.Stat(ri.RunDir); err == nil {
		t.Error("run folder left after the VM stopped")
	}

	// A corrupt tail: the last data frame's check fails after the guest
	// started.
	bad := bytes.Clone(stream)
	bad[len(bad)-200] ^= 0x40
	so.RunDir, so.Forwards = runDir(t, "bad"), nil
	started := false
	_, err = FromStreamEarly(context.Background(), format.NewReader(newSlowReader(bad, rate*4)), so, func(*instance.Info) { started = true })
	if err == nil || !started {
		t.Fatalf("corrupt tail: err %v, guest started %v; want the guest started, then an error", err, started)
	}
	t.Logf("corrupt tail: %v", err)
	var ce *format.CorruptError
	if !errors.As(err, &ce) && !strings.Contains(err.Error(), "checksum") {
		t.Errorf("corrupt tail: error %v does not say what was wrong", err)
	}
	if _, serr := os.Stat(so.RunDir); serr == nil {
		t.Error("corrupt tail: run folder left behind")
	}
	if lazyMounted(so.RunDir) {
		t.Error("corrupt tail: mount left behind")
	}
	if out, _ := exec.Command("pgrep", "-f", so.RunDir).Output(); len(out) > 0 {
		t.Errorf("corrupt tail: QEMU left running: %s", out)
	}
	if err := b.Verify(); err != nil {
		t.Errorf("base changed: %v", err)
	}
}

func httpGetQuick(port int) (string, error) {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
