package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
)

// TestTenantLimits (issue 25, item 2): each synthesized instance runs in a
// cgroup of its own with the default limits (memory: guest RAM + 256 MiB,
// one CPU share, 512 pids), and every file it writes in its run folder is
// capped: a guest that writes more to its disk than --file-cap gets disk
// errors and its top layer stays under the cap, a guest that floods its
// console leaves a console log under the cap, and a second instance keeps
// answering meanwhile. After stop no cgroup is left.
func TestTenantLimits(t *testing.T) {
	if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
		t.Skip("cgroups need root")
	}
	e := newEnv(t)
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "tlbase", "--out", e.path("tlbase"), "--cmd", "sync")
	ovl := e.path("tl.overlay")
	e.cloudlet("overlay", e.path("tlbase"), "--name", "tl", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", guesttest.FreePort(t)),
		"--cmd", "echo tl-page-"+baseID[:8]+" > /www/index.html && clwork serve")
	page := "tl-page-" + baseID[:8]

	const capMiB = 24
	synth := func(name string, extra ...string) instance {
		t.Helper()
		p := guesttest.FreePort(t)
		in := parseInstance(t, e.cloudlet(append([]string{"synthesis", ovl, "--name", name, "--forward", fmt.Sprintf("tcp:%d:80", p),
			"--run-dir", e.path("run", name)}, extra...)...))
		return in
	}
	e.env = []string{fmt.Sprintf("CLOUDLET_FILE_CAP=%dM", capMiB)}
	a := synth("a")
	e.env = nil
	b := synth("b")
	pageOf := func(in instance) (string, error) {
		return httpGet(fmt.Sprintf("http://127.0.0.1:%d/", in.Forwards[0].HostPort), 20*time.Second)
	}

	// The cgroup: QEMU is in it, with the limits.
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", a.Pid))
	if err != nil {
		t.Fatal(err)
	}
	group := cgroupOf(t, a.RunDir)
	if !strings.Contains(string(cg), group) {
		t.Fatalf("QEMU (pid %d) is not in cgroup %s:\n%s", a.Pid, group, cg)
	}
	limit := readCgroup(t, group, "memory", "memory.limit_in_bytes", "memory.max")
	if want := int64(256+256) << 20; limit != want {
		t.Errorf("memory limit %d, want %d (256 MiB of RAM + 256 MiB)", limit, want)
	}
	if pids := readCgroup(t, group, "pids", "pids.max", "pids.max"); pids != 512 {
		t.Errorf("pids.max %d, want 512", pids)
	}

	// a writes 3 times its cap to its disk, then floods its console.
	out := e.console(a.RunDir, fmt.Sprintf("dd if=/dev/urandom of=/root/big bs=1M count=%d conv=fsync 2>&1 | tail -1; echo rc=$?; sync", 3*capMiB))
	t.Logf("a: dd past the cap: %s", out)
	if strings.Contains(out, fmt.Sprintf("%d+0 records out", 3*capMiB)) && !strings.Contains(out, "error") {
		// The write may have landed in the guest's page cache; fsync must fail.
		t.Errorf("a wrote %d MiB to its disk past a %d MiB cap without an error: %q", 3*capMiB, capMiB, out)
	}
	for _, f := range []string{"disk.qcow2", "serial.log", "qemu.log"} {
		if st, err := os.Stat(filepath.Join(a.RunDir, f)); err == nil && st.Size() > capMiB<<20 {
			t.Errorf("a's %s is %d bytes, over the %d MiB cap", f, st.Size(), capMiB)
		}
	}
	// c floods its console (about 70 KB/s under TCG here) with a cap of
	// 1 MiB: its log stops there, and reached it (else nothing was tested).
	const smallCap = 1 << 20
	e.env = []string{fmt.Sprintf("CLOUDLET_FILE_CAP=%d", smallCap)}
	c := synth("c")
	e.env = nil
	flood := exec10s(e, c.RunDir, "timeout 40 yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx > /dev/ttyS0; echo flood-done")
	t.Logf("c: console flood: %.60s", flood)
	if st, err := os.Stat(filepath.Join(c.RunDir, "serial.log")); err != nil || st.Size() > smallCap || st.Size() < smallCap-64<<10 {
		t.Errorf("c's console log after 40 s of flood: %v bytes (%v); want it stopped at the %d-byte cap", st.Size(), err, smallCap)
	}
	if got, err := pageOf(c); err != nil || strings.TrimSpace(got) != page {
		t.Errorf("c's page after its console log hit the cap: %q, %v", got, err)
	}
	e.stop(c)
	if got, err := pageOf(b); err != nil || strings.TrimSpace(got) != page {
		t.Errorf("b's page while a hit its caps: %q, %v", got, err)
	}
	e.stop(a)
	e.stop(b)
	for _, ctrl := range []string{"memory", "pids", "cpu", ""} {
		if _, err := os.Stat(filepath.Join("/sys/fs/cgroup", ctrl, group)); err == nil {
			t.Errorf("cgroup %s left after stop", filepath.Join("/sys/fs/cgroup", ctrl, group))
		}
	}
}

// readCgroup reads a number from a cgroup file, v1 (controller folder,
// file v1) or v2 (file v2).
func readCgroup(t *testing.T, group, ctrl, v1, v2 string) int64 {
	t.Helper()
	p := filepath.Join("/sys/fs/cgroup", ctrl, group, v1)
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		p = filepath.Join("/sys/fs/cgroup", group, v2)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q", p, b)
	}
	return n
}

// exec10s runs a console command that may not answer (a console kept busy)
// and returns what came back within a minute, without failing the test.
func exec10s(e *env, run, cmd string) string {
	out, stderr, _ := e.run(time.Minute, nil, filepath.Join(binDir, "vm-console"), "--timeout", "60s", run, cmd)
	return strings.TrimSpace(out + stderr)
}

// cgroupOf returns an instance's cgroup, cloudlet/NAME, from its jail.json.
func cgroupOf(t *testing.T, run string) string {
	t.Helper()
	var j struct{ Cgroups []string }
	b, err := os.ReadFile(filepath.Join(run, "jail.json"))
	if err != nil || json.Unmarshal(b, &j) != nil || len(j.Cgroups) == 0 {
		t.Fatalf("%s/jail.json names no cgroup: %s %v", run, b, err)
	}
	return "cloudlet/" + filepath.Base(j.Cgroups[0])
}
