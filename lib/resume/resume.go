package resume

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/disk"
	"cloudlet/lib/instance"
	"cloudlet/lib/jail"
	"cloudlet/lib/lazyfs"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/virt"
	"cloudlet/lib/vm"
)

// Options are shared by Launch and FromStream.
type Options struct {
	Name      string       // instance name; default "cloudlet"
	RunDir    string       // run folder; default a new folder under RunRoot()
	Forwards  []vm.Forward // port forwards (host port 0: a free one); for streams, replaces the header's
	Ports     string       // policy for a stream's recorded forwards: PortsRecorded (default), PortsFree, PortsStrict
	Accel     string       // auto, tcg or kvm
	VNC       bool
	ExtraArgs []string // the user's own QEMU args (command line only)
	Admission Admission
	// Libvirt, when set, is the libvirt URI (qemu:///system) the VM runs
	// under: a transient domain named after the instance (lib/virt).
	Libvirt string
	// Net is what the guest's network may reach (lib/jail); "" is
	// jail.Isolated.
	Net jail.Policy
	// Limits are the instance's resource limits (lib/jail).
	Limits jail.Limits
	Log    io.Writer
}

var reVersion = regexp.MustCompile(`[0-9]+\.[0-9]+\.[0-9]+`)

// RunRoot is where run folders go by default: $CLOUDLET_RUN_DIR, else
// /run/cloudlet for root, else a folder in the temp dir.
func RunRoot() string {
	if d := os.Getenv("CLOUDLET_RUN_DIR"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/run/cloudlet"
	}
	return filepath.Join(os.TempDir(), "cloudlet-run")
}

// newRunDir picks the run folder, creates it and claims it for this
// process. Stale folders (left by a vm-resume killed with SIGKILL) under the
// run root, or at the given path, are removed first.
func newRunDir(opt *Options) (string, error) {
	if opt.Name == "" {
		opt.Name = "cloudlet"
	}
	var dir string
	if opt.RunDir != "" {
		if _, err := os.Stat(filepath.Join(opt.RunDir, instance.FileName)); err == nil {
			return "", fmt.Errorf("%s already holds an instance; stop it with vm-resume stop %s or choose another --run-dir", opt.RunDir, opt.RunDir)
		}
		abs, err := filepath.Abs(opt.RunDir)
		if err != nil {
			return "", err
		}
		if isStale(abs) {
			if err := removeStale(abs); err != nil {
				return "", err
			}
		}
		dir = abs
	} else {
		if err := os.MkdirAll(RunRoot(), 0o755); err != nil {
			return "", err
		}
		sweepStale(RunRoot())
		var b [4]byte
		rand.Read(b[:])
		dir = filepath.Join(RunRoot(), opt.Name+"-"+hex.EncodeToString(b[:]))
	}
	if err := opt.Admission.admit(RunRoot(), dir); err != nil {
		return "", err
	}
	return dir, nil
}

// start starts the VM's QEMU, a process of ours or a libvirt domain,
// inside its network policy (lib/jail). The instance's forwards are then
// the ones users reach.
func (o *Options) start(ctx context.Context, cfg vm.Config) (*vm.Instance, error) {
	if o.Net == jail.Outbound && o.Libvirt != "" {
		return nil, fmt.Errorf("the outbound network policy is not available under libvirt (libvirtd starts QEMU in the host's network namespace): use --net isolated or host with --libvirt")
	}
	n, err := jail.Prepare(cfg.RunDir, jail.Options{Net: o.Net, Limits: o.Limits}, &cfg)
	if err != nil {
		return nil, err
	}
	var in *vm.Instance
	if o.Libvirt == "" {
		in, err = vm.Start(ctx, cfg)
	} else {
		in, err = virt.Start(ctx, o.Libvirt, cfg)
	}
	if err == nil {
		if err = n.Started(in.Pid); err != nil {
			in.Kill()
			in.Wait()
		}
	}
	if err != nil {
		n.Teardown()
		return nil, err
	}
	in.Config.Forwards = n.Forwards(in.Config.Forwards)
	return in, nil
}

// describe records in info how the VM runs.
func (o *Options) describe(info *instance.Info) {
	info.Net = string(o.Net)
	if o.Net == "" {
		info.Net = string(jail.Isolated)
	}
	if o.Libvirt != "" {
		info.Libvirt, info.Domain = o.Libvirt, virt.DomainName(info.RunDir)
	}
}

// cleanup undoes a half-made instance.
type cleanup struct {
	dir  string
	inst *vm.Instance
	srv  *lazyfs.Server // early start: the served images, unmounted after QEMU died
	done bool
}

func (c *cleanup) run() {
	if c.done {
		return
	}
	if c.inst != nil {
		c.inst.Kill()
		c.inst.Wait()
	}
	if c.srv != nil {
		c.srv.Unmount()
	}
	if c.dir != "" {
		RemoveRunDir(c.dir)
	}
}

// RemoveRunDir removes the run folder of an instance whose QEMU is gone,
// with what confined it (lib/jail: its forward proxy, network namespace
// and cgroup). Every path that ends an instance goes through it.
func RemoveRunDir(dir string) error {
	jail.Teardown(dir)
	return os.RemoveAll(dir)
}

// Stop ends the instance in runDir (QMP quit, then SIGKILL) and removes the
// run folder.
func Stop(ctx context.Context, runDir string) error {
	if abs, err := filepath.Abs(runDir); err == nil && isStale(abs) {
		return removeStale(abs) // what a killed vm-resume left
	}
	info, err := instance.Read(runDir)
	if err != nil {
		return err
	}
	if info.Domain != "" {
		// Through libvirt, so that it knows the domain ended.
		if err := virt.DestroyDomain(ctx, info.Libvirt, info.Domain); err != nil && vm.Alive(info.Pid) {
			return err
		}
	} else {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if c, err := qmpctl.Dial(qctx, info.QMP); err == nil {
			c.Quit(qctx)
		}
		cancel()
	}
	deadline := time.Now().Add(5 * time.Second)
	for vm.Alive(info.Pid) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if vm.Alive(info.Pid) {
		if p, err := os.FindProcess(info.Pid); err == nil {
			p.Kill()
		}
		for i := 0; i < 100 && vm.Alive(info.Pid); i++ {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if info.Server > 0 {
		// Early start: the server unmounts and removes the folder once
		// QEMU is gone; a dead one left its mount for us.
		for i := 0; i < 150 && vm.Alive(info.Server); i++ {
			time.Sleep(20 * time.Millisecond)
		}
		if err := lazyfs.Cleanup(filepath.Join(runDir, LazyDir)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return RemoveRunDir(runDir)
}

func toInfoForwards(fs []vm.Forward) []instance.Forward {
	out := []instance.Forward{}
	for _, f := range fs {
		addr := f.HostAddr
		if addr == "" {
			addr = "127.0.0.1"
		}
		proto := f.Proto
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, instance.Forward{Proto: proto, HostAddr: addr, HostPort: f.HostPort, GuestPort: f.GuestPort})
	}
	return out
}

func toFormatForwards(fs []vm.Forward) []format.Forward {
	var out []format.Forward
	for _, f := range fs {
		proto := f.Proto
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, format.Forward{Proto: proto, HostPort: uint16(f.HostPort), GuestPort: uint16(f.GuestPort)})
	}
	return out
}

func fromFormatForwards(fs []format.Forward) []vm.Forward {
	var out []vm.Forward
	for _, f := range fs {
		out = append(out, vm.Forward{Proto: f.Proto, HostPort: int(f.HostPort), GuestPort: int(f.GuestPort)})
	}
	return out
}

// infoFor fills the parts of an Info that come from a started instance.
func infoFor(in *vm.Instance, cfg vm.Config) *instance.Info {
	info := &instance.Info{
		Summary: instance.Summary{Name: in.Config.Name, Pid: in.Pid, RunDir: in.RunDir(), QMP: in.QMPPath(),
			Serial: in.SerialPath(), SerialLog: in.SerialLog(), Forwards: toInfoForwards(in.Config.Forwards),
			Accel: in.Accel, Timings: map[string]float64{}},
		MemPath: in.MemPath(), MemShared: in.Config.MemShare, DiskTop: in.Config.Disk,
		KernelPath: in.Config.Kernel, InitrdPath: in.Config.Initrd,
	}
	if cfg.VNC {
		info.VNC = in.Config.VNCPath()
	}
	return info
}

// firmware is a UEFI VM's firmware: the code image and the variable store
// template the VM's own store is copied from.
type firmware struct{ code, varsTemplate string }

// configure gives cfg UEFI firmware, with a fresh copy of the variable
// store template in the run folder (the guest writes it).
func (f firmware) configure(cfg *vm.Config) error {
	vars := filepath.Join(cfg.RunDir, vm.UEFIVarsFileName)
	if err := base.CopyFile(f.varsTemplate, vars); err != nil {
		return fmt.Errorf("copying the UEFI variable store: %w", err)
	}
	cfg.Firmware, cfg.FirmwareCode, cfg.FirmwareVars = vm.FirmwareUEFI, f.code, vars
	return nil
}

// LaunchOptions say what to boot.
type LaunchOptions struct {
	Options
	// Image is the disk image, raw or qcow2 (with its own backing chain);
	// never written: the VM gets a qcow2 top layer over it.
	Image       string
	ImageFormat string // "raw", "qcow2", or "" to detect with qemu-img info
	// Firmware is "bios" (default, SeaBIOS) or "uefi" (OVMF from Debian's
	// ovmf package). Without Kernel the VM boots through the image's own
	// bootloader; Initrd and Append then must be empty.
	Firmware string
	Kernel   string
	Initrd   string
	Append   string
	MemMiB   int
}

// Launch boots a fresh VM from an image in the capturable layout. The image
// is checked first (disk.Inspect, and its boot sector when there is no
// kernel); a refused image leaves nothing behind.
func Launch(ctx context.Context, lo LaunchOptions) (*instance.Info, error) {
	start := time.Now()
	img, err := disk.Inspect(ctx, lo.Image, lo.ImageFormat)
	if err != nil {
		return nil, err
	}
	if lo.Kernel == "" {
		if lo.Initrd != "" || lo.Append != "" {
			return nil, errors.New("--initrd and --append need --kernel (without --kernel the image boots through its own bootloader)")
		}
		ok, found, err := disk.Bootable(ctx, img)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("image %s cannot boot on its own: its first sector ends in %s, not the boot signature 55 aa (no bootloader or partition table); give --kernel (and --initrd, --append) to boot a kernel directly", lo.Image, found)
		}
	}
	var fw firmware
	switch lo.Firmware {
	case "", vm.FirmwareBIOS:
	case vm.FirmwareUEFI:
		for _, p := range []string{vm.DefaultUEFICode, vm.DefaultUEFIVars} {
			if _, err := os.Stat(p); err != nil {
				return nil, fmt.Errorf("UEFI needs Debian's ovmf package (apt-get install ovmf): %w", err)
			}
		}
		fw = firmware{code: vm.DefaultUEFICode, varsTemplate: vm.DefaultUEFIVars}
	default:
		return nil, fmt.Errorf("firmware %q: want bios or uefi", lo.Firmware)
	}
	fwds, err := placeForwards(lo.Forwards, false, "", lo.Log)
	if err != nil {
		return nil, err
	}
	dir, err := newRunDir(&lo.Options)
	if err != nil {
		return nil, err
	}
	cl := &cleanup{dir: dir}
	defer cl.run()
	desc := format.VMDesc{MemSize: uint64(max(lo.MemMiB, 1)) << 20, DiskSize: uint64(img.VirtualSize), DiskFormat: img.Format, Append: lo.Append, IgnoreShared: true}
	// disk_base names the image file itself (for a qcow2, the top of its
	// chain: its backing files are read-only to every VM that uses it).
	if desc.DiskBase, err = base.FileSHA256(img.Path); err != nil {
		return nil, err
	}
	if lo.Kernel != "" {
		if desc.Kernel, err = base.FileSHA256(lo.Kernel); err != nil {
			return nil, err
		}
	}
	if lo.Initrd != "" {
		if desc.Initrd, err = base.FileSHA256(lo.Initrd); err != nil {
			return nil, err
		}
	}
	cfg := vm.Config{
		Name: lo.Name, RunDir: dir, MemMiB: lo.MemMiB, MemShare: true,
		Kernel: lo.Kernel, Initrd: lo.Initrd, Append: lo.Append,
		Disk: filepath.Join(dir, "disk.qcow2"), BaseDisk: img.Path, BaseFormat: img.Format,
		Forwards: fwds, Net: true, VNC: lo.VNC, Accel: lo.Accel, ExtraArgs: lo.ExtraArgs, VMGenID: true,
	}
	desc.VMGenID = true
	if fw.code != "" {
		if desc.FirmwareCode, err = base.FileSHA256(fw.code); err != nil {
			return nil, err
		}
		if desc.FirmwareVars, err = base.FileSHA256(fw.varsTemplate); err != nil {
			return nil, err
		}
		desc.Firmware = format.FirmwareUEFI
		if err := fw.configure(&cfg); err != nil {
			return nil, err
		}
	}
	in, err := lo.start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	cl.inst = in
	info := infoFor(in, cfg)
	desc.Machine, desc.CPU = in.Config.Machine, in.Config.CPU
	desc.Devices = in.Config.Devices // the layout it started with (normalized)
	desc.RAMBlocks = []format.RAMBlock{{ID: vm.MemBackendID, Size: desc.MemSize}}
	desc.Forwards = toFormatForwards(in.Config.Forwards)
	if v, err := vm.QEMUVersion(); err == nil {
		desc.QEMUVersion = reVersion.FindString(v)
	}
	info.VM, info.DiskImage, info.Resumed = desc, img.Path, "image"
	lo.describe(info)
	info.Timings["launch"] = time.Since(start).Seconds()
	if err := instance.Write(dir, info); err != nil {
		return nil, err
	}
	releaseRunDir(dir)
	cl.done = true
	return info, nil
}
