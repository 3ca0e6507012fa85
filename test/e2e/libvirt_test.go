package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
	"cloudlet/lib/virt/virttest"
	"cloudlet/lib/vm"

	"libvirt.org/go/libvirtxml"
)

// libvirtDomain reads the libvirt domain from vm-resume's JSON line.
func libvirtDomain(t *testing.T, js string) string {
	t.Helper()
	var v struct {
		Domain string `json:"libvirt_domain"`
		URI    string `json:"libvirt_uri"`
	}
	if err := json.Unmarshal([]byte(js), &v); err != nil || v.Domain == "" || v.URI == "" {
		t.Fatalf("instance JSON without libvirt_domain/libvirt_uri (%v): %s", err, js)
	}
	return v.Domain
}

// virsh runs virsh and fails the test if it fails.
func virsh(t *testing.T, uri string, args ...string) string {
	t.Helper()
	out, err := virttest.Virsh(t, uri, args...)
	if err != nil {
		t.Fatalf("virsh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func domainListed(t *testing.T, uri, name string) bool {
	t.Helper()
	for _, n := range strings.Fields(virsh(t, uri, "list", "--name")) {
		if n == name {
			return true
		}
	}
	return false
}

// virshConsole types a command line into virsh console (on a
// pseudo-terminal, as virsh wants) and returns what came back.
func virshConsole(t *testing.T, uri, dom, line string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "script", "-qfec", fmt.Sprintf("virsh -c %s console %s --force", uri, dom), "/dev/null")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	io.WriteString(in, line+"\r")
	time.Sleep(2 * time.Second)
	io.WriteString(in, "\x1d") // Ctrl-]: leave the console
	in.Close()
	cmd.Wait()
	return out.String()
}

// pipeline runs a shell pipeline of the tools in the test's environment.
func (e *env) pipeline(script string) {
	e.t.Helper()
	out, stderr, code := e.run(4*time.Minute, nil, "bash", "-o", "pipefail", "-c", script)
	if code != 0 {
		e.t.Fatalf("%s: exit %d\n%s%s", script, code, out, stderr)
	}
}

// TestLibvirtSynthesis: a base made in a libvirt domain, an app overlay,
// synthesis into a libvirt domain (the app answers through its forwarded
// port, virsh sees and drives the domain), a capture of that domain into
// a new overlay and its synthesis again, and virsh destroy ending it.
func TestLibvirtSynthesis(t *testing.T) {
	e := newEnv(t)
	uri := virttest.Daemon(t, repoRoot)

	baseDir := e.path("base")
	baseID := e.cloudlet("base", e.kit.Rootfs, "--name", "lvbase", "--out", baseDir, "--libvirt", uri, "--cmd", "sync")
	if len(baseID) != 64 {
		t.Fatalf("base ID %q", baseID)
	}
	port := guesttest.FreePort(t)
	ovl := e.path("app.overlay")
	e.cloudlet(append([]string{"overlay", baseDir, "--name", "app", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", port)},
		appCmds(baseID)...)...)

	// Synthesis into libvirt.
	p := guesttest.FreePort(t)
	start := time.Now()
	js := e.cloudlet("synthesis", ovl, "--libvirt", uri, "--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "lv1"))
	in := parseInstance(t, js)
	t.Logf("synthesis into libvirt: %.2fs, vm-resume timings %v", time.Since(start).Seconds(), in.Timings)
	dom := libvirtDomain(t, js)
	if !domainListed(t, uri, dom) {
		t.Fatalf("domain %s not in virsh list", dom)
	}
	if info := virsh(t, uri, "dominfo", dom); !strings.Contains(info, "running") {
		t.Errorf("virsh dominfo %s: not running:\n%s", dom, info)
	}
	if st := virsh(t, uri, "qemu-monitor-command", dom, "--hmp", "info status"); !strings.Contains(st, "running") {
		t.Errorf("virsh qemu-monitor-command %s: %q", dom, st)
	}
	e.checkApp(in, p, baseID)
	if out := virshConsole(t, uri, dom, "echo virsh-console-$((6*7))"); !strings.Contains(out, "virsh-console-42") {
		t.Errorf("virsh console %s: the command's output is not there:\n%s", dom, out)
	}

	// A truncated overlay: the synthesis fails, and neither a domain nor a
	// run folder is left.
	whole, err := os.ReadFile(ovl)
	if err != nil {
		t.Fatal(err)
	}
	badRun := e.path("run", "lv-bad")
	out, stderr, code := e.run(2*time.Minute, bytes.NewReader(whole[:len(whole)*2/3]), "bash", "-o", "pipefail", "-c",
		fmt.Sprintf("overlay-apply --base %s | vm-resume --base %s --libvirt %s --run-dir %s", baseDir, baseDir, uri, badRun))
	if code == 0 {
		t.Errorf("a truncated overlay synthesized: %s", out)
	}
	t.Logf("truncated overlay: exit %d: %s", code, strings.TrimSpace(stderr))
	if domainListed(t, uri, filepath.Base(badRun)) {
		t.Errorf("domain %s left after a failed synthesis", filepath.Base(badRun))
	}
	if _, err := os.Stat(badRun); !os.IsNotExist(err) {
		t.Errorf("run folder %s left after a failed synthesis", badRun)
	}

	// Capture the libvirt domain into an overlay, synthesize it again.
	ovl2 := e.path("again.overlay")
	e.pipeline(fmt.Sprintf("vm-capture --libvirt %s --domain %s --quit | mem-diff --base %s | disk-diff --base %s | overlay-pack > %s",
		uri, dom, baseDir, baseDir, ovl2))
	if domainListed(t, uri, dom) {
		t.Errorf("domain %s still listed after vm-capture --quit", dom)
	}
	if _, err := os.Stat(in.RunDir); !os.IsNotExist(err) {
		t.Errorf("run folder %s left after vm-capture --quit", in.RunDir)
	}
	p2 := guesttest.FreePort(t)
	js2 := e.cloudlet("synthesis", ovl2, "--libvirt", uri, "--forward", fmt.Sprintf("tcp:%d:80", p2), "--run-dir", e.path("run", "lv2"))
	in2 := parseInstance(t, js2)
	dom2 := libvirtDomain(t, js2)
	e.checkApp(in2, p2, baseID)

	// virsh destroy ends it; vm-resume stop (or the next sweep) removes
	// what is left.
	virsh(t, uri, "destroy", dom2)
	for i := 0; alive(in2.Pid); i++ {
		if i == 100 {
			t.Fatalf("QEMU pid %d alive after virsh destroy", in2.Pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if domainListed(t, uri, dom2) {
		t.Errorf("domain %s listed after virsh destroy", dom2)
	}
	if _, stderr, code := e.run(time.Minute, nil, filepath.Join(binDir, "vm-resume"), "stop", in2.RunDir); code != 0 {
		t.Errorf("vm-resume stop after virsh destroy: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(in2.RunDir); !os.IsNotExist(err) {
		t.Errorf("run folder %s left after virsh destroy and vm-resume stop", in2.RunDir)
	}
}

// TestLibvirtForeignDomain: a domain that libvirt configured its own way
// (its USB controller, balloon, display, a NIC with its option ROM, plain
// RAM, its own device names) is captured through libvirt and resumes,
// under libvirt and as a plain QEMU, with what the guest wrote.
func TestLibvirtForeignDomain(t *testing.T) {
	e := newEnv(t)
	uri := virttest.Daemon(t, repoRoot)
	dir := e.path("foreign")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	top := filepath.Join(dir, "top.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", e.kit.Rootfs, "-F", "raw", top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	name := filepath.Base(e.dir) + "-foreign"
	zero := uint(0)
	d := libvirtxml.Domain{
		Type: "qemu", Name: name,
		Memory: &libvirtxml.DomainMemory{Value: 256, Unit: "MiB"},
		VCPU:   &libvirtxml.DomainVCPU{Value: 1},
		OS: &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: vm.DefaultMachine, Type: "hvm"},
			Kernel: e.kit.Kernel, Initrd: e.kit.Initrd, Cmdline: vm.KitAppend},
		Features: &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		Devices: &libvirtxml.DomainDeviceList{
			Disks: []libvirtxml.DomainDisk{{Device: "disk",
				Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2"},
				Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: top}},
				Target: &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"}}},
			Interfaces: []libvirtxml.DomainInterface{{
				Source: &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
				Model:  &libvirtxml.DomainInterfaceModel{Type: "virtio"}}},
			Serials: []libvirtxml.DomainSerial{{Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
				Target: &libvirtxml.DomainSerialTarget{Port: &zero}}},
			Graphics: []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{Socket: filepath.Join(dir, "vnc.sock")}}},
		},
		// QEMU as root without relabelling: the kit image is shared with
		// the other tests.
		SecLabel: []libvirtxml.DomainSecLabel{{Type: "static", Model: "dac", Relabel: "no", Label: "+0:+0"}},
	}
	doc, err := d.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	xmlPath := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(t, uri, "create", xmlPath)
	t.Cleanup(func() { virttest.Virsh(t, uri, "destroy", name) })
	live := virsh(t, uri, "dumpxml", name)
	t.Logf("libvirt's own devices: usb %v, memballoon %v, video %v, rom %v",
		strings.Contains(live, "<controller type='usb'"), strings.Contains(live, "<memballoon model='virtio'"),
		strings.Contains(live, "<video>"), !strings.Contains(live, "<rom enabled='no'"))

	// Wait for the guest, leave a mark on its disk and in its memory.
	var pty libvirtxml.Domain
	if err := pty.Unmarshal(live); err != nil {
		t.Fatal(err)
	}
	console := pty.Devices.Serials[0].Source.Pty.Path
	vmConsole := func(args ...string) string {
		out, stderr, code := e.run(3*time.Minute, nil, filepath.Join(binDir, "vm-console"), append([]string{"--serial", console}, args...)...)
		if code != 0 {
			t.Fatalf("vm-console %v: exit %d: %s%s", args, code, out, stderr)
		}
		return strings.TrimSpace(out)
	}
	vmConsole("--wait-ready", "echo foreign-disk > /root/mark; echo foreign-mem > /run/mark; sync")

	full := e.path("foreign.stream")
	e.pipeline(fmt.Sprintf("vm-capture --libvirt %s --domain %s --quit > %s", uri, name, full))
	if domainListed(t, uri, name) {
		t.Errorf("domain %s still listed after vm-capture --quit", name)
	}
	info, _, _ := e.run(time.Minute, nil, filepath.Join(binDir, "stream-inspect"), full)
	var hdr struct {
		Header struct {
			VM struct {
				Devices []struct{ Driver, Addr, Romfile string } `json:"devices"`
			} `json:"vm"`
		} `json:"header"`
	}
	json.Unmarshal([]byte(info), &hdr)
	t.Logf("recorded devices: %+v", hdr.Header.VM.Devices)

	for _, mode := range []string{"libvirt", "plain"} {
		args := []string{"--kit", e.kit.Dir, "--run-dir", e.path("run", "foreign-"+mode)}
		if mode == "libvirt" {
			args = append(args, "--libvirt", uri)
		}
		f, err := os.Open(full)
		if err != nil {
			t.Fatal(err)
		}
		js, stderr, code := e.run(2*time.Minute, f, filepath.Join(binDir, "vm-resume"), args...)
		f.Close()
		if code != 0 {
			t.Fatalf("%s: vm-resume %v < foreign stream: exit %d\n%s", mode, args, code, stderr)
		}
		in := parseInstance(t, strings.TrimSpace(js))
		if got := e.console(in.RunDir, "cat /root/mark /run/mark"); got != "foreign-disk\nforeign-mem" {
			t.Errorf("%s: the guest's marks: %q", mode, got)
		}
		if mode == "libvirt" && !domainListed(t, uri, libvirtDomain(t, js)) {
			t.Errorf("resumed domain not listed")
		}
		e.stop(in)
	}
}

// TestLibvirtdAfterCrash: libvirtd and virtlogd were killed with SIGKILL
// and left their socket files (issue 28: a stale virtlogd-sock was taken
// for a live virtlogd, and every domain start failed). scripts/libvirtd.sh
// start must see that nothing answers, remove the stale files and start
// both, so a domain starts (libvirt opens its QEMU log through virtlogd).
func TestLibvirtdAfterCrash(t *testing.T) {
	uri := virttest.DaemonAfterCrash(t, repoRoot)
	for _, s := range []string{virttest.VirtlogSocket, virttest.LibvirtSocket} {
		c, err := net.Dial("unix", s)
		if err != nil {
			t.Fatalf("after scripts/libvirtd.sh start, %s does not answer: %v", s, err)
		}
		c.Close()
	}
	name := fmt.Sprintf("cloudlet-aftercrash-%d", os.Getpid())
	xml := filepath.Join(t.TempDir(), "dom.xml")
	dom := fmt.Sprintf(`<domain type='qemu'><name>%s</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>`, name)
	if err := os.WriteFile(xml, []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	virsh(t, uri, "create", xml)
	t.Cleanup(func() { virttest.Virsh(t, uri, "destroy", name) })
	if !domainListed(t, uri, name) {
		t.Fatalf("domain %s not running after virsh create", name)
	}
}
