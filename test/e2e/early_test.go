package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
)

// TestEarlyStartFrontEnd (issue 27): `cloudlet overlay --early-start`
// records the first reads itself and packs the kept diff stream in access
// order, within 2% of the offset-ordered overlay; `cloudlet synthesis`
// starts such an overlay early by default over a slow link (--remote),
// plainly with --no-early-start, and early locally when asked; the app,
// its files and its counter are there each way.
func TestEarlyStartFrontEnd(t *testing.T) {
	e := newEnv(t)
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "esbase", "--out", e.path("esbase"), "--cmd", "sync")
	port := guesttest.FreePort(t)
	ovl := e.path("es.overlay")
	args := append([]string{filepath.Join(repoRoot, "scripts", "cloudlet"), "overlay", e.path("esbase"), "--name", "es", "--out", ovl,
		"--forward", fmt.Sprintf("tcp:%d:80", port), "--early-start"}, appCmds(baseID)...)
	start := time.Now()
	out, stderr, code := e.run(6*time.Minute, nil, "bash", args...)
	if code != 0 {
		t.Fatalf("cloudlet overlay --early-start: exit %d\n%s", code, stderr)
	}
	t.Logf("cloudlet overlay --early-start (%.1fs): %s\n%s", time.Since(start).Seconds(), strings.TrimSpace(out), indent(stderr))
	m := regexp.MustCompile(`in access order: (\d+) bytes \(in offset order: (\d+) bytes\)`).FindStringSubmatch(stderr)
	if m == nil {
		t.Fatalf("cloudlet overlay --early-start said nothing of the two sizes")
	}
	access, _ := strconv.ParseFloat(m[1], 64)
	offset, _ := strconv.ParseFloat(m[2], 64)
	t.Logf("overlay: %.0f bytes in access order, %.0f in offset order (%+.2f%%)", access, offset, (access/offset-1)*100)
	if access > offset*1.02 {
		t.Errorf("the access-ordered overlay is %.0f bytes, more than 2%% over the offset-ordered %.0f", access, offset)
	}
	info, _, code := e.run(time.Minute, nil, filepath.Join(binDir, "stream-inspect"), ovl)
	var s struct{ Order string }
	if code != 0 || json.Unmarshal([]byte(info), &s) != nil || s.Order != "access" {
		t.Fatalf("stream-inspect %s: exit %d, order %q; want access", ovl, code, s.Order)
	}
	if left, _ := filepath.Glob(ovl + ".*"); len(left) > 0 {
		t.Errorf("temporary files left beside the overlay: %v", left)
	}

	server := func(js string) int {
		var v struct {
			Server int `json:"server_pid"`
		}
		json.Unmarshal([]byte(js), &v)
		return v.Server
	}
	sshOpts := startSSHD(t, e.path("ssh"))
	remote := func(extra ...string) (instance, int) {
		t.Helper()
		p := guesttest.FreePort(t)
		js := e.cloudlet(append([]string{"synthesis", ovl, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts,
			"--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"),
			"--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", fmt.Sprintf("r%d", p))}, extra...)...)
		in := parseInstance(t, js)
		e.checkApp(in, p, baseID)
		return in, server(js)
	}
	// A 10 Mbit/s link: the default is early start.
	e.env = []string{"CLOUDLET_LINK_MBIT=10"}
	in, srv := remote()
	if srv == 0 {
		t.Errorf("over a 10 Mbit/s link, an access-ordered overlay was not started early (no server_pid)")
	}
	e.stop(in)

	// Through a real 10 Mbit/s link (ssh's ProxyCommand through
	// ratelimit), the front end prints the instance's JSON as soon as the
	// guest runs, long before the overlay has arrived, and the app answers
	// then; the command ends when all has arrived.
	ratelimit(t)
	cfg := e.path("ssh", "slow_config")
	os.WriteFile(cfg, []byte("Host *\n  ProxyCommand sh -c \"ratelimit -rate 10mbit | socat - TCP:%h:%p\"\n"), 0o600)
	p := guesttest.FreePort(t)
	cmd := exec.Command("bash", filepath.Join(repoRoot, "scripts", "cloudlet"), "synthesis", ovl, "--remote", "root@127.0.0.1",
		"--ssh-opts", sshOpts+" -F "+cfg, "--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"),
		"--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "slow"))
	cmd.Env = e.environ()
	stdout, _ := cmd.StdoutPipe()
	var errb bytes.Buffer
	cmd.Stderr = &errb
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	tJSON := time.Since(t0)
	if err != nil {
		cmd.Wait()
		t.Fatalf("cloudlet synthesis over 10 Mbit/s: no JSON: %v\n%s", err, errb.String())
	}
	in = parseInstance(t, line)
	e.checkApp(in, p, baseID)
	tApp := time.Since(t0)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("cloudlet synthesis over 10 Mbit/s: %v\n%s", err, errb.String())
	}
	tEnd := time.Since(t0)
	transfer := float64(offset) * 8 / 10e6
	t.Logf("over 10 Mbit/s (%.1f s of transfer): JSON at %.2fs, app checked at %.2fs, command ended at %.2fs", transfer, tJSON.Seconds(), tApp.Seconds(), tEnd.Seconds())
	if tJSON.Seconds() > transfer/2 || tEnd-tJSON < time.Duration(transfer/3*float64(time.Second)) {
		t.Errorf("early start through the front end: the JSON came at %.2fs and the command ended at %.2fs of a %.1f s transfer; want the JSON well before the end", tJSON.Seconds(), tEnd.Seconds(), transfer)
	}
	e.stop(in)

	in, srv = remote("--no-early-start")
	if srv != 0 {
		t.Errorf("--no-early-start: started early (server_pid %d)", srv)
	}
	e.stop(in)

	p = guesttest.FreePort(t)
	js := e.cloudlet("synthesis", ovl, "--early-start", "--forward", fmt.Sprintf("tcp:%d:80", p))
	in = parseInstance(t, js)
	if server(js) == 0 {
		t.Errorf("local --early-start: no server_pid")
	}
	e.checkApp(in, p, baseID)
	e.stop(in)
}
