package guesttest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/console"
	"cloudlet/lib/ready"
	"cloudlet/lib/vm"
)

// ReadyMarker is what the kit guest prints on its serial console once it is
// up (network configured, root shell starting).
const ReadyMarker = ready.KitMarker

// DefaultAppend is the kernel command line Boot uses.
const DefaultAppend = vm.KitAppend

// Manifest is the kit's manifest.json.
type Manifest struct {
	KernelVersion     string            `json:"kernel_version"`
	KernelPackage     string            `json:"kernel_package"`
	KernelDeb         string            `json:"kernel_deb"`
	KernelMetaPackage string            `json:"kernel_meta_package"`
	BusyboxDeb        string            `json:"busybox_deb"`
	Modules           string            `json:"modules"`
	SHA256            map[string]string `json:"sha256"`
}

// GuestKit is a built guest kit.
type GuestKit struct {
	Dir      string
	Kernel   string // vmlinuz
	Initrd   string // initrd.img
	Rootfs   string // rootfs.img: the base disk image, never written
	Manifest Manifest
}

// RepoRoot finds the repository root by walking up from the working
// directory to the folder holding go.mod.
func RepoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("guesttest: go.mod not found above the working directory")
		}
		d = p
	}
}

// KitDir returns where the kit is expected: $CLOUDLET_GUEST_DIR or
// <repo>/.cache/guest.
func KitDir() (string, error) {
	if d := os.Getenv("CLOUDLET_GUEST_DIR"); d != "" {
		return filepath.Abs(d)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "guest"), nil
}

// FindKit loads the kit without a testing.T.
func FindKit() (GuestKit, error) {
	dir, err := KitDir()
	if err != nil {
		return GuestKit{}, err
	}
	k := GuestKit{
		Dir:    dir,
		Kernel: filepath.Join(dir, "vmlinuz"),
		Initrd: filepath.Join(dir, "initrd.img"),
		Rootfs: filepath.Join(dir, "rootfs.img"),
	}
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return k, fmt.Errorf("guesttest: no guest kit in %s: %w", dir, err)
	}
	if err := json.Unmarshal(b, &k.Manifest); err != nil {
		return k, fmt.Errorf("guesttest: %s/manifest.json: %w", dir, err)
	}
	for _, p := range []string{k.Kernel, k.Initrd, k.Rootfs} {
		if _, err := os.Stat(p); err != nil {
			return k, fmt.Errorf("guesttest: incomplete guest kit: %w", err)
		}
	}
	return k, nil
}

func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s (CI=true: run `make kit`, i.e. scripts/guest-kit.sh, and install qemu-system-x86 and qemu-utils)", msg)
	}
	t.Skipf("%s (run `make kit` to build the guest kit)", msg)
}

// RequireQEMU skips (or, with CI=true, fails) the test when
// qemu-system-x86_64 or qemu-img is not installed.
func RequireQEMU(t testing.TB) {
	t.Helper()
	for _, b := range []string{vm.DefaultBinary, "qemu-img"} {
		if _, err := exec.LookPath(b); err != nil {
			skipOrFail(t, "guesttest: %s not found", b)
		}
	}
}

// Kit returns the guest kit, skipping (or, with CI=true, failing) the test
// when QEMU or the kit is missing.
func Kit(t testing.TB) GuestKit {
	t.Helper()
	RequireQEMU(t)
	k, err := FindKit()
	if err != nil {
		skipOrFail(t, "%v", err)
	}
	return k
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on and that
// stays this test's until it ends. A port the kernel hands out a moment
// later (to a port-0 listener or an outgoing connection of another test
// package running beside this one) cannot be it: the port is picked below
// the kernel's ephemeral range. Pickers in other processes cannot take it
// either: each port is held by a lock on PortLockDir/PORT, the convention
// scripts/free-port.sh follows too.
func FreePort(t testing.TB) int {
	t.Helper()
	p, release, err := reservePort()
	if err != nil {
		t.Fatalf("guesttest: free port: %v", err)
	}
	t.Cleanup(release)
	return p
}

// PortLockDir holds one lock file per port reserved by FreePort or
// scripts/free-port.sh.
func PortLockDir() string { return filepath.Join(os.TempDir(), "cloudlet-ports") }

// portRange is where FreePort picks: from 10000 up to the first port of the
// kernel's ephemeral range (net.ipv4.ip_local_port_range).
func portRange() (lo, hi int) {
	lo, hi = 10000, 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				hi = n
			}
		}
	}
	if hi-lo < 1000 { // an unusual range: take what is left below it
		lo = 1024
	}
	return lo, hi
}

func reservePort() (int, func(), error) {
	dir := PortLockDir()
	if err := os.MkdirAll(dir, 0o1777); err != nil {
		return 0, nil, err
	}
	lo, hi := portRange()
	for range 1000 {
		p := lo + rand.IntN(hi-lo)
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_RDONLY|os.O_CREATE, 0o666)
		if err != nil {
			return 0, nil, err
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			f.Close() // another picker holds it
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			f.Close() // in use by someone who does not take locks
			continue
		}
		l.Close()
		return p, func() { f.Close() }, nil
	}
	return 0, nil, fmt.Errorf("no free port in %d-%d after 1000 tries", lo, hi-1)
}

// Options tunes Boot. The zero value boots a 256 MiB guest with a NIC and no
// forwards.
type Options struct {
	Name      string        // QEMU -name; default "guest"
	MemMiB    int           // default 256
	Machine   string        // default vm.DefaultMachine
	Forwards  []vm.Forward  // hostfwd (HostAddr defaults to 127.0.0.1)
	Balloon   bool          // virtio-balloon (free page reporting off)
	Accel     string        // default $CLOUDLET_ACCEL or "auto"
	Append    string        // default DefaultAppend
	Timeout   time.Duration // ready wait; default $CLOUDLET_BOOT_TIMEOUT or 3m
	ExtraArgs []string
}

// Guest is a booted kit guest.
type Guest struct {
	Kit      GuestKit
	Config   vm.Config // as started (normalized)
	Instance *vm.Instance
	Console  *console.Console
	Disk     string        // the qcow2 top layer over Kit.Rootfs
	BootTime time.Duration // from Start to the ready marker
	t        testing.TB
}

var seq atomic.Int64

// runDirPrefix marks run folders (and so QEMU command lines) of this
// process; Leftovers looks for it.
func runDirPrefix() string { return fmt.Sprintf("cloudlet-gt-%d-", os.Getpid()) }

func bootTimeout(o Options) time.Duration {
	if o.Timeout > 0 {
		return o.Timeout
	}
	if s := os.Getenv("CLOUDLET_BOOT_TIMEOUT"); s != "" {
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			return d
		}
	}
	return 3 * time.Minute
}

// Boot starts a kit guest and waits until it is ready. The test's cleanup
// always stops QEMU and removes the run folder and disk, also on failure.
func Boot(t testing.TB, o Options) *Guest {
	t.Helper()
	k := Kit(t)
	if o.Name == "" {
		o.Name = "guest"
	}
	if o.MemMiB == 0 {
		o.MemMiB = 256
	}
	if o.Append == "" {
		o.Append = DefaultAppend
	}
	if o.Accel == "" {
		o.Accel = os.Getenv("CLOUDLET_ACCEL")
	}
	if o.Accel == "" {
		o.Accel = "auto"
	}
	// Run folders live in a short path: unix socket paths are limited to
	// 107 bytes, and t.TempDir() paths can be long.
	runDir, err := os.MkdirTemp("", runDirPrefix()+strconv.FormatInt(seq.Add(1), 10)+"-")
	if err != nil {
		t.Fatalf("guesttest: %v", err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	diskDir := t.TempDir()
	cfg := vm.Config{
		Name:      o.Name,
		RunDir:    runDir,
		MemMiB:    o.MemMiB,
		Machine:   o.Machine,
		MemShare:  true,
		Accel:     o.Accel,
		Kernel:    k.Kernel,
		Initrd:    k.Initrd,
		Append:    o.Append,
		Disk:      filepath.Join(diskDir, "top.qcow2"),
		BaseDisk:  k.Rootfs,
		Net:       true,
		Forwards:  o.Forwards,
		Balloon:   o.Balloon,
		ExtraArgs: o.ExtraArgs,
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout(o))
	defer cancel()
	start := time.Now()
	inst, err := vm.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("guesttest: start QEMU: %v", err)
	}
	g := &Guest{Kit: k, Config: inst.Config, Instance: inst, Disk: cfg.Disk, t: t}
	t.Cleanup(g.stop)
	con, err := console.Dial(ctx, inst.SerialPath())
	if err != nil {
		t.Fatalf("guesttest: %v; QEMU log: %s", err, inst.LogTail(2000))
	}
	g.Console = con
	if err := con.WaitFor(ctx, ReadyMarker); err != nil {
		t.Fatalf("guesttest: guest not ready after %v: %v\nserial console tail:\n%s\nQEMU log:\n%s",
			time.Since(start).Round(time.Millisecond), err, con.Tail(4000), inst.LogTail(2000))
	}
	// Let the line with the marker finish.
	_ = con.WaitFor(ctx, "\n")
	g.BootTime = time.Since(start)
	t.Logf("guesttest: %s ready in %v (accel %s, %d MiB, pid %d)", o.Name, g.BootTime.Round(time.Millisecond), inst.Accel, o.MemMiB, inst.Pid)
	return g
}

func (g *Guest) stop() {
	if g.Console != nil {
		_ = g.Console.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Instance.Stop(ctx); err != nil {
		g.t.Errorf("guesttest: stop QEMU pid %d: %v", g.Instance.Pid, err)
	}
	if g.Instance.Running() {
		g.t.Errorf("guesttest: QEMU pid %d still running after Stop", g.Instance.Pid)
	}
}

// Stop stops the guest now (the cleanup does it otherwise).
func (g *Guest) Stop() { g.stop() }

// RunTimeout bounds one Guest.Run.
var RunTimeout = 2 * time.Minute

// Run runs cmdline in the guest shell and returns its output; a non-zero
// exit status or a console error fails the test.
func (g *Guest) Run(cmdline string) string {
	g.t.Helper()
	out, code, err := g.RunCode(cmdline)
	if err != nil {
		g.t.Fatalf("guest: %s: %v\nconsole tail:\n%s", cmdline, err, g.Console.Tail(2000))
	}
	if code != 0 {
		g.t.Fatalf("guest: %s: exit %d: %s", cmdline, code, out)
	}
	return out
}

// RunCode runs cmdline in the guest shell and returns output and exit status.
func (g *Guest) RunCode(cmdline string) (string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	return g.Console.Run(ctx, cmdline)
}

// Leftovers returns the pids of QEMU processes started by Boot in this
// process that are still running.
func Leftovers() []int {
	out, _ := exec.Command("pgrep", "-f", runDirPrefix()).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Main is a TestMain helper: it runs the tests, then fails the run (and
// kills them) if QEMU processes started by Boot are left over.
//
//	func TestMain(m *testing.M) { os.Exit(guesttest.Main(m)) }
func Main(m *testing.M) int {
	code := m.Run()
	if pids := Leftovers(); len(pids) > 0 {
		fmt.Fprintf(os.Stderr, "guesttest: QEMU processes left over after the tests: %v (killing them)\n", pids)
		for _, pid := range pids {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
		if code == 0 {
			code = 1
		}
	}
	return code
}

// RegularReady is what the regular test images' init prints on the serial
// console once its shell is up (never the kit's ReadyMarker).
const RegularReady = "regular-image login"

// RegularImages are the test images scripts/guest-image.sh builds from the
// kit: disks that boot through their own bootloader.
type RegularImages struct {
	Raw   string // MBR, SYSLINUX, root on partition 2
	QCOW2 string // the same disk as qcow2
	UEFI  string // GPT, EFI system partition with syslinux.efi
}

// Images returns the regular test images, skipping (or, with CI=true,
// failing) the test when they are missing.
func Images(t testing.TB) RegularImages {
	t.Helper()
	k := Kit(t)
	d := filepath.Join(k.Dir, "images")
	im := RegularImages{Raw: filepath.Join(d, "regular.raw"), QCOW2: filepath.Join(d, "regular.qcow2"), UEFI: filepath.Join(d, "uefi.raw")}
	for _, p := range []string{im.Raw, im.QCOW2, im.UEFI} {
		if _, err := os.Stat(p); err != nil {
			skipOrFail(t, "guesttest: regular test image missing (make kit runs scripts/guest-image.sh): %v", err)
		}
	}
	return im
}

// BuildTools builds the repository's commands (./cmd/NAME for each of
// tools; all of ./cmd/... when none are named) into a new temporary
// folder whose name starts with prefix, for tests that run the real
// tools. The caller removes the folder.
func BuildTools(prefix string, tools ...string) (string, error) {
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-o", dir + string(os.PathSeparator)}
	if len(tools) == 0 {
		args = append(args, "./cmd/...")
	}
	for _, t := range tools {
		args = append(args, "./cmd/"+t)
	}
	b := exec.Command(goTool, args...)
	b.Dir = root
	if out, err := b.CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("building the tools: %v\n%s", err, out)
	}
	return dir, nil
}
