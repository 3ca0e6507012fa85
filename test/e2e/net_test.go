package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
)

// TestNetPolicy (issue 31): what a synthesized guest's network reaches,
// per policy, checked from inside the guests against a host service on
// 127.0.0.1, another instance's forward (also one listening on every
// address) and an "outside" web server in a network namespace the test
// makes. Every refusal has a control that succeeds the same way (the guest
// fetching its own page), so a broken console or wget cannot pass for
// isolation; every page still answers from the host through its forward.
func TestNetPolicy(t *testing.T) {
	if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
		t.Skip("the outbound policy and the outside namespace need root")
	}
	e := newEnv(t)

	// A service of the host's that trusts loopback.
	hl, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go http.Serve(hl, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "host-secret") }))
	t.Cleanup(func() { hl.Close() })
	hostPort := hl.Addr().(*net.TCPAddr).Port

	outsideIP := outsideHost(t, e)

	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "netbase", "--out", e.path("netbase"), "--cmd", "sync")
	p0 := guesttest.FreePort(t)
	ovl := e.path("net.overlay")
	e.cloudlet("overlay", e.path("netbase"), "--name", "net", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", p0),
		"--cmd", "echo net-page-"+baseID[:8]+" > /www/index.html && clwork serve")
	page := "net-page-" + baseID[:8]

	synth := func(name, policy, fwd string) instance {
		t.Helper()
		args := []string{"synthesis", ovl, "--name", name, "--forward", fwd, "--run-dir", e.path("run", name)}
		if policy != "" {
			args = append(args, "--net", policy)
		}
		in := parseInstance(t, e.cloudlet(args...))
		var v struct {
			Net string `json:"net"`
		}
		if js, err := os.ReadFile(filepath.Join(in.RunDir, "instance.json")); err != nil || json.Unmarshal(js, &v) != nil {
			t.Errorf("%s: instance.json: %v", name, err)
		}
		want := policy
		if want == "" {
			want = "isolated"
		}
		if v.Net != want {
			t.Errorf("%s: instance.json says net %q, want %q", name, v.Net, want)
		}
		if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/", in.Forwards[0].HostPort), 30*time.Second); err != nil || strings.TrimSpace(got) != page {
			t.Errorf("%s (%s): its page through its forward from the host: %q, %v", name, want, got, err)
		}
		return in
	}
	a := synth("a", "", "tcp:0.0.0.0:0:80") // isolated by default, forward on every address
	b := synth("b", "isolated", "tcp:0:80")
	c := synth("c", "outbound", "tcp:0:80")
	d := synth("d", "host", "tcp:0:80")
	aPort := a.Forwards[0].HostPort
	if a.Forwards[0].HostAddr != "0.0.0.0" {
		t.Errorf("a's forward listens on %q, want 0.0.0.0 as asked", a.Forwards[0].HostAddr)
	}

	// fetch runs wget in a guest and reports whether it printed want.
	fetch := func(in instance, url, want string) (bool, string) {
		t.Helper()
		out := e.console(in.RunDir, "timeout 8 wget -q -O - "+url+" 2>&1; echo rc=$?")
		return strings.Contains(out, want) && strings.Contains(out, "rc=0"), out
	}
	expect := func(who string, in instance, url, want string, ok bool) {
		t.Helper()
		got, out := fetch(in, url, want)
		if got != ok {
			t.Errorf("%s: wget %s: reached %v, want %v (output %q)", who, url, got, ok, out)
		}
	}
	for _, g := range []struct {
		name string
		in   instance
	}{{"isolated b", b}, {"outbound c", c}, {"host d", d}} {
		expect(g.name+" (control: its own page)", g.in, "http://127.0.0.1:80/", page, true)
	}
	// Isolated: nothing.
	expect("isolated b to another instance's forward", b, fmt.Sprintf("http://10.0.2.2:%d/", aPort), page, false)
	expect("isolated b to the host's loopback", b, fmt.Sprintf("http://10.0.2.2:%d/", hostPort), "host-secret", false)
	expect("isolated b to the outside", b, "http://"+outsideIP+":8080/", "outside-page", false)
	// Outbound: the outside only.
	expect("outbound c to the outside", c, "http://"+outsideIP+":8080/", "outside-page", true)
	expect("outbound c to the host's loopback", c, fmt.Sprintf("http://10.0.2.2:%d/", hostPort), "host-secret", false)
	expect("outbound c to another instance's forward (10.0.2.2)", c, fmt.Sprintf("http://10.0.2.2:%d/", aPort), page, false)
	for _, ip := range hostIPs(t) { // a forward on 0.0.0.0, through the host's own addresses
		expect("outbound c to another instance's forward at "+ip, c, fmt.Sprintf("http://%s:%d/", ip, aPort), page, false)
	}
	// Host: as before the policies.
	expect("host d to the host's loopback", d, fmt.Sprintf("http://10.0.2.2:%d/", hostPort), "host-secret", true)

	// c's namespace, to check it goes with c (other instances on the
	// host may have namespaces of their own).
	var cj struct {
		NS  string `json:"netns"`
		Ino uint64 `json:"netns_ino"`
	}
	if b, err := os.ReadFile(filepath.Join(c.RunDir, "jail.json")); err != nil || json.Unmarshal(b, &cj) != nil || cj.NS == "" {
		t.Errorf("c's jail.json names no namespace: %s, %v", b, err)
	}
	for _, in := range []instance{a, b, c, d} {
		e.stop(in)
	}
	var st syscall.Stat_t
	if cj.NS != "" && syscall.Stat(filepath.Join("/run/netns", cj.NS), &st) == nil && st.Ino == cj.Ino {
		t.Errorf("c's network namespace %s is left after stop", cj.NS)
	}
}

// outsideHost makes a network namespace joined to the host by a veth pair,
// with a web server on port 8080 that answers "outside-page": a host of
// the outside world. It returns its address.
func outsideHost(t *testing.T, e *env) string {
	t.Helper()
	id := fmt.Sprintf("%d", os.Getpid()%10000)
	ns, hv, ov := "clt-out-"+id, "clto"+id, "cltp"+id
	hostIP, outIP := "10.214.7.1", "10.214.7.2"
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", ns).Run() // a run before that was killed
	run("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "link", "add", hv, "type", "veth", "peer", "name", ov, "netns", ns)
	run("ip", "addr", "add", hostIP+"/30", "dev", hv)
	run("ip", "link", "set", hv, "up")
	run("ip", "-n", ns, "link", "set", "lo", "up")
	run("ip", "-n", ns, "addr", "add", outIP+"/30", "dev", ov)
	run("ip", "-n", ns, "link", "set", ov, "up")
	www := e.path("outside-www")
	os.MkdirAll(www, 0o755)
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("outside-page\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := exec.Command("ip", "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "8080", "-h", www)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	// The host reaches it (so a guest that does not is refused, not lost).
	if got, err := httpGet("http://"+outIP+":8080/", 10*time.Second); err != nil || strings.TrimSpace(got) != "outside-page" {
		t.Fatalf("the outside host does not answer the host: %q, %v", got, err)
	}
	return outIP
}

// hostIPs returns the host's own IPv4 addresses other than loopback.
func hostIPs(t *testing.T) []string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range addrs {
		if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
			out = append(out, ip.IP.String())
		}
	}
	return out
}
