package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/console"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/instance"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"
)

// handVM is a QEMU started the way a user starts one by hand: no
// -nodefaults (QEMU's default VGA, serial and parallel ports), the kit's
// kernel, a virtio-blk disk on a qcow2 top layer, a virtio-net NIC with
// its default option ROM, QMP and the serial console on sockets.
type handVM struct {
	dir, top, qmp, serial string
	cmd                   *exec.Cmd
	log                   bytes.Buffer
	exited                chan struct{}
}

// foreignAccel is the accelerator of both QEMUs: the hand-started one
// uses QEMU's default (TCG) unless CLOUDLET_ACCEL=kvm.
func foreignAccel() string {
	if os.Getenv("CLOUDLET_ACCEL") == "kvm" {
		return "kvm"
	}
	return "tcg"
}

func startHand(t *testing.T, kit guesttest.GuestKit, port int, extra ...string) *handVM {
	t.Helper()
	dir, err := os.MkdirTemp("", "clforeign-") // short: unix socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	h := &handVM{dir: dir, top: filepath.Join(dir, "top.qcow2"), qmp: filepath.Join(dir, "qmp.sock"),
		serial: filepath.Join(dir, "serial.sock"), exited: make(chan struct{})}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", kit.Rootfs, "-F", "raw", h.top).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	args := []string{
		"-m", "256",
		"-kernel", kit.Kernel, "-initrd", kit.Initrd, "-append", vm.KitAppend,
		"-drive", "file=" + h.top + ",format=qcow2,if=none,id=d0",
		"-device", "virtio-blk-pci,drive=d0",
		"-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:80", port),
		"-device", "virtio-net-pci,netdev=n0",
		"-serial", "unix:" + h.serial + ",server=on,wait=off",
		"-qmp", "unix:" + h.qmp + ",server=on,wait=off",
		"-display", "none",
	}
	if foreignAccel() == "kvm" {
		args = append(args, "-accel", "kvm")
	}
	h.cmd = exec.Command("qemu-system-x86_64", append(args, extra...)...)
	h.cmd.Dir = dir
	h.cmd.Stdout, h.cmd.Stderr = &h.log, &h.log
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { h.cmd.Wait(); close(h.exited) }()
	t.Cleanup(func() {
		h.cmd.Process.Kill()
		<-h.exited
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := vm.QMPPing(ctx, h.qmp)
		cancel()
		if err == nil {
			return h
		}
		select {
		case <-h.exited:
			t.Fatalf("hand-started QEMU exited: %s", h.log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("hand-started QEMU: no QMP after 30 s: %v; %s", err, h.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// status asks the hand-started QEMU whether it runs.
func (h *handVM) status(t *testing.T) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmpctl.Dial(ctx, h.qmp)
	if err != nil {
		t.Fatalf("QMP of the hand-started QEMU: %v", err)
	}
	defer c.Close()
	st, _, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// capture runs vm-capture --qmp on it; it returns the stream, stderr and
// the exit status.
func (h *handVM) capture(t *testing.T, args ...string) ([]byte, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := exec.CommandContext(ctx, filepath.Join(binDir, "vm-capture"), append([]string{"--qmp", h.qmp, "--disk", h.top}, args...)...)
	var out, errb bytes.Buffer
	c.Stdout, c.Stderr = &out, &errb
	err := c.Run()
	return out.Bytes(), errb.String(), err
}

func guestRun(t *testing.T, con *console.Console, cmdline string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, code, err := con.Run(ctx, cmdline)
	if err != nil || code != 0 {
		t.Fatalf("guest: %s: exit %d, %v: %s\nconsole tail:\n%s", cmdline, code, err, out, con.Tail(2000))
	}
	return out
}

func httpGet(url string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	var last error
	for i := 0; i < 60; i++ {
		resp, err := c.Get(url)
		if err == nil {
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode == 200 {
				return string(b), nil
			}
			last = fmt.Errorf("status %s, %v", resp.Status, err)
		} else {
			last = err
		}
		time.Sleep(250 * time.Millisecond)
	}
	return "", last
}

// Issue 17 part 3: a QEMU started by hand with an ordinary command line is
// captured with vm-capture --qmp and resumes with vm-resume: its device set
// (QEMU's default VGA, serial and parallel ports, the NIC's option ROM, the
// PCI addresses QEMU chose) travels in the stream and is recreated.
func TestForeignVMResumes(t *testing.T) {
	kit := guesttest.Kit(t)
	port := guesttest.FreePort(t)
	h := startHand(t, kit, port)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	con, err := console.Dial(ctx, h.serial)
	if err != nil {
		t.Fatal(err)
	}
	defer con.Close()
	if err := con.WaitFor(ctx, guesttest.ReadyMarker); err != nil {
		t.Fatalf("hand-started guest not ready: %v\n%s\n%s", err, con.Tail(3000), h.log.String())
	}
	con.WaitFor(ctx, "\n")
	mark := fmt.Sprintf("foreign-%d", time.Now().UnixNano())
	guestRun(t, con, "echo "+mark+" > /root/mark && sync")
	guestRun(t, con, "clwork counter --file /run/counter &")
	guestRun(t, con, "clwork serve >/dev/null 2>&1 &")
	page, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", port))
	if err != nil {
		t.Fatalf("the hand-started guest's web server: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	before, _ := strconv.Atoi(guestRun(t, con, "cat /run/counter"))
	con.Close()

	stream, stderr, err := h.capture(t, "--quit")
	if err != nil {
		t.Fatalf("vm-capture --qmp: %v\n%s", err, stderr)
	}
	select {
	case <-h.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("vm-capture --quit left the hand-started QEMU running")
	}
	r := format.NewReader(bytes.NewReader(stream))
	hd, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("captured %d bytes; devices %v", len(stream), hd.VM.Devices)
	for _, want := range []string{"VGA at 02.0", "virtio-blk-pci at 03.0", "virtio-net-pci at 04.0", "isa-serial 0", "isa-parallel 0"} {
		if !strings.Contains(fmt.Sprint(hd.VM.Devices), want) {
			t.Errorf("recorded devices %v lack %s", hd.VM.Devices, want)
		}
	}

	run := filepath.Join(h.dir, "run")
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer rcancel()
	res := exec.CommandContext(rctx, filepath.Join(binDir, "vm-resume"), "--kit", kit.Dir, "--image", kit.Rootfs,
		"--run-dir", run, "--name", "foreign", "--accel", foreignAccel(), "--forward", "tcp:0:80")
	res.Env = append(os.Environ(), "CLOUDLET_RUN_DIR="+filepath.Join(h.dir, "runs"))
	var out, errb bytes.Buffer
	res.Stdin, res.Stdout, res.Stderr = bytes.NewReader(stream), &out, &errb
	err = res.Run()
	t.Cleanup(func() {
		exec.Command(filepath.Join(binDir, "vm-resume"), "stop", run).Run()
		if out, _ := exec.Command("pgrep", "-f", h.dir).Output(); len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("processes left under %s: %s", h.dir, out)
		}
	})
	if err != nil {
		qlog, _ := os.ReadFile(filepath.Join(run, vm.LogFileName))
		t.Fatalf("vm-resume: %v\n%s\nQEMU log: %s", err, errb.String(), qlog)
	}
	var sum instance.Summary
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil || len(sum.Forwards) != 1 {
		t.Fatalf("vm-resume printed %q: %v", out.String(), err)
	}
	con2, err := console.Dial(ctx, sum.Serial)
	if err != nil {
		t.Fatal(err)
	}
	defer con2.Close()
	if got := guestRun(t, con2, "cat /root/mark"); got != mark {
		t.Errorf("/root/mark after resume = %q; want %q", got, mark)
	}
	if after, _ := strconv.Atoi(guestRun(t, con2, "cat /run/counter")); after < before {
		t.Errorf("counter %d after resume; was %d before capture", after, before)
	}
	if got, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/index.html", sum.Forwards[0].HostPort)); err != nil || got != page {
		t.Errorf("the resumed guest's web server: %v (%d bytes, want %d)", err, len(got), len(page))
	}
	// Its instance.json carries the devices, for the next capture.
	info, err := instance.Read(run)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(info.VM.Devices) != fmt.Sprint(hd.VM.Devices) {
		t.Errorf("instance devices %v; captured %v", info.VM.Devices, hd.VM.Devices)
	}
}

// A hand-started QEMU with a device vm-resume cannot recreate is refused
// at capture time, naming the device, with an ERROR record on stdout, and
// the VM keeps running.
func TestForeignVMRefused(t *testing.T) {
	kit := guesttest.Kit(t)
	for _, tc := range []struct {
		name  string
		extra func(dir string) []string
		want  []string
	}{
		{"rng", func(string) []string { return []string{"-device", "virtio-rng-pci,id=rng0"} },
			[]string{"device rng0 (virtio-rng-pci) cannot be recreated by vm-resume", "remove it from the VM's configuration"}},
		{"second disk", func(dir string) []string {
			return []string{"-drive", "file=" + filepath.Join(dir, "second.qcow2") + ",format=qcow2,if=none,id=d1", "-device", "virtio-blk-pci,drive=d1,id=data"}
		}, []string{"device data (virtio-blk-pci)", "second disk"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(dir, "second.qcow2"), "64M").CombinedOutput(); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			h := startHand(t, kit, guesttest.FreePort(t), tc.extra(dir)...)
			stream, stderr, err := h.capture(t, "--quit")
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("vm-capture: %v; want exit status 1\n%s", err, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			r := format.NewReader(bytes.NewReader(stream))
			var up *format.UpstreamError
			if _, err := r.Header(); !errors.As(err, &up) || !strings.Contains(up.Message, tc.want[0]) {
				t.Errorf("stream: %v; want an ERROR record naming the device", err)
			}
			if st := h.status(t); st != "running" {
				t.Errorf("the refused VM is %q; want running", st)
			}
		})
	}
}
