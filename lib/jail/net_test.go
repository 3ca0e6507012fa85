package jail

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/lib/vm"
)

func TestParsePolicy(t *testing.T) {
	for in, want := range map[string]Policy{"": Isolated, "isolated": Isolated, "outbound": Outbound, "host": Host} {
		if got, err := ParsePolicy(in); err != nil || got != want {
			t.Errorf("ParsePolicy(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParsePolicy("open"); err == nil {
		t.Error("ParsePolicy(open) accepted")
	}
}

// Isolated restricts the user-mode network and host leaves it as it is;
// neither needs anything torn down.
func TestPrepareIsolatedHost(t *testing.T) {
	for _, p := range []Policy{Isolated, Host} {
		cfg := vm.Config{Forwards: []vm.Forward{{Proto: "tcp", HostPort: 0, GuestPort: 80}}}
		j, err := Prepare(t.TempDir(), Options{Net: p}, &cfg)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.NetRestrict != (p == Isolated) || cfg.NetNS != "" || len(j.Forwards(cfg.Forwards)) != 1 {
			t.Errorf("%s: restrict %v, netns %q, forwards %v", p, cfg.NetRestrict, cfg.NetNS, j.Forwards(cfg.Forwards))
		}
		j.Teardown()
	}
}

// Outbound makes a namespace with its veth and takes it down again; a
// Teardown that comes late (a proxy noticing its QEMU gone after the
// instance was stopped) never removes another instance's namespace that
// took the same name.
func TestOutboundNamespace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true)")
		}
		t.Skip("needs root")
	}
	dir := t.TempDir()
	cfg := vm.Config{Forwards: []vm.Forward{{Proto: "tcp", HostAddr: "127.0.0.1", GuestPort: 80}}}
	j, err := Prepare(dir, Options{Net: Outbound}, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	name := j.NS
	if cfg.NetNS != filepath.Join(netnsDir, name) || cfg.Forwards[0].HostAddr != j.GuestIP || cfg.Forwards[0].HostPort != innerPort(0) || cfg.Forwards[0].GuestPort != 80 {
		t.Errorf("QEMU's config: netns %q, forwards %+v; want %s and %s:%d to guest 80", cfg.NetNS, cfg.Forwards, name, j.GuestIP, innerPort(0))
	}
	outer := j.Forwards(cfg.Forwards)
	if len(outer) != 1 || outer[0].HostPort == 0 || outer[0].HostAddr != "127.0.0.1" {
		t.Errorf("the forwards users reach: %+v; want 127.0.0.1 and a free port bound", outer)
	}
	if out, err := exec.Command("ip", "-n", name, "-4", "addr", "show").CombinedOutput(); err != nil || !strings.Contains(string(out), j.GuestIP) {
		t.Errorf("namespace %s: %v %s; want address %s", name, err, out, j.GuestIP)
	}
	late, err := Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	j.Teardown()
	if _, err := os.Stat(filepath.Join(netnsDir, name)); !os.IsNotExist(err) {
		t.Fatalf("namespace %s still there after Teardown", name)
	}
	// Another instance takes the name; the late Teardown leaves it alone.
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	defer exec.Command("ip", "netns", "del", name).Run()
	late.Teardown()
	if _, err := os.Stat(filepath.Join(netnsDir, name)); err != nil {
		t.Errorf("a late Teardown removed another namespace named %s", name)
	}
}
