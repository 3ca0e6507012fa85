package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/guestmem"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/virt/virttest"
)

var ratelimitOnce sync.Once

// ratelimit builds bench/ratelimit (a link of a given rate) into binDir.
func ratelimit(t testing.TB) {
	t.Helper()
	var err error
	ratelimitOnce.Do(func() {
		cmd := exec.Command("go", "build", "-o", binDir+string(os.PathSeparator), "./bench/ratelimit")
		cmd.Dir = repoRoot
		var out []byte
		if out, err = cmd.CombinedOutput(); err != nil {
			err = fmt.Errorf("%v: %s", err, out)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestHandoff moves a running synthesized instance, whose guest keeps
// writing memory (a counter every 10 ms) and disk (a line every 20 ms, each
// synced), to a new instance through a 25 Mbit/s link while it runs: the
// counter never goes back, the app, files and memory are right, the lines
// written during the handoff are on the new disk, and the source is gone.
// Before that, three handoffs fail, each leaving the source running and
// nothing of the destination: a corrupt frame, a killed destination, a
// killed vm-handoff.
func TestHandoff(t *testing.T) {
	e := newEnv(t)
	ratelimit(t)
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "hobase", "--out", e.path("hobase"), "--cmd", "sync")
	ovl := e.path("ho.overlay")
	e.cloudlet(append([]string{"overlay", e.path("hobase"), "--name", "ho", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", guesttest.FreePort(t))}, appCmds(baseID)...)...)
	pa := guesttest.FreePort(t)
	a := parseInstance(t, e.cloudlet("synthesis", ovl, "--name", "a", "--forward", fmt.Sprintf("tcp:%d:80", pa), "--run-dir", e.path("run", "a")))
	e.console(a.RunDir, "clwork counter --file /www/count --interval 10ms >/dev/null 2>&1 &")
	e.console(a.RunDir, "(i=0; while :; do echo $i >> /root/dlog; i=$((i+1)); sync; usleep 20000; done) >/dev/null 2>&1 &")
	// countIn reads the guest's counter through its page, trying for up
	// to within (0: one try; a guest that just dropped its caches or
	// keeps syncing may take seconds to serve a request under TCG).
	countIn := func(port int, within time.Duration) (int64, error) {
		s, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/count", port), within)
		if err != nil {
			return 0, err
		}
		return strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	}
	count := func(port int) (int64, error) { return countIn(port, 20*time.Second) }
	// The source runs on: its counter moves.
	runsOn := func(what string) {
		t.Helper()
		c1, err := count(pa)
		if err != nil {
			t.Fatalf("after %s: the source does not answer: %v", what, err)
		}
		time.Sleep(500 * time.Millisecond)
		if c2, err := count(pa); err != nil || c2 <= c1 {
			t.Fatalf("after %s: the source's counter %d then %d (%v): it does not run on", what, c1, c2, err)
		}
	}
	handoff := func(timeout time.Duration, dest string) (string, string, int) {
		return e.run(timeout, nil, filepath.Join(binDir, "vm-handoff"), "--run", a.RunDir, "--stats", e.path("ho.json"), "--to", dest)
	}
	dest := func(name, port string) string {
		return fmt.Sprintf("overlay-apply | vm-resume --run-dir %s --forward tcp:%s:80", e.path("run", name), port)
	}
	gone := func(name string) {
		t.Helper()
		for i := 0; ; i++ {
			if _, err := os.Stat(e.path("run", name)); os.IsNotExist(err) {
				return
			}
			if i == 100 {
				t.Fatalf("the failed destination's run folder %s is still there", e.path("run", name))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	// 0. To a file (no destination): the records give exactly the paused
	// source's RAM (QEMU 7.2 under TCG alone loses writes across dirty
	// syncs; vm-handoff's final pass must make up for it); then --cancel
	// lets the source run on.
	e.checkStreamMatchesSource(a, e.path("hobase"))
	if _, stderr, code := e.run(time.Minute, nil, filepath.Join(binDir, "vm-handoff"), "--run", a.RunDir, "--cancel"); code != 0 {
		t.Fatalf("vm-handoff --cancel: exit %d: %s", code, stderr)
	}
	runsOn("vm-handoff --cancel")

	// 1. A corrupt frame: the destination refuses it, the source runs on.
	out, stderr, code := handoff(2*time.Minute, "ratelimit -rate 50mbit | { head -c 1000000; printf Z; tail -c +2; } | "+dest("x", "0"))
	t.Logf("corrupt frame: exit %d\n%s", code, indent(stderr))
	if code == 0 || !strings.Contains(stderr, "the source VM runs on") {
		t.Fatalf("a handoff through a corrupt frame: exit %d, stdout %q; want a failure that says the source runs on", code, out)
	}
	runsOn("a corrupt frame")
	gone("x")

	// 2. The destination is killed midway.
	_, stderr, code = handoff(2*time.Minute, "exec 3<&0; ratelimit -rate 20mbit <&3 | "+dest("y", "0")+" & p=$!; sleep 2; kill $p; wait $p")
	t.Logf("killed destination: exit %d\n%s", code, indent(stderr))
	if code == 0 || strings.Contains(stderr, "empty input") || !strings.Contains(stderr, "the source VM runs on") {
		t.Fatal("a handoff to a destination killed midway: want it to fail midway, the source running on")
	}
	runsOn("a killed destination")
	gone("y")

	// 3. vm-handoff itself is killed midway.
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "vm-handoff"), "--run", a.RunDir, "--to", "ratelimit -rate 20mbit | "+dest("z", "0"))
	cmd.Env, cmd.Dir = e.environ(), e.dir
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	cmd.Process.Kill()
	cmd.Wait()
	cancel()
	runsOn("a killed vm-handoff")
	gone("z")

	// 4. The handoff, while a reader watches the source's counter.
	lines0 := e.console(a.RunDir, "wc -l < /root/dlog")
	var lastA int64
	var lastAt time.Time
	done := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-done:
				return
			default:
			}
			if c, err := countIn(pa, 0); err == nil {
				lastA, lastAt = c, time.Now()
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	pb := guesttest.FreePort(t)
	out, stderr, code = handoff(4*time.Minute, "ratelimit -rate 25mbit | "+dest("b", strconv.Itoa(pb)))
	ended := time.Now()
	var firstB int64
	var firstAt time.Time
	for firstAt.IsZero() && time.Since(ended) < 30*time.Second {
		if c, err := countIn(pb, 0); err == nil {
			firstB, firstAt = c, time.Now()
		}
	}
	close(done)
	<-watched
	t.Logf("handoff: exit %d\n%s", code, indent(stderr))
	if code != 0 {
		t.Fatalf("handoff failed: exit %d", code)
	}
	b := parseInstance(t, out)
	var st struct {
		Passes    int     `json:"passes"`
		Wire      int64   `json:"wire_bytes"`
		Stopped   int64   `json:"stopped_unix_ns"`
		StopToEnd float64 `json:"stop_to_end"`
	}
	if js, err := os.ReadFile(e.path("ho.json")); err != nil || json.Unmarshal(js, &st) != nil {
		t.Fatalf("handoff stats: %v %s", err, js)
	}
	stopped := time.Unix(0, st.Stopped)
	t.Logf("handoff: %d passes, %d bytes; source paused %.2f s before the end; last source count %d at %s, first destination count %d %.2f s after the pause (%.2f s after the source's last answer)",
		st.Passes, st.Wire, st.StopToEnd, lastA, lastAt.Format("15:04:05.000"), firstB, firstAt.Sub(stopped).Seconds(), firstAt.Sub(lastAt).Seconds())
	if firstAt.IsZero() {
		t.Fatalf("the destination's counter never answered on port %d", pb)
	}
	if st.Passes < 1 || st.Wire <= 0 || st.Stopped == 0 {
		t.Errorf("stats %+v: want passes, bytes and the pause time", st)
	}
	if firstB < lastA {
		t.Errorf("the counter went back: %d on the source, then %d on the destination", lastA, firstB)
	}
	// The guest's clock stops while it is paused: the counter misses at
	// most what ran between the source's last answer and the pause.
	if gap := firstB - lastA; gap > int64(firstAt.Sub(lastAt)/(10*time.Millisecond))+50 {
		t.Errorf("the counter jumped by %d in %.2f s", gap, firstAt.Sub(lastAt).Seconds())
	}
	if _, err := os.Stat(a.RunDir); !os.IsNotExist(err) || alive(a.Pid) {
		t.Errorf("the source is still there after the handoff (run folder %v, pid %d alive %v)", err, a.Pid, alive(a.Pid))
	}
	e.checkApp(b, pb, baseID)
	// The disk: every line, read back from the new disk (caches dropped).
	res := e.console(b.RunDir, "sync; echo 3 > /proc/sys/vm/drop_caches; awk 'NR-1 != $1 {bad++} END {print NR, bad+0}' /root/dlog")
	var n, bad int
	if _, err := fmt.Sscan(res, &n, &bad); err != nil {
		t.Fatalf("dlog check: %q: %v", res, err)
	}
	n0, _ := strconv.Atoi(strings.TrimSpace(lines0))
	t.Logf("disk log: %d lines before the handoff, %d after, %d out of sequence", n0, n, bad)
	if bad != 0 || n <= n0 || n0 == 0 {
		t.Errorf("disk log on the destination: %d lines (%d before the handoff), %d out of sequence", n, n0, bad)
	}

	// 5. The front end, over ssh: the new instance's JSON with a free host
	// port for guest port 80 and the source's network policy; the page
	// answers there and the counter goes on.
	sshOpts := startSSHD(t, e.path("ssh"))
	cb, err := count(pb)
	if err != nil {
		t.Fatal(err)
	}
	js := e.cloudlet("handoff", b.RunDir, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts, "--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"))
	c := parseInstance(t, js)
	var cnet struct {
		Net string `json:"net"`
	}
	json.Unmarshal([]byte(js), &cnet)
	if len(c.Forwards) != 1 || c.Forwards[0].GuestPort != 80 || c.Forwards[0].HostPort == 0 || cnet.Net != "isolated" || c.BaseID != baseID {
		t.Fatalf("cloudlet handoff --remote: instance %s; want guest port 80 forwarded, policy isolated, base %s", js, baseID)
	}
	if _, err := os.Stat(b.RunDir); !os.IsNotExist(err) {
		t.Errorf("the source %s is still there after cloudlet handoff", b.RunDir)
	}
	page, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", c.Forwards[0].HostPort), 30*time.Second)
	if err != nil || strings.TrimSpace(page) != pageFor(baseID) {
		t.Errorf("page after cloudlet handoff: %q, %v", page, err)
	}
	cc, err := count(c.Forwards[0].HostPort)
	if err != nil || cc < cb {
		t.Errorf("counter after cloudlet handoff: %d (%v), was %d before", cc, err, cb)
	}

	// 6. Into a libvirt domain there (--libvirt): listed by libvirt, the
	// page and the counter answer.
	uri := virttest.Daemon(t, repoRoot)
	js = e.cloudlet("handoff", c.RunDir, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts, "--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"), "--libvirt", uri)
	d := parseInstance(t, js)
	defer e.stop(d)
	dom := libvirtDomain(t, js)
	if !domainListed(t, uri, dom) {
		t.Errorf("domain %s is not listed by libvirt after the handoff", dom)
	}
	if page, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", d.Forwards[0].HostPort), 30*time.Second); err != nil || strings.TrimSpace(page) != pageFor(baseID) {
		t.Errorf("page after the handoff into libvirt: %q, %v", page, err)
	}
	if cd, err := count(d.Forwards[0].HostPort); err != nil || cd < cc {
		t.Errorf("counter after the handoff into libvirt: %d (%v), was %d before", cd, err, cc)
	}
}

// checkStreamMatchesSource hands a off to a file, then applies the
// stream's memory records to the base's memory in order and compares the
// result with the RAM of a's paused QEMU, page by page.
func (e *env) checkStreamMatchesSource(a instance, baseDir string) {
	t := e.t
	t.Helper()
	stream := e.path("ho-file.stream")
	f, err := os.Create(stream)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, "vm-handoff"), "--run", a.RunDir)
	var errb bytes.Buffer
	cmd.Env, cmd.Dir, cmd.Stdout, cmd.Stderr = e.environ(), e.dir, f, &errb
	err = cmd.Run()
	f.Close()
	out := errb.String()
	if err != nil {
		t.Fatalf("vm-handoff to a file: %v\n%s", err, out)
	}
	if !strings.Contains(out, "the source VM is paused") {
		t.Errorf("vm-handoff to a file does not say the source is paused:\n%s", out)
	}
	mem, err := os.ReadFile(filepath.Join(baseDir, "mem.ram"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(stream)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	apply := exec.Command(filepath.Join(binDir, "overlay-apply"))
	apply.Env, apply.Stdin = e.environ(), in
	pipe, err := apply.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := apply.Start(); err != nil {
		t.Fatal(err)
	}
	// The disk as the records leave it: sectors written, else the base's.
	disk := map[uint64][]byte{}
	baseDisk, err := os.Open(filepath.Join(baseDir, "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer baseDisk.Close()
	diskSector := func(off uint64) []byte {
		if b, ok := disk[off]; ok {
			return b
		}
		b := make([]byte, format.SectorSize)
		baseDisk.ReadAt(b, int64(off))
		return b
	}
	r := format.NewReader(pipe)
	if _, err := r.Header(); err != nil {
		t.Fatal(err)
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the handoff stream: %v", err)
		}
		switch rec.Type {
		case format.TypeMem:
			off, data, _ := rec.DataRecord()
			copy(mem[off:], data)
		case format.TypeMemZero:
			off, n, _ := rec.ZeroRecord()
			clear(mem[off : off+n])
		case format.TypeCopy:
			c, _ := rec.CopyRecord()
			if c.Space == format.SpaceMem && c.Source == format.SourceStreamMem {
				copy(mem[c.Offset:c.Offset+c.Length], mem[c.SourceOffset:c.SourceOffset+c.Length])
			} else if c.Space == format.SpaceMem && c.Source == format.SourceBaseMem {
				base, _ := os.ReadFile(filepath.Join(baseDir, "mem.ram"))
				copy(mem[c.Offset:c.Offset+c.Length], base[c.SourceOffset:])
			} else if c.Space == format.SpaceMem && c.Source == format.SourceStreamDisk {
				for n := uint64(0); n < c.Length; n += format.SectorSize {
					copy(mem[c.Offset+n:], diskSector(c.SourceOffset+n))
				}
			} else if c.Space == format.SpaceDisk && c.Source == format.SourceStreamMem {
				for n := uint64(0); n < c.Length; n += format.SectorSize {
					disk[c.Offset+n] = bytes.Clone(mem[c.SourceOffset+n : c.SourceOffset+n+format.SectorSize])
				}
			}
		case format.TypeDisk:
			off, data, _ := rec.DataRecord()
			for n := 0; n < len(data); n += format.SectorSize {
				disk[off+uint64(n)] = bytes.Clone(data[n : n+format.SectorSize])
			}
		case format.TypeDiskZero:
			off, l, _ := rec.ZeroRecord()
			for n := uint64(0); n < l; n += format.SectorSize {
				disk[off+n] = make([]byte, format.SectorSize)
			}
		}
	}
	apply.Wait()
	ram, err := guestmem.Find(a.Pid, filepath.Join(baseDir, "mem.ram"), int64(len(mem)))
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, len(mem))
	if _, err := ram.ReadAt(src, 0); err != nil {
		t.Fatal(err)
	}
	var bad []int
	for p := 0; p < len(mem); p += format.PageSize {
		if !bytes.Equal(mem[p:p+format.PageSize], src[p:p+format.PageSize]) {
			bad = append(bad, p)
		}
	}
	t.Logf("handoff to a file: %d pages of the stream differ from the paused source's RAM", len(bad))
	if len(bad) > 0 {
		t.Errorf("the handoff stream differs from the paused source in %d pages (first: %v)", len(bad), bad[:min(len(bad), 8)])
	}
}
