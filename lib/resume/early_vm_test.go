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
	"cloudlet/lib/cliutil"
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

// earlyFrom feeds an overlay through overlay-apply into FromStreamEarly
// (in-process, as the pipe overlay-apply | vm-resume --early-start does).
func earlyFrom(ctx context.Context, ov io.Reader, bdir string, so StreamOptions, running func(*instance.Info)) (*Served, error) {
	pr, pw := io.Pipe()
	go func() {
		err := cliutil.Filter("overlay-apply", ov, pw, func(r *format.Reader, w *format.Writer) error {
			return overlay.Apply(ctx, r, w, func(id string) (overlay.Base, error) { return base.Locate(bdir, "", id) }, overlay.ApplyOptions{KeepCopies: true})
		})
		pw.CloseWithError(err)
	}()
	defer pr.CloseWithError(errors.New("resume ended"))
	return FromStreamEarly(ctx, format.NewReader(pr), so, running)
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
	c := customize(t, kit, 5)
	bdir, b, so, files, mem, before, full := c.bdir, c.b, c.so, c.files, c.mem, c.before, c.full
	diff := makeDiff(t, bytes.NewReader(full), bdir)

	// Record the access order: resume through the served images until
	// the app answered, and a few seconds more; once at full speed from
	// an overlay in offset order, then once more through the slow link
	// from the overlay in that order (a guest that waits for pages runs
	// other code, which touches other pages), the logs merged.
	port := guesttest.FreePort(t)
	so.Forwards = []vm.Forward{{Proto: "tcp", HostPort: port, GuestPort: 80}}
	record := func(ov []byte, rate float64) *format.AccessLog {
		so.RunDir = runDir(t, "rec")
		answered := make(chan time.Duration, 1)
		var in io.Reader = bytes.NewReader(ov)
		if rate > 0 {
			in = newSlowReader(ov, rate)
		}
		start := time.Now()
		rec, err := earlyFrom(context.Background(), in, bdir, so, func(info *instance.Info) {
			go func() { answered <- waitAnswer(port, start) }()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("recording run: the app answered after %v", <-answered)
		for range 10 {
			httpGetQuick(port)
			time.Sleep(300 * time.Millisecond)
		}
		al := rec.AccessLog()
		Stop(context.Background(), rec.Info.RunDir)
		if err := rec.Wait(context.Background()); err != nil {
			t.Errorf("Wait: %v", err)
		}
		if len(al.Accesses) == 0 {
			t.Fatal("no access recorded")
		}
		return al
	}
	al := record(packDiff(t, diff, overlay.PackOptions{Codec: "zstd"}), 0)
	again := packDiff(t, diff, overlay.PackOptions{Codec: "zstd", Order: format.OrderAccess, Access: al, AccessFile: "recorded"})
	n := len(al.Accesses)
	al.Merge(record(again, float64(len(again))/20))
	t.Logf("access log: %d accesses, %d from the second run", len(al.Accesses), len(al.Accesses)-n)
	stream := packDiff(t, diff, overlay.PackOptions{Codec: "zstd", Order: format.OrderAccess, Access: al, AccessFile: "recorded"})
	// The overlay takes about 20 s to arrive.
	rate := float64(len(stream)) / 20
	t.Logf("overlay in access order (%d accesses): %d bytes at %.2f MB/s", len(al.Accesses), len(stream), rate/1e6)

	port = guesttest.FreePort(t)
	so.RunDir, so.Forwards = runDir(t, "early"), []vm.Forward{{Proto: "tcp", HostPort: port, GuestPort: 80}}
	slow := newSlowReader(stream, rate)
	var answeredLeft atomic.Int64
	answeredLeft.Store(-1)
	served, err := earlyFrom(context.Background(), slow, bdir, so, func(info *instance.Info) {
		t.Logf("guest running after %v, %d of %d overlay bytes still to come", time.Since(slow.start), slow.left.Load(), len(stream))
		go func() {
			if d := waitAnswer(port, slow.start); d > 0 {
				answeredLeft.Store(slow.left.Load())
				t.Logf("app answered after %v with %d overlay bytes still to come", d, answeredLeft.Load())
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
	bad[len(bad)*9/10] ^= 0x40
	so.RunDir, so.Forwards = runDir(t, "bad"), nil
	started := false
	_, err = earlyFrom(context.Background(), newSlowReader(bad, rate*2), bdir, so, func(*instance.Info) { started = true })
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

// waitAnswer polls the app's page until it answers (for at most a
// minute) and returns the time since start, or 0 if it never answered.
func waitAnswer(port int, start time.Time) time.Duration {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if page, err := httpGetQuick(port); err == nil && strings.Contains(page, "<") {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0
}

// httpGetQuick asks once, and waits up to a minute for the answer, as a
// user's browser would.
func httpGetQuick(port int) (string, error) {
	c := http.Client{Timeout: 60 * time.Second}
	resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", port))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}
