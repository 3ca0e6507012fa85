package vm_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
	"cloudlet/lib/vm"
)

func TestMain(m *testing.M) { os.Exit(guesttest.Main(m)) }

// shortDir returns a short folder (unix socket paths are limited).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cloudlet-vmt-"+strconv.Itoa(os.Getpid())+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func startNoGuest(t *testing.T, c vm.Config) *vm.Instance {
	t.Helper()
	guesttest.RequireQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in, err := vm.Start(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = in.Stop(context.Background()) })
	return in
}

// Without a kernel or disk QEMU just sits in the firmware: enough to check
// the layout and stopping.
func TestStartLayoutAndStopFallback(t *testing.T) {
	run := filepath.Join(shortDir(t), "run")
	in := startNoGuest(t, vm.Config{Name: "layout", RunDir: run, MemMiB: 64, MemShare: true, Accel: "tcg"})
	st, err := os.Stat(run)
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("run dir: %v %v", st.Mode(), err)
	}
	if st, err := os.Stat(in.MemPath()); err != nil || st.Size() != 64<<20 {
		t.Fatalf("mem file: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(in.PidFile())
		if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(in.Pid) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pidfile: %q %v", b, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// QEMU serves one QMP client at a time: holding the socket makes the
	// QMP quit fail, so Stop must fall back to SIGTERM.
	hold, err := net.Dial("unix", in.QMPPath())
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close()
	start := time.Now()
	if err := in.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Logf("stopped in %v", time.Since(start).Round(time.Millisecond))
	if in.Running() || syscall.Kill(in.Pid, 0) == nil {
		t.Fatal("QEMU still running")
	}
	if _, err := os.Stat(run); !os.IsNotExist(err) {
		t.Fatalf("run dir not removed: %v", err)
	}
}

func TestStopViaQMP(t *testing.T) {
	run := filepath.Join(shortDir(t), "run")
	in := startNoGuest(t, vm.Config{RunDir: run, MemMiB: 32, MemShare: true, Accel: "tcg", Incoming: true, Balloon: true, Net: true})
	start := time.Now()
	if err := in.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("QMP quit took %v", d)
	}
	if _, err := os.Stat(run); err != nil {
		t.Fatal("Shutdown removed the run dir")
	}
}

// share=off maps the base memory file privately: the firmware writes guest
// RAM, the file must not change.
func TestPrivateMemoryIsNeverWritten(t *testing.T) {
	d := shortDir(t)
	base := filepath.Join(d, "base.mem")
	pattern := bytes.Repeat([]byte("cloudlet-base-memory-"), (32<<20)/21+1)[:32<<20]
	if err := os.WriteFile(base, pattern, 0o400); err != nil {
		t.Fatal(err)
	}
	before := sha256.Sum256(pattern)
	in := startNoGuest(t, vm.Config{RunDir: filepath.Join(d, "run"), MemMiB: 32, MemPath: base, MemShare: false, Accel: "tcg"})
	time.Sleep(2 * time.Second) // let the firmware run and write RAM
	if err := in.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	after, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(after) != before {
		t.Fatal("base memory file was written")
	}
	// A base file of the wrong size is refused before QEMU starts.
	ctx := context.Background()
	if _, err := vm.Start(ctx, vm.Config{RunDir: filepath.Join(d, "run2"), MemMiB: 64, MemPath: base}); err == nil {
		t.Fatal("size mismatch accepted")
	}
}

func TestProbeKVMCached(t *testing.T) {
	k := guesttest.Kit(t)
	t.Setenv("XDG_CACHE_HOME", t.TempDir())
	ctx := context.Background()
	start := time.Now()
	ok, err := vm.ProbeKVM(ctx, "", k.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM usable: %v, probe: %v in %v", vm.KVMUsable(), ok, time.Since(start).Round(time.Millisecond))
	if ok && !vm.KVMUsable() {
		t.Fatal("probe succeeded without /dev/kvm")
	}
	start = time.Now()
	if ok2, _ := vm.ProbeKVM(ctx, "", k.Kernel); ok2 != ok || time.Since(start) > time.Second {
		t.Fatal("probe verdict not cached")
	}
	acc, err := vm.ResolveAccel(ctx, vm.Config{Accel: "auto", Kernel: k.Kernel, Binary: vm.DefaultBinary})
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]string{true: "kvm", false: "tcg"}[ok && vm.KVMUsable()]; acc != want {
		t.Fatalf("auto resolved to %s, want %s", acc, want)
	}
}

// A QEMU that exits while starting is reported by Start itself, with what
// QEMU said, and leaves no process behind.
func TestStartReportsEarlyExit(t *testing.T) {
	guesttest.RequireQEMU(t)
	run := filepath.Join(shortDir(t), "run")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in, err := vm.Start(ctx, vm.Config{Name: "early", RunDir: run, MemMiB: 64, MemShare: true, Accel: "tcg",
		ExtraArgs: []string{"-device", "no-such-device-cloudlet"}})
	if err == nil {
		in.Stop(context.Background())
		t.Fatal("Start succeeded with a bad device")
	}
	if !strings.Contains(err.Error(), "exited during start") || !strings.Contains(err.Error(), "no-such-device-cloudlet") {
		t.Errorf("error does not say QEMU exited and why: %v", err)
	}
}
