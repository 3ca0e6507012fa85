package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
	"cloudlet/lib/qmpctl"
)

// The medium-app workload of scripts/bench-workloads.sh (the same guest
// commands), then a guest that keeps writing: a counter every 10 ms (the
// page /count), 256 KiB of random bytes every 0.5 s in tmpfs, a line on
// disk every 20 ms, synced.
const (
	benchWorkload = "clwork writefiles --content app --mib %d --dir /root/src --seed 5 >/dev/null && cd /root && tar czf app.tgz src && mkdir -p /opt/app && tar xzf app.tgz -C /opt/app && clwork fillmem --content app --mib %d --seed 6 >/dev/null"
	benchWriters  = "clwork counter --file /www/count --interval 10ms >/dev/null 2>&1 & " +
		"(while :; do dd if=/dev/urandom of=/run/w bs=64k count=4 2>/dev/null; usleep 500000; done) >/dev/null 2>&1 & " +
		"(i=0; while :; do echo $i >> /root/dlog; i=$((i+1)); sync; usleep 20000; done) >/dev/null 2>&1 &"
)

// handoffRun is one measurement: seconds from the start to the first
// answer of the destination's /count, seconds from the source's pause to
// that answer, and bytes over the link.
type handoffRun struct {
	system   string
	mbit     int
	total    float64
	downtime float64
	bytes    int64
	note     string
}

// BenchmarkHandoff moves a synthesized instance of the medium-app workload,
// its guest writing all along, through 10, 25 and 100 Mbit/s links
// (bench/ratelimit, a token bucket), three ways: vm-handoff (live),
// stop-and-copy (vm-capture --quit | mem-diff | disk-diff | overlay-pack
// --codec auto, the residue path) and stock QEMU live migration of the same
// VM (migrate exec: through the same ratelimit to a second QEMU with the
// same command line, default downtime-limit 300 ms; it shares the disk file
// on this host, so its bytes are memory only). make bench writes the table
// to bench/handoff.txt. BENCH_SHORT=1: a 2+4 MiB workload and 25 Mbit/s only.
func BenchmarkHandoff(b *testing.B) {
	e := newEnv(b)
	ratelimit(b)
	src, mem, rates := 50, 100, []int{10, 25, 100}
	if os.Getenv("BENCH_SHORT") == "1" {
		src, mem, rates = 2, 4, []int{25}
	}
	e.cloudlet("base", e.kit.Rootfs, "--name", "hbbase", "--out", e.path("hbbase"), "--cmd", "sync")
	ovl := e.path("hb.overlay")
	e.cloudlet("overlay", e.path("hbbase"), "--name", "hb", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", guesttest.FreePort(b)),
		"--cmd", fmt.Sprintf(benchWorkload, src, mem), "--cmd", "echo medium-app > /www/index.html && clwork serve && sync")
	var runs []handoffRun
	n := 0
	for _, mbit := range rates {
		for _, system := range []string{"vm-handoff", "stop-and-copy", "qemu-migrate"} {
			n++
			a := parseInstance(b, e.cloudlet("synthesis", ovl, "--name", "src", "--forward", fmt.Sprintf("tcp:%d:80", guesttest.FreePort(b)), "--run-dir", e.path("run", fmt.Sprintf("src%d", n))))
			e.console(a.RunDir, benchWriters)
			time.Sleep(2 * time.Second)
			pb := guesttest.FreePort(b)
			r := handoffRun{system: system, mbit: mbit}
			switch system {
			case "vm-handoff":
				r = e.benchVMHandoff(a, mbit, pb, n)
			case "stop-and-copy":
				r = e.benchStopAndCopy(a, mbit, pb, n)
			default:
				// Stock precopy may not converge with a writing guest: give
				// it 4 times our time (at least a minute), then force the
				// switchover, as an operator would.
				patience := time.Minute
				if len(runs) >= 2 && runs[len(runs)-2].mbit == mbit {
					patience = max(patience, 4*time.Duration(runs[len(runs)-2].total*float64(time.Second)))
				}
				r = e.benchQEMUMigrate(a, mbit, pb, n, patience)
			}
			r.system, r.mbit = system, mbit
			fmt.Fprintf(os.Stderr, "bench: %s at %d Mbit/s: total %.2f s, downtime %.2f s, %d bytes %s\n", system, mbit, r.total, r.downtime, r.bytes, r.note)
			runs = append(runs, r)
			for _, d := range []string{a.RunDir, e.path("run", fmt.Sprintf("dst%d", n))} {
				exec.Command(filepath.Join(binDir, "vm-resume"), "stop", d).Run()
			}
		}
	}
	fmt.Printf("\nhandoff of the medium-app workload (%d+%d MiB) with a writing guest (make bench; go test -bench Handoff ./test/e2e/)\n\n", src, mem)
	fmt.Println("| link | system | total s | downtime s | MB sent | vs stock QEMU: time, bytes |")
	fmt.Println("| --- | --- | --- | --- | --- | --- |")
	for _, r := range runs {
		var stock handoffRun
		for _, s := range runs {
			if s.mbit == r.mbit && s.system == "qemu-migrate" {
				stock = s
			}
		}
		ratio := ""
		if stock.total > 0 && stock.bytes > 0 {
			ratio = fmt.Sprintf("%.2fx, %.2fx", r.total/stock.total, float64(r.bytes)/float64(stock.bytes))
		}
		fmt.Printf("| %d Mbit/s | %s | %.1f | %.2f | %.1f | %s |\n", r.mbit, r.system, r.total, r.downtime, float64(r.bytes)/1e6, ratio)
	}
}

// firstAnswer polls the destination's /count from now until it answers.
func firstAnswer(port int, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	for {
		// Short tries, each a new connection: one left waiting while the
		// guest is not running yet would get its answer only at user-mode
		// networking's next SYN retry, seconds later.
		c := &http.Client{Timeout: 100 * time.Millisecond}
		if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/count", port)); err == nil && resp.StatusCode == 200 {
			resp.Body.Close()
			return time.Now(), nil
		} else if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("port %d: no answer within %s", port, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// answerWatch polls in the background from now; the result is the time
// of the first answer.
func answerWatch(port int, within time.Duration) chan time.Time {
	ch := make(chan time.Time, 1)
	go func() {
		t, _ := firstAnswer(port, within)
		ch <- t
	}()
	return ch
}

func (e *env) benchVMHandoff(a instance, mbit, pb, n int) handoffRun {
	b := e.t
	stats := e.path(fmt.Sprintf("hb%d.json", n))
	start := time.Now()
	answered := answerWatch(pb, 15*time.Minute)
	_, stderr, code := e.run(15*time.Minute, nil, filepath.Join(binDir, "vm-handoff"), "--run", a.RunDir, "--stats", stats, "--to",
		fmt.Sprintf("ratelimit -rate %dmbit | overlay-apply | vm-resume --run-dir %s --forward tcp:%d:80", mbit, e.path("run", fmt.Sprintf("dst%d", n)), pb))
	if code != 0 {
		b.Fatalf("vm-handoff at %d Mbit/s: exit %d\n%s", mbit, code, stderr)
	}
	at := <-answered
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "switchover") || strings.Contains(line, "paused") || strings.Contains(line, "chose") {
			fmt.Fprintf(os.Stderr, "bench:   %s\n", line)
		}
	}
	var st struct {
		Wire    int64 `json:"wire_bytes"`
		Stopped int64 `json:"stopped_unix_ns"`
		Passes  int   `json:"passes"`
	}
	js, _ := os.ReadFile(stats)
	if err := json.Unmarshal(js, &st); err != nil || at.IsZero() {
		b.Fatalf("vm-handoff stats %s (%v), answer at %v", js, err, at)
	}
	return handoffRun{total: at.Sub(start).Seconds(), downtime: at.Sub(time.Unix(0, st.Stopped)).Seconds(), bytes: st.Wire,
		note: fmt.Sprintf("(%d passes)", st.Passes)}
}

func (e *env) benchStopAndCopy(a instance, mbit, pb, n int) handoffRun {
	b := e.t
	bytesFile := e.path(fmt.Sprintf("sc%d.bytes", n))
	start := time.Now()
	answered := answerWatch(pb, 15*time.Minute)
	script := fmt.Sprintf("set -o pipefail; vm-capture --run %s --quit | mem-diff | disk-diff | overlay-pack --no-manifest --codec auto --bandwidth %d | tee >(wc -c > %s) | ratelimit -rate %dmbit | overlay-apply | vm-resume --run-dir %s --forward tcp:%d:80",
		a.RunDir, mbit, bytesFile, mbit, e.path("run", fmt.Sprintf("dst%d", n)), pb)
	_, stderr, code := e.run(15*time.Minute, nil, "bash", "-c", script)
	if code != 0 {
		b.Fatalf("stop-and-copy at %d Mbit/s: exit %d\n%s", mbit, code, stderr)
	}
	at := <-answered
	var size int64
	for i := 0; i < 50 && size == 0; i++ { // tee's wc may lag a moment
		s, _ := os.ReadFile(bytesFile)
		size, _ = strconv.ParseInt(strings.TrimSpace(string(s)), 10, 64)
		time.Sleep(100 * time.Millisecond)
	}
	// The VM stops as the capture starts: its downtime is all of it.
	return handoffRun{total: at.Sub(start).Seconds(), downtime: at.Sub(start).Seconds(), bytes: size}
}

var reHostfwd = regexp.MustCompile(`hostfwd=tcp:127\.0\.0\.1:[0-9]+-:80`)

// benchQEMUMigrate: stock live migration of the source's QEMU to a second
// QEMU with its command line (own QMP, serial, pidfile; the same base
// memory file mapped privately; the same disk file, handed over by QEMU at
// the switchover), through ratelimit on QEMU's exec: transport.
func (e *env) benchQEMUMigrate(a instance, mbit, pb, n int, patience time.Duration) handoffRun {
	b := e.t
	ctx := context.Background()
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", a.Pid))
	if err != nil {
		b.Fatal(err)
	}
	dir := e.path("run", fmt.Sprintf("dst%d", n))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
	disk := filepath.Join(a.RunDir, "disk.qcow2")
	for i, s := range args {
		s = strings.ReplaceAll(s, disk, "\x01")
		s = strings.ReplaceAll(s, a.RunDir, dir)
		args[i] = reHostfwd.ReplaceAllString(strings.ReplaceAll(s, "\x01", disk), fmt.Sprintf("hostfwd=tcp:127.0.0.1:%d-:80", pb))
	}
	dst := exec.Command(args[0], args[1:]...)
	dst.Stdout, dst.Stderr = nil, nil
	if err := dst.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { dst.Process.Kill(); dst.Wait() }()
	dial := func(path string) *qmpctl.Client {
		dctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		for {
			c, err := qmpctl.Dial(dctx, path)
			if err == nil {
				return c
			}
			if dctx.Err() != nil {
				b.Fatalf("QMP %s: %v", path, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	dc := dial(filepath.Join(dir, "qmp.sock"))
	defer dc.Close()
	port := guesttest.FreePort(b)
	if err := dc.MigrateIncoming(ctx, fmt.Sprintf("tcp:127.0.0.1:%d", port)); err != nil {
		b.Fatal(err)
	}
	sc := dial(a.RunDir + "/qmp.sock")
	defer sc.Close()
	if err := sc.SetMigrationCapabilities(ctx, map[string]bool{"x-ignore-shared": false, "pause-before-switchover": false}); err != nil {
		b.Fatal(err)
	}
	if err := sc.SetMigrationParameters(ctx, map[string]any{"downtime-limit": 300, "max-bandwidth": int64(1) << 40}); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	answered := answerWatch(pb, 15*time.Minute)
	if err := sc.Migrate(ctx, fmt.Sprintf("exec:%s -rate %dmbit | socat -u - TCP:127.0.0.1:%d", filepath.Join(binDir, "ratelimit"), mbit, port)); err != nil {
		b.Fatal(err)
	}
	note := ""
	wctx, cancel := context.WithTimeout(ctx, patience)
	err = sc.WaitMigration(wctx)
	timedOut := wctx.Err() == context.DeadlineExceeded
	cancel()
	if timedOut {
		note = fmt.Sprintf("did not converge in %.0f s: switchover forced; ", patience.Seconds())
		if err := sc.SetMigrationParameters(ctx, map[string]any{"downtime-limit": 2000000}); err != nil {
			b.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
		err = sc.WaitMigration(wctx)
		cancel()
	}
	done := time.Now()
	if err != nil {
		b.Fatalf("stock migration at %d Mbit/s: %v", mbit, err)
	}
	info, err := sc.QueryMigrate(ctx)
	if err != nil {
		b.Fatal(err)
	}
	sc.Quit(ctx)
	at := <-answered
	if at.IsZero() {
		b.Fatalf("the stock migration's destination never answered on port %d", pb)
	}
	stopped := done.Add(-time.Duration(info.DowntimeMS) * time.Millisecond)
	return handoffRun{total: at.Sub(start).Seconds(), downtime: at.Sub(stopped).Seconds(), bytes: info.RAM.Transferred,
		note: fmt.Sprintf("(%sQEMU's own downtime %d ms)", note, info.DowntimeMS)}
}
