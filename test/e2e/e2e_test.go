// Package e2e runs the whole cloudlet pipeline end to end, through
// scripts/cloudlet and scripts/synthesis-listener.sh, on the real guest kit,
// with the real binaries (built here in TestMain from ./cmd/...):
//
//	base -> overlay (web app, files written, memory filled, a counter running)
//	     -> synthesis locally, over ssh (a throwaway sshd on 127.0.0.1) and
//	        over TCP (the socat listener)
//	     -> the page is served through the forwarded port, the files and the
//	        memory have the right checksums, the counter carries on, the base
//	        is unchanged, and no QEMU is left behind.
//
// Without QEMU or the kit (make kit) the tests skip, unless CI=true, when
// they fail. CLOUDLET_GUEST_DIR points at the kit (default .cache/guest).
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
	"cloudlet/scripts/guest/clwork/workload"
)

var (
	repoRoot string
	binDir   string // the freshly built tools
	// Every work folder of this process starts with workPrefix, so that
	// `pgrep -f workPrefix` finds any QEMU (or sshd, socat) we left behind.
	workPrefix = filepath.Join(os.TempDir(), fmt.Sprintf("cle2e-%d-", os.Getpid()))
)

func TestMain(m *testing.M) { os.Exit(testMain(m)) }

func testMain(m *testing.M) int {
	root, err := guesttest.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	repoRoot = root
	binDir, err = guesttest.BuildTools("cle2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)
	code := m.Run()
	if pids := leftovers(workPrefix); len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: processes left over after the tests: %v (killing them)\n", pids)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// leftovers: pids of processes whose command line mentions pattern.
func leftovers(pattern string) []int {
	out, _ := exec.Command("pgrep", "-f", pattern).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// env is one test's world: a work folder holding the catalog, the run
// folders, the base and the overlays.
type env struct {
	t   testing.TB
	dir string
	kit guesttest.GuestKit
	env []string // more environment, after (and over) environ's
}

func newEnv(t testing.TB) *env {
	kit := guesttest.Kit(t)
	guesttest.RequireQEMU(t)
	dir, err := os.MkdirTemp("", filepath.Base(workPrefix))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, kit: kit}
	if err := os.MkdirAll(e.path("run"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Stop whatever still runs, then insist that nothing of ours is left.
		runs, _ := filepath.Glob(e.path("run", "*"))
		for _, r := range runs {
			_ = exec.Command(filepath.Join(binDir, "vm-resume"), "stop", r).Run()
		}
		if pids := leftovers(dir + "/"); len(pids) > 0 {
			t.Errorf("processes left running under %s: %v", dir, pids)
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = os.RemoveAll(dir)
	})
	return e
}

func (e *env) path(elem ...string) string { return filepath.Join(append([]string{e.dir}, elem...)...) }

func (e *env) environ() []string {
	return append(append(os.Environ(),
		"PATH="+binDir+":"+os.Getenv("PATH"),
		"CLOUDLET_CATALOG="+e.path("catalog.json"),
		"CLOUDLET_RUN_DIR="+e.path("run"),
		"CLOUDLET_GUEST_DIR="+e.kit.Dir,
		"CLOUDLET_BIN=",
	), e.env...)
}

// run runs a command in the test's environment; it returns stdout, stderr
// and the exit code (-1 if it could not run or timed out).
func (e *env) run(timeout time.Duration, stdin io.Reader, name string, args ...string) (string, string, int) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok && ctx.Err() == nil {
			code = ee.ExitCode()
		}
	}
	return out.String(), errb.String(), code
}

// cloudlet runs scripts/cloudlet and fails the test if it fails.
func (e *env) cloudlet(args ...string) string {
	e.t.Helper()
	start := time.Now()
	out, stderr, code := e.run(4*time.Minute, nil, "bash", append([]string{filepath.Join(repoRoot, "scripts", "cloudlet")}, args...)...)
	if code != 0 {
		e.t.Fatalf("cloudlet %s: exit %d\nstderr:\n%s", strings.Join(args, " "), code, stderr)
	}
	e.t.Logf("cloudlet %s (%.1fs):\n%s", args[0], time.Since(start).Seconds(), indent(stderr))
	return strings.TrimSpace(out)
}

// console runs a command on an instance's serial console (vm-console).
func (e *env) console(run, cmdline string) string {
	e.t.Helper()
	out, stderr, code := e.run(time.Minute, nil, filepath.Join(binDir, "vm-console"), run, cmdline)
	if code != 0 {
		e.t.Fatalf("vm-console %s %q: exit %d: %s%s", run, cmdline, code, out, stderr)
	}
	return strings.TrimSpace(out)
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// instance is the part of vm-resume's JSON the tests look at.
type instance struct {
	Name     string `json:"name"`
	Pid      int    `json:"pid"`
	RunDir   string `json:"run_dir"`
	BaseID   string `json:"base_id"`
	Resumed  string `json:"resumed_from"`
	Forwards []struct {
		HostAddr  string `json:"host_addr"`
		HostPort  int    `json:"host_port"`
		GuestPort int    `json:"guest_port"`
	} `json:"forwards"`
	Timings  map[string]float64 `json:"timings"`
	Listener *struct {
		Bytes        int64   `json:"bytes"`
		EOFToRunning float64 `json:"eof_to_running"`
	} `json:"listener"`
}

func parseInstance(t testing.TB, s string) instance {
	t.Helper()
	var in instance
	if err := json.Unmarshal([]byte(s), &in); err != nil {
		t.Fatalf("instance JSON %q: %v", s, err)
	}
	if in.RunDir == "" || in.Pid == 0 {
		t.Fatalf("instance JSON without run_dir or pid: %s", s)
	}
	return in
}

func httpGet(url string, within time.Duration) (string, error) {
	deadline := time.Now().Add(within)
	client := &http.Client{Timeout: 5 * time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			body, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr == nil && resp.StatusCode == 200 {
				return string(body), nil
			}
			err = fmt.Errorf("status %s, %v", resp.Status, rerr)
		}
		if time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// The app the overlay carries.
const (
	filesMiB  = 2
	filesSeed = 11
	fillMiB   = 8
	fillSeed  = 12
)

// appCmds are the `cloudlet overlay` arguments that install the app:
// a web page served on port 80, files on disk, memory filled, a counter.
func appCmds(baseID string) []string {
	return []string{
		"--cmd", fmt.Sprintf("echo '%s' > /www/index.html && clwork serve", pageFor(baseID)),
		"--cmd", fmt.Sprintf("clwork writefiles --mib %d --dir /root/data --seed %d", filesMiB, filesSeed),
		"--cmd", fmt.Sprintf("clwork fillmem --mib %d --seed %d", fillMiB, fillSeed),
		"--cmd", "clwork counter --file /run/counter >/dev/null 2>&1 &",
		"--cmd", "sleep 1; cp /run/counter /root/counter-at-capture",
	}
}

func pageFor(baseID string) string { return "cloudlet e2e page over base " + baseID[:12] }

// expectedSums: the checksums clwork writefiles/fillmem content must have,
// computed here from the same generator, by guest path.
func expectedSums() map[string]string {
	want := map[string]string{}
	for _, f := range workload.Files(filesMiB, filesSeed) {
		want["/root/data/"+f.Name] = workload.Sum(f.Kind, f.Size, filesSeed, f.Index)
	}
	want["/run/mem/"+workload.FillName(fillSeed)] = workload.FillSum(fillMiB, fillSeed)
	return want
}

// checkApp verifies a synthesized instance: the page through the forward,
// the files and memory checksums, and the counter going on from where it
// was when the overlay was captured.
func (e *env) checkApp(in instance, port int, baseID string) {
	t := e.t
	t.Helper()
	if in.BaseID != baseID || in.Resumed != "base" {
		t.Errorf("instance: base_id %q resumed_from %q, want %q, base", in.BaseID, in.Resumed, baseID)
	}
	found := false
	for _, f := range in.Forwards {
		if f.HostPort == port && f.GuestPort == 80 {
			found = true
		}
	}
	if !found {
		t.Errorf("instance forwards %+v: no %d->80", in.Forwards, port)
	}
	page, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", port), 30*time.Second)
	if err != nil {
		t.Fatalf("page through 127.0.0.1:%d: %v\nserial log tail:\n%s", port, err, tail(filepath.Join(in.RunDir, "serial.log")))
	}
	if strings.TrimSpace(page) != pageFor(baseID) {
		t.Errorf("page = %q, want %q", page, pageFor(baseID))
	}
	want := expectedSums()
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	got := map[string]string{}
	for _, line := range strings.Split(e.console(in.RunDir, "clwork checksum "+strings.Join(paths, " ")), "\n") {
		if f := strings.Fields(line); len(f) == 2 {
			got[f[1]] = f[0]
		}
	}
	for p, sum := range want {
		if got[p] != sum {
			t.Errorf("%s: sha256 %q, want %q", p, got[p], sum)
		}
	}
	c0 := e.counter(in.RunDir, "/root/counter-at-capture")
	c1 := e.counter(in.RunDir, "/run/counter")
	time.Sleep(time.Second)
	c2 := e.counter(in.RunDir, "/run/counter")
	t.Logf("counter: %d before capture, %d after synthesis, %d a second later", c0, c1, c2)
	if c0 < 1 || c1 < c0 || c2 <= c1 {
		t.Errorf("counter does not carry on: %d before capture, then %d, %d", c0, c1, c2)
	}
}

func (e *env) counter(run, file string) int64 {
	e.t.Helper()
	s := e.console(run, "cat "+file)
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		e.t.Fatalf("%s: %q: %v", file, s, err)
	}
	return n
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func (e *env) stop(in instance) {
	e.t.Helper()
	e.cloudlet("stop", in.RunDir)
	if _, err := os.Stat(in.RunDir); !os.IsNotExist(err) {
		e.t.Errorf("run folder %s still there after stop", in.RunDir)
	}
	// vm-resume stop waits for QEMU to exit; its parent (sshd's session,
	// the listener, init) may take a moment to reap it: a zombie is gone.
	for i := 0; alive(in.Pid); i++ {
		if i == 50 {
			e.t.Errorf("QEMU pid %d still running after stop", in.Pid)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// alive: the process exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

func TestSynthesisEndToEnd(t *testing.T) {
	e := newEnv(t)

	// 1. base
	baseDir := e.path("base")
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "e2e", "--out", baseDir, "--cmd", "sync")
	if len(baseID) != 64 {
		t.Fatalf("base ID %q", baseID)
	}
	if list := e.cloudlet("list-base"); !strings.Contains(list, baseID) {
		t.Fatalf("list-base does not show %s:\n%s", baseID, list)
	}

	// 2. overlay: web app, files on disk, memory filled, a counter running
	port := guesttest.FreePort(t)
	ovl := e.path("app.overlay")
	out := e.cloudlet(append([]string{"overlay", baseDir, "--name", "app", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", port)},
		appCmds(baseID)...)...)
	st, err := os.Stat(ovl)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, ovl+"\t") {
		t.Errorf("overlay printed %q, want %q<TAB>size", out, ovl)
	}
	t.Logf("overlay: %d bytes (%.2f MiB)", st.Size(), float64(st.Size())/(1<<20))
	if tmps, _ := filepath.Glob(ovl + ".tmp.*"); len(tmps) > 0 {
		t.Errorf("temp files left: %v", tmps)
	}
	// The overlay has to be much smaller than the VM (256 MiB RAM + 512 MiB disk).
	if st.Size() > 64<<20 {
		t.Errorf("overlay is %d bytes", st.Size())
	}

	// 3a. local synthesis
	t.Run("local", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		p := guesttest.FreePort(t)
		start := time.Now()
		js := e.cloudlet("synthesis", ovl, "--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "local"))
		t.Logf("local synthesis: %.2fs, vm-resume timings %v", time.Since(start).Seconds(), parseInstance(t, js).Timings)
		in := parseInstance(t, js)
		e.checkApp(in, p, baseID)

		// residue: what the synthesized instance changed, as a new overlay
		res := e.path("residue.overlay")
		e.cloudlet("residue", in.RunDir, baseDir, "--out", res)
		info, _, code := e.run(time.Minute, nil, filepath.Join(binDir, "stream-inspect"), res)
		if code != 0 || !strings.Contains(info, `"overlay"`) {
			t.Errorf("residue is not an overlay (exit %d): %s", code, info)
		}
		if _, err := os.Stat(in.RunDir); !os.IsNotExist(err) {
			t.Errorf("residue left run folder %s", in.RunDir)
		}
	})

	// 3b. synthesis over ssh
	t.Run("ssh", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		sshOpts := startSSHD(t, e.path("ssh"))
		p := guesttest.FreePort(t)
		start := time.Now()
		js := e.cloudlet("synthesis", ovl, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts,
			"--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"),
			"--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "ssh"))
		t.Logf("ssh synthesis: %.2fs", time.Since(start).Seconds())
		in := parseInstance(t, js)
		e.checkApp(in, p, baseID)
		e.stop(in)
	})

	// 3c. synthesis over TCP through the socat listener
	t.Run("tcp", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		if _, err := exec.LookPath("socat"); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatal("socat missing (CI=true)")
			}
			t.Skip("socat missing")
		}
		p := guesttest.FreePort(t)
		lport := guesttest.FreePort(t)
		stopListener := startListener(t, e, lport, "--forward", fmt.Sprintf("tcp:%d:80", p))
		defer stopListener()
		js := e.cloudlet("synthesis", ovl, "--tcp", fmt.Sprintf("127.0.0.1:%d", lport))
		in := parseInstance(t, js)
		if in.Listener == nil || in.Listener.Bytes != st.Size() {
			t.Errorf("listener report %+v, want %d bytes", in.Listener, st.Size())
		} else {
			t.Logf("tcp: EOF -> running %.3fs (listener)", in.Listener.EOFToRunning)
		}
		e.checkApp(in, p, baseID)
		e.stop(in)
	})

	// 3d. clients synthesize the same overlay through the listener at once
	// (2, or CLOUDLET_LOAD_CLIENTS: make bench runs 8): each instance gets
	// its own free host port, and every app answers. One more client
	// closes its connection halfway through the overlay: that synthesis
	// fails alone and leaves nothing.
	t.Run("tcp-many-at-once", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		clients := 2
		if n, err := strconv.Atoi(os.Getenv("CLOUDLET_LOAD_CLIENTS")); err == nil && n > 0 {
			clients = n
		}
		lport := guesttest.FreePort(t)
		stopListener := startListener(t, e, lport)
		defer stopListener()
		runsBefore, _ := filepath.Glob(e.path("run", "*"))
		type result struct {
			out, stderr string
			code        int
			took        time.Duration
		}
		res := make(chan result, clients)
		start := time.Now()
		for i := 0; i < clients; i++ {
			go func() {
				t0 := time.Now()
				out, stderr, code := e.run(4*time.Minute, nil, "bash", filepath.Join(repoRoot, "scripts", "cloudlet"),
					"synthesis", ovl, "--tcp", fmt.Sprintf("127.0.0.1:%d", lport))
				res <- result{out, stderr, code, time.Since(t0)}
			}()
		}
		// The client that gives up: half the overlay, then it closes.
		half, err := os.ReadFile(ovl)
		if err != nil {
			t.Fatal(err)
		}
		halfOut, _, _ := e.run(time.Minute, bytes.NewReader(half[:len(half)/2]), "socat", "-t", "60", "-", fmt.Sprintf("TCP:127.0.0.1:%d", lport))
		if !strings.Contains(halfOut, `"error"`) {
			t.Errorf("the client that closed halfway got %q, want an error answer", halfOut)
		}
		var ins []instance
		var took []float64
		for i := 0; i < clients; i++ {
			r := <-res
			if r.code != 0 {
				t.Errorf("synthesis %d: exit %d: %s", i, r.code, r.stderr)
				continue
			}
			ins = append(ins, parseInstance(t, strings.TrimSpace(r.out)))
			took = append(took, r.took.Seconds())
		}
		t.Logf("%d clients at once: all answered in %.2fs; each synthesis took %v s", clients, time.Since(start).Seconds(), took)
		ports := map[int]bool{}
		for _, in := range ins {
			port := 0
			for _, f := range in.Forwards {
				if f.GuestPort == 80 {
					port = f.HostPort
				}
			}
			if port == 0 || ports[port] {
				t.Errorf("instance %s: host port %d for guest port 80 (already used: %v)", in.RunDir, port, ports)
			}
			ports[port] = true
			e.checkApp(in, port, baseID)
		}
		for _, in := range ins {
			e.stop(in)
		}
		if runs, _ := filepath.Glob(e.path("run", "*")); len(runs) != len(runsBefore) {
			t.Errorf("run folders after stopping every instance: %v (before: %v)", runs, runsBefore)
		}
	})

	// 4. failures: a corrupt overlay is refused, naming the stage, leaving
	// no VM; a failing overlay-pack leaves no half-written overlay.
	t.Run("corrupt-overlay", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		b, err := os.ReadFile(ovl)
		if err != nil {
			t.Fatal(err)
		}
		bad := e.path("bad.overlay")
		cut := append([]byte(nil), b[:len(b)/2]...)
		cut[len(cut)/2] ^= 0xff
		if err := os.WriteFile(bad, cut, 0o644); err != nil {
			t.Fatal(err)
		}
		before, _ := filepath.Glob(e.path("run", "*"))
		_, stderr, code := e.run(2*time.Minute, nil, "bash", filepath.Join(repoRoot, "scripts", "cloudlet"), "synthesis", bad, "--forward", fmt.Sprintf("tcp:%d:80", guesttest.FreePort(t)))
		if code == 0 {
			t.Fatalf("synthesis of a corrupt overlay succeeded:\n%s", stderr)
		}
		if !strings.Contains(stderr, "synthesis failed: stage") {
			t.Errorf("stderr does not name the failing stage:\n%s", stderr)
		}
		t.Logf("corrupt overlay: exit %d\n%s", code, indent(stderr))
		after, _ := filepath.Glob(e.path("run", "*"))
		if len(after) != len(before) {
			t.Errorf("run folders before %v, after %v", before, after)
		}
	})
	t.Run("overlay-pack-fails", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out := e.path("never.overlay")
		_, stderr, code := e.run(3*time.Minute, nil, "bash", filepath.Join(repoRoot, "scripts", "cloudlet"),
			"overlay", baseDir, "--name", "never", "--out", out, "--codec", "no-such-codec", "--cmd", "true")
		if code == 0 {
			t.Fatalf("overlay with a bad codec succeeded:\n%s", stderr)
		}
		if !strings.Contains(stderr, "overlay failed: stage") {
			t.Errorf("stderr does not name the failing stage:\n%s", stderr)
		}
		if m, _ := filepath.Glob(out + "*"); len(m) > 0 {
			t.Errorf("left behind: %v", m)
		}
		if runs, _ := filepath.Glob(e.path("run", "never-*")); len(runs) > 0 {
			t.Errorf("run folders left: %v", runs)
		}
	})

	// 5. the base is unchanged, and nothing is left running
	t.Run("base-unchanged", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out, stderr, code := e.run(2*time.Minute, nil, filepath.Join(binDir, "cloudlet-base"), "verify", baseDir)
		if code != 0 {
			t.Fatalf("cloudlet-base verify: exit %d: %s%s", code, out, stderr)
		}
		if !strings.Contains(out+stderr, baseID) {
			t.Errorf("verify does not report ID %s: %s%s", baseID, out, stderr)
		}
		e.cloudlet("del-base", "e2e")
		if list := e.cloudlet("list-base"); strings.Contains(list, baseID) {
			t.Errorf("del-base left %s in the catalog", baseID)
		}
	})
	runs, _ := filepath.Glob(e.path("run", "*"))
	for _, r := range runs {
		t.Errorf("run folder left: %s", r)
	}
}

// startSSHD starts an OpenSSH server on 127.0.0.1 with throwaway keys in dir
// and returns the ssh options that reach it as root.
func startSSHD(t *testing.T, dir string) string {
	t.Helper()
	const sshd = "/usr/sbin/sshd"
	for _, p := range []string{sshd, "ssh", "ssh-keygen"} {
		if _, err := exec.LookPath(p); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s missing (CI=true; apt-get install openssh-server openssh-client)", p)
			}
			t.Skipf("%s missing (apt-get install openssh-server openssh-client)", p)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation folder
	for _, k := range []string{"host_key", "user_key"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, k)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
	}
	cfg := fmt.Sprintf(`HostKey %[1]s/host_key
ListenAddress 127.0.0.1
PermitRootLogin yes
AuthorizedKeysFile %[1]s/user_key.pub
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PidFile none
`, dir)
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	port := guesttest.FreePort(t)
	var log bytes.Buffer
	cmd := exec.Command(sshd, "-D", "-e", "-p", strconv.Itoa(port), "-f", filepath.Join(dir, "sshd_config"))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	opts := fmt.Sprintf("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -i %s/user_key -p %d", dir, port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		args := append(strings.Fields(opts), "root@127.0.0.1", "true")
		if err := exec.Command("ssh", args...).Run(); err == nil {
			return opts
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd on port %d not answering; its log:\n%s", port, log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// startListener runs scripts/synthesis-listener.sh on lport, making every
// synthesis forward guest port 80 to vmPort.
func startListener(t *testing.T, e *env, lport int, args ...string) func() {
	t.Helper()
	cmd := exec.Command("bash", append(append([]string{filepath.Join(repoRoot, "scripts", "synthesis-listener.sh")}, args...), strconv.Itoa(lport))...)
	cmd.Env = e.environ()
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop := func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		_ = cmd.Wait()
		t.Logf("listener log:\n%s", indent(log.String()))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", lport), time.Second); err == nil {
			// A bare connect-and-close is an empty upload: the listener
			// answers it with an error and carries on.
			c.Close()
			return stop
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("listener not listening on %d", lport)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
