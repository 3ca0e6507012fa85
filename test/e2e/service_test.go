package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCloudletd (issue 25, item 3): the authenticated synthesis service with
// the real tools, QEMU and guest, driven by OpenSSH's own client. A client
// in the clients file synthesizes an overlay (ssh ... synthesis < overlay)
// and the app answers through the free port the JSON line names, under the
// isolated policy, in the client's own run root; its instance limit refuses
// a second one (in-band error, non-zero status); another client neither
// lists nor stops it; an unknown key gets nowhere; stop ends it (QEMU gone,
// run folder removed); the log names the client.
func TestCloudletd(t *testing.T) {
	if os.Getenv("CI") != "true" {
		if _, err := exec.LookPath("ssh"); err != nil {
			t.Skip("ssh missing (apt-get install openssh-client)")
		}
	}
	e := newEnv(t)
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "sdbase", "--out", e.path("sdbase"), "--cmd", "sync")
	ovl := e.path("sd.overlay")
	page := "sd-page-" + baseID[:8]
	e.cloudlet("overlay", e.path("sdbase"), "--name", "sd", "--out", ovl, "--forward", "tcp:0:80",
		"--cmd", "echo "+page+" > /www/index.html && clwork serve")

	dir := e.path("sd")
	os.MkdirAll(dir, 0o700)
	var clients bytes.Buffer
	for _, n := range []string{"alice", "bob", "mallory"} {
		if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", n, "-f", filepath.Join(dir, n)).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen: %v: %s", err, out)
		}
		pub, _ := os.ReadFile(filepath.Join(dir, n+".pub"))
		switch n {
		case "alice":
			clients.WriteString("instances=1 " + string(pub))
		case "bob":
			clients.Write(pub)
		}
	}
	os.WriteFile(filepath.Join(dir, "clients"), clients.Bytes(), 0o600)
	runRoot := e.path("srv")
	t.Cleanup(func() {
		runs, _ := filepath.Glob(filepath.Join(runRoot, "*", "*"))
		for _, r := range runs {
			exec.Command(filepath.Join(binDir, "vm-resume"), "stop", r).Run()
		}
	})

	var logb bytes.Buffer
	d := exec.Command(filepath.Join(binDir, "cloudletd"), "--listen", "127.0.0.1:0", "--host-key", filepath.Join(dir, "host_key"),
		"--clients", filepath.Join(dir, "clients"), "--run-root", runRoot, "--catalog", e.path("catalog.json"))
	d.Env = e.environ()
	d.Stderr = &logb
	stdout, _ := d.StdoutPipe()
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait() })
	var ready struct{ Listen, HostKey string }
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || json.Unmarshal([]byte(line), &ready) != nil {
		t.Fatalf("cloudletd's first line %q: %v\n%s", line, err, logb.String())
	}
	host, port, _ := strings.Cut(ready.Listen, ":")
	ssh := func(who string, stdin []byte, args ...string) (string, string, int) {
		var in io.Reader
		if stdin != nil {
			in = bytes.NewReader(stdin)
		}
		a := append([]string{"-p", port, "-i", filepath.Join(dir, who), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
			"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "cloudlet@" + host}, args...)
		return e.run(3*time.Minute, in, "ssh", a...)
	}
	overlay, err := os.ReadFile(ovl)
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	out, errs, code := ssh("alice", overlay, "synthesis", "--name", "web", "--forward", "80")
	if code != 0 {
		t.Fatalf("alice's synthesis: exit %d\n%s%s\nlog:\n%s", code, out, errs, logb.String())
	}
	in := parseInstance(t, out)
	t.Logf("synthesis through cloudletd: %.2fs; %s", time.Since(t0).Seconds(), strings.TrimSpace(out))
	var extra struct{ Net string }
	json.Unmarshal([]byte(out), &extra)
	if extra.Net != "isolated" || filepath.Dir(in.RunDir) != filepath.Join(runRoot, "alice") || len(in.Forwards) != 1 {
		t.Errorf("instance: net %q, run folder %s, forwards %+v", extra.Net, in.RunDir, in.Forwards)
	}
	// QEMU runs under its seccomp sandbox (mode 2: a filter).
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", in.Pid)); err != nil || !strings.Contains(string(st), "Seccomp:\t2") {
		t.Errorf("QEMU (pid %d) is not under a seccomp filter: %v", in.Pid, err)
	}
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", in.Forwards[0].HostPort), 30*time.Second); err != nil || !strings.Contains(got, page) {
		t.Errorf("the app through its forward: %q, %v", got, err)
	}

	// alice may run one instance: a second is refused, in-band and by status.
	out, _, code = ssh("alice", overlay, "synthesis")
	if code == 0 || !strings.Contains(out, `"error"`) || !strings.Contains(out, "max-instances") {
		t.Errorf("alice's second synthesis (instances=1): exit %d, %q", code, out)
	}
	// bob sees none of it and cannot stop it; mallory is not a client.
	if out, _, code := ssh("bob", nil, "list"); code != 0 || strings.TrimSpace(out) != "" {
		t.Errorf("bob's list: exit %d, %q", code, out)
	}
	if _, _, code := ssh("bob", nil, "stop", "web"); code == 0 {
		t.Error("bob stopped alice's instance")
	}
	// bob's synthesis with early start: its server serves the VM after
	// the command has ended, and stop ends both.
	out, errs, code = ssh("bob", overlay, "synthesis", "--name", "early", "--forward", "tcp:0:80", "--early-start")
	var eb struct {
		Server int `json:"server_pid"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &eb) != nil || eb.Server == 0 {
		t.Fatalf("bob's early-start synthesis: exit %d, %q %q", code, out, errs)
	}
	ein := parseInstance(t, out)
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", ein.Forwards[0].HostPort), 30*time.Second); err != nil || !strings.Contains(got, page) {
		t.Errorf("bob's early-started app: %q, %v", got, err)
	}
	if out, errs, code := ssh("bob", nil, "stop", "early"); code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("bob's stop: exit %d, %q %q", code, out, errs)
	}
	for i := 0; alive(ein.Pid) || alive(eb.Server); i++ {
		if i == 50 {
			t.Errorf("QEMU %d or its server %d still running after stop", ein.Pid, eb.Server)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, errs, code := ssh("mallory", nil, "list"); code != 255 || !strings.Contains(errs, "Permission denied") {
		t.Errorf("an unknown key: exit %d, %q", code, errs)
	}
	if _, errs, code := ssh("mallory", overlay, "synthesis"); code != 255 || !strings.Contains(errs, "Permission denied") {
		t.Errorf("an unknown key's synthesis: exit %d, %q", code, errs)
	}
	ents, _ := os.ReadDir(runRoot) // nothing started for mallory
	for _, e := range ents {
		if e.Name() != "alice" && e.Name() != "bob" {
			t.Errorf("run root holds %s after an unknown key's synthesis", e.Name())
		}
	}
	if runs, _ := filepath.Glob(filepath.Join(runRoot, "*", "*")); len(runs) != 1 {
		t.Errorf("after an unknown key's synthesis the run folders are %v, want alice's one", runs)
	}

	// 1000 connections that never authenticate (from 20 loopback
	// addresses, under the per-address cap): cloudletd still serves alice,
	// starts nothing for them, and stays small.
	var idle []net.Conn
	for i := range 1000 {
		dl := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 1, byte(1+i/50))}}
		c, err := dl.Dial("tcp", ready.Listen)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		idle = append(idle, c)
	}
	t1 := time.Now()
	if out, _, code := ssh("alice", nil, "list"); code != 0 || !strings.Contains(out, in.RunDir) {
		t.Errorf("alice's list among 1000 idle connections: exit %d, %q", code, out)
	}
	rss := rssKiB(t, d.Process.Pid)
	kids, _ := exec.Command("pgrep", "-P", fmt.Sprint(d.Process.Pid)).Output()
	t.Logf("1000 idle connections: alice's list took %.2fs; cloudletd resident %d KiB, children %q", time.Since(t1).Seconds(), rss, strings.Fields(string(kids)))
	if rss > 256<<10 || len(strings.Fields(string(kids))) != 0 {
		t.Errorf("with 1000 idle connections cloudletd holds %d KiB and children %q", rss, kids)
	}
	for _, c := range idle {
		c.Close()
	}
	if _, errs, code := ssh("alice", nil, "synthesis", "--net", "host"); code != 2 || !strings.Contains(errs, "unknown option") {
		t.Errorf("a client choosing its network policy: exit %d, %q", code, errs)
	}
	out, _, code = ssh("alice", nil, "list")
	if code != 0 || !strings.Contains(out, in.RunDir) {
		t.Errorf("alice's list: exit %d, %q", code, out)
	}
	if out, errs, code := ssh("alice", nil, "stop", "web"); code != 0 || !strings.Contains(out, "stopped") {
		t.Errorf("alice's stop: exit %d, %q %q", code, out, errs)
	}
	for i := 0; alive(in.Pid); i++ {
		if i == 50 {
			t.Errorf("QEMU pid %d still running after stop", in.Pid)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := os.Stat(in.RunDir); !os.IsNotExist(err) {
		t.Errorf("run folder %s still there after stop", in.RunDir)
	}
	if !strings.Contains(logb.String(), `"client":"alice"`) || !strings.Contains(logb.String(), `"msg":"refused key"`) {
		t.Errorf("cloudletd's log names neither the client nor the refused key:\n%s", logb.String())
	}
}

// rssKiB is a process's resident memory (VmRSS) in KiB.
func rssKiB(t *testing.T, pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			var n int
			fmt.Sscan(f[1], &n)
			return n
		}
	}
	return 0
}
