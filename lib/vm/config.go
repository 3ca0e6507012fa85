package vm

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"cloudlet/format"
)

// Defaults used when a Config field is left empty.
const (
	DefaultMachine = "pc-i440fx-7.2"
	DefaultCPU     = "qemu64"
	DefaultMemMiB  = 256
	DefaultBinary  = "qemu-system-x86_64"
	// DefaultMAC is the guest NIC's fixed MAC address, so that a resumed
	// instance sees the same device it was captured with.
	DefaultMAC = "52:54:00:c1:0d:01"
	// KitAppend is the guest kit's kernel command line. init_on_free=1
	// makes the guest zero the pages it frees, so freed memory costs
	// nothing in an overlay (stock kernel, no knowledge of its internals;
	// see README "semantic gap"); the kit's initramfs mounts the root with
	// discard unless cloudlet.nodiscard is given. no_timer_check avoids a
	// boot panic ("IO-APIC + timer doesn't work") seen under TCG on a
	// loaded host.
	KitAppend = "console=ttyS0 root=/dev/vda rw quiet init_on_free=1 no_timer_check"
)

// UEFI firmware from Debian's ovmf package: the code image (read-only) and
// the variable store template each VM gets its own copy of.
const (
	FirmwareDir      = "/usr/share/OVMF"
	DefaultUEFICode  = FirmwareDir + "/OVMF_CODE_4M.fd"
	DefaultUEFIVars  = FirmwareDir + "/OVMF_VARS_4M.fd"
	FirmwareBIOS     = "bios"
	FirmwareUEFI     = "uefi"
	UEFIVarsFileName = "efivars.fd" // the VM's own variable store, in RunDir
)

// Names of the files inside RunDir.
const (
	QMPSocketName    = "qmp.sock"
	SerialSocketName = "serial.sock"
	SerialLogName    = "serial.log"
	PidFileName      = "qemu.pid"
	LogFileName      = "qemu.log"
	MemFileName      = "mem.ram"
	VNCSocketName    = "vnc.sock"
)

// Fixed device ids: the capture and resume sides must agree on them.
const (
	MemBackendID = "mem"
	DiskNodeID   = "disk0"
	NetDevID     = "net0"
)

// Forward is one user-mode network port forward (QEMU hostfwd).
type Forward struct {
	Proto     string // "tcp" (default) or "udp"
	HostAddr  string // IPv4 address to listen on; default 127.0.0.1
	HostPort  int    // 0: a free port, chosen when QEMU binds it (Start fills it in)
	GuestPort int
}

// Config describes one QEMU instance. The zero value of most fields picks a
// default; see Normalize.
type Config struct {
	Name   string // instance name (-name); [A-Za-z0-9_-], default "cloudlet"
	RunDir string // per-instance folder, created 0700; required

	MemMiB   int    // guest RAM in MiB; default 256
	MemPath  string // memory-backend-file path; default RunDir/mem.ram
	MemShare bool   // share=on (capturable); false maps MemPath privately (never written)
	// MemPlain gives the VM plain anonymous RAM (-m only, RAM block
	// "pc.ram"), as a QEMU started by hand has; MemPath is then unused.
	MemPlain bool

	Machine string // machine type; default pc-i440fx-7.2
	CPU     string // CPU model; default qemu64 (portable, pinned)
	SMP     int    // vCPUs; default 1
	Accel   string // "auto" (default), "tcg" or "kvm"

	// Firmware is "bios" (default: SeaBIOS, which boots the disk's own
	// bootloader when there is no Kernel) or "uefi": FirmwareCode as
	// read-only pflash 0 and FirmwareVars, the VM's own variable store
	// (written by the guest), as pflash 1.
	Firmware     string
	FirmwareCode string
	FirmwareVars string

	Kernel string // -kernel
	Initrd string // -initrd
	Append string // -append (kernel command line)

	// Disk is the qcow2 top layer attached with virtio-blk (discard=unmap).
	// If BaseDisk is set and Disk does not exist, Start creates Disk with
	// "qemu-img create -f qcow2 -b BaseDisk -F BaseFormat", so the base is
	// never written.
	Disk       string
	BaseDisk   string
	BaseFormat string // format of BaseDisk; default raw

	Forwards []Forward // user-mode net hostfwd; a NIC is added if Net or Forwards
	Net      bool      // add a user-mode virtio-net NIC even without forwards
	MAC      string    // NIC MAC; default DefaultMAC
	// NetRestrict isolates the guest (user-mode net restrict=on): it
	// reaches neither the host nor the outside; forwards still work.
	NetRestrict bool
	// NetNS is a network namespace (a /run/netns path) QEMU runs in, so
	// its user-mode network opens connections from there (lib/jail).
	NetNS string

	Incoming bool // -incoming defer
	VNC      bool // VNC display on RunDir/vnc.sock instead of headless
	Balloon  bool // virtio-balloon device (free page reporting off)
	// VMGenID adds a VM generation ID device with a new ID at every QEMU
	// start (guid=auto): after a resume the guest sees a changed ID and a
	// Linux guest with the driver reseeds its RNG, so clones differ.
	VMGenID bool
	// FreePageReporting turns on the balloon's free page reporting. Refused
	// with MemShare false: it punches holes in the (base) memory file.
	FreePageReporting bool

	// DieWithParent kills QEMU (SIGKILL) when the process that started it
	// dies: for a VM whose memory or disk that process serves (early
	// start), which must not outlive it.
	DieWithParent bool

	// Devices is the VM's device layout, every PCI device at its address
	// (see Device). Left nil, Normalize derives the fixed layout from the
	// fields above, in this order, PCI slots from 2 on as QEMU assigns
	// them on pc-i440fx with -nodefaults: VGA if VNC, virtio-blk-pci if
	// Disk, virtio-net-pci without option ROM if Net or Forwards,
	// virtio-balloon-pci if Balloon, vmgenid if VMGenID. Set (from a
	// captured VM description), it is exactly the devices QEMU gets: the
	// virtio-blk-pci is bound to Disk, the virtio-net-pci to the user-mode
	// netdev, Balloon and VMGenID follow the list, and VNC only adds the
	// display. A normalized Config always has Devices: the one list that
	// both Args and a libvirt domain are made from.
	Devices []Device

	Binary    string   // QEMU binary; default qemu-system-x86_64
	ExtraArgs []string // the user's own args, appended verbatim (command line only)
}

// Device is one device of the VM: a QEMU driver (format.DriverVGA, ...),
// its PCI address "SS.F" on the root bus ("" for vmgenid and ISA ports),
// its option ROM and, for ISA ports, its index. The same type as the VM
// description's device list (format.Device).
//
// The serial console is always there: it is isa-serial index 0, made by
// "-serial" (a Device isa-serial with Index 0 stands for it); other
// isa-serial and isa-parallel ports get a null chardev.
type Device = format.Device

// defaultVGAROM is the option ROM of QEMU's VGA (the fixed layout's display).
const defaultVGAROM = "vgabios-stdvga.bin"

// fixedDevices is the layout of a Config without Devices.
func (c Config) fixedDevices() []Device {
	var out []Device
	slot := 2 // 0: host bridge; 1: PIIX3, IDE, ACPI
	pci := func(d Device) {
		d.Addr = format.PCIAddr(slot, 0)
		slot++
		out = append(out, d)
	}
	if c.VNC {
		pci(Device{Driver: format.DriverVGA, ROMFile: defaultVGAROM})
	}
	if c.Disk != "" {
		pci(Device{Driver: format.DriverVirtioBlk})
	}
	if c.Net || len(c.Forwards) > 0 {
		pci(Device{Driver: format.DriverVirtioNet})
	}
	if c.Balloon {
		pci(Device{Driver: format.DriverVirtioBalloon})
	}
	if c.VMGenID {
		out = append(out, Device{Driver: format.DriverVMGenID})
	}
	return out
}

var (
	reName    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$`)
	reModel   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	rePath    = regexp.MustCompile(`^[A-Za-z0-9._/+@~-]+$`)
	reMAC     = regexp.MustCompile(`^[0-9a-f]{2}(:[0-9a-f]{2}){5}$`)
	errNoDir  = errors.New("vm: RunDir is required")
	maxMemMiB = 1 << 20
	// maxSocketPath is the longest unix socket path (sun_path is 108 bytes
	// with its terminating NUL).
	maxSocketPath = 107
)

// CheckPath reports whether p is safe to put into a QEMU option value: an
// absolute or relative path made only of letters, digits and . _ / + @ ~ -
// (no commas, colons, spaces, quotes or control characters), not starting
// with '-'.
func CheckPath(what, p string) error {
	if p == "" {
		return fmt.Errorf("vm: %s: empty path", what)
	}
	if !rePath.MatchString(p) || strings.HasPrefix(p, "-") {
		return fmt.Errorf("vm: %s: unsafe path %q (allowed: letters, digits and . _ / + @ ~ -)", what, p)
	}
	return nil
}

// CheckID reports whether s is safe as a QEMU id or name.
func CheckID(what, s string) error {
	if !reName.MatchString(s) {
		return fmt.Errorf("vm: %s: unsafe name %q (allowed: letters, digits, _ and -, at most 64)", what, s)
	}
	return nil
}

// Normalize returns a copy of c with defaults filled in, or an error when a
// field is unsafe or inconsistent.
func (c Config) Normalize() (Config, error) {
	if c.RunDir == "" {
		return c, errNoDir
	}
	if c.Name == "" {
		c.Name = "cloudlet"
	}
	if c.MemMiB == 0 {
		c.MemMiB = DefaultMemMiB
	}
	if c.MemPath == "" {
		c.MemPath = filepath.Join(c.RunDir, MemFileName)
	}
	if c.Machine == "" {
		c.Machine = DefaultMachine
	}
	if c.CPU == "" {
		c.CPU = DefaultCPU
	}
	if c.SMP == 0 {
		c.SMP = 1
	}
	if c.Accel == "" {
		c.Accel = "auto"
	}
	if c.BaseFormat == "" {
		c.BaseFormat = "raw"
	}
	if c.Firmware == "" {
		c.Firmware = FirmwareBIOS
	}
	if c.MAC == "" {
		c.MAC = DefaultMAC
	}
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.Devices == nil {
		c.Devices = c.fixedDevices()
	} else {
		c.Devices = slices.Clone(c.Devices)
		c.Balloon = format.HasDriver(c.Devices, format.DriverVirtioBalloon)
		c.VMGenID = format.HasDriver(c.Devices, format.DriverVMGenID)
	}
	for i := range c.Forwards {
		f := &c.Forwards[i]
		if f.Proto == "" {
			f.Proto = "tcp"
		}
		if f.HostAddr == "" {
			f.HostAddr = "127.0.0.1"
		}
	}
	if err := c.validate(); err != nil {
		return c, err
	}
	// QEMU runs in the run folder: every path it is given must be absolute,
	// or a relative --kit or --base would name files inside the run folder.
	// The absolute form is checked again: the current folder is part of it.
	for what, p := range map[string]*string{"RunDir": &c.RunDir, "MemPath": &c.MemPath, "Kernel": &c.Kernel,
		"Initrd": &c.Initrd, "Disk": &c.Disk, "BaseDisk": &c.BaseDisk,
		"FirmwareCode": &c.FirmwareCode, "FirmwareVars": &c.FirmwareVars} {
		if *p == "" || filepath.IsAbs(*p) {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return c, err
		}
		if err := CheckPath(what, abs); err != nil {
			return c, fmt.Errorf("%w: give it as an absolute path", err)
		}
		*p = abs
	}
	return c, nil
}

func (c Config) validate() error {
	if err := CheckID("Name", c.Name); err != nil {
		return err
	}
	if err := CheckPath("RunDir", c.RunDir); err != nil {
		return err
	}
	for _, s := range []string{c.QMPPath(), c.SerialPath(), c.VNCPath()} {
		if len(s) > maxSocketPath {
			return fmt.Errorf("vm: socket path %s longer than %d bytes: use a shorter RunDir", s, maxSocketPath)
		}
	}
	if err := CheckPath("MemPath", c.MemPath); err != nil {
		return err
	}
	if c.MemMiB < 16 || c.MemMiB > maxMemMiB {
		return fmt.Errorf("vm: MemMiB %d out of range [16, %d]", c.MemMiB, maxMemMiB)
	}
	if !reModel.MatchString(c.Machine) {
		return fmt.Errorf("vm: unsafe machine type %q", c.Machine)
	}
	if !reModel.MatchString(c.CPU) {
		return fmt.Errorf("vm: unsafe CPU model %q", c.CPU)
	}
	if c.SMP < 1 || c.SMP > 64 {
		return fmt.Errorf("vm: SMP %d out of range [1, 64]", c.SMP)
	}
	switch c.Accel {
	case "auto", "tcg", "kvm":
	default:
		return fmt.Errorf("vm: Accel %q: want auto, tcg or kvm", c.Accel)
	}
	switch {
	case c.Firmware == FirmwareUEFI && (c.FirmwareCode == "" || c.FirmwareVars == ""):
		return errors.New("vm: UEFI firmware needs FirmwareCode and FirmwareVars")
	case c.Firmware == FirmwareBIOS && (c.FirmwareCode != "" || c.FirmwareVars != ""):
		return errors.New("vm: FirmwareCode and FirmwareVars need Firmware uefi")
	case c.Firmware != FirmwareBIOS && c.Firmware != FirmwareUEFI:
		return fmt.Errorf("vm: Firmware %q: want bios or uefi", c.Firmware)
	}
	for what, p := range map[string]string{"Kernel": c.Kernel, "Initrd": c.Initrd, "Disk": c.Disk, "BaseDisk": c.BaseDisk,
		"FirmwareCode": c.FirmwareCode, "FirmwareVars": c.FirmwareVars} {
		if p == "" {
			continue
		}
		if err := CheckPath(what, p); err != nil {
			return err
		}
	}
	if c.Initrd != "" && c.Kernel == "" {
		return errors.New("vm: Initrd needs Kernel")
	}
	if c.Append != "" && c.Kernel == "" {
		return errors.New("vm: Append needs Kernel")
	}
	for _, r := range c.Append {
		if r < 0x20 || r > 0x7e {
			return fmt.Errorf("vm: Append has a control or non-ASCII character %q", r)
		}
	}
	if c.BaseDisk != "" && c.Disk == "" {
		return errors.New("vm: BaseDisk needs Disk (the qcow2 top layer to create)")
	}
	if !reModel.MatchString(c.BaseFormat) {
		return fmt.Errorf("vm: unsafe BaseFormat %q", c.BaseFormat)
	}
	if !reMAC.MatchString(c.MAC) {
		return fmt.Errorf("vm: bad MAC %q (want lower-case xx:xx:xx:xx:xx:xx)", c.MAC)
	}
	if err := format.ValidateDevices(c.Devices); err != nil {
		return fmt.Errorf("vm: Devices: %v", err)
	}
	if has := format.HasDriver(c.Devices, format.DriverVirtioBlk); has != (c.Disk != "") {
		return fmt.Errorf("vm: Devices: a %s device goes with Disk (has device %v, Disk %q)", format.DriverVirtioBlk, has, c.Disk)
	}
	if (c.Net || len(c.Forwards) > 0) && !format.HasDriver(c.Devices, format.DriverVirtioNet) {
		return fmt.Errorf("vm: Net and Forwards need a %s device in Devices", format.DriverVirtioNet)
	}
	if c.FreePageReporting && !c.Balloon {
		return errors.New("vm: FreePageReporting needs Balloon")
	}
	if c.FreePageReporting && !c.MemShare {
		return errors.New("vm: FreePageReporting with MemShare off would punch holes in the base memory file")
	}
	if err := CheckPath("Binary", c.Binary); err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, f := range c.Forwards {
		if f.Proto != "tcp" && f.Proto != "udp" {
			return fmt.Errorf("vm: forward proto %q: want tcp or udp", f.Proto)
		}
		ip := net.ParseIP(f.HostAddr)
		if ip == nil || ip.To4() == nil {
			return fmt.Errorf("vm: forward host address %q: want an IPv4 address", f.HostAddr)
		}
		if f.HostPort < 0 || f.HostPort > 65535 || f.GuestPort < 1 || f.GuestPort > 65535 {
			return fmt.Errorf("vm: forward ports %d->%d out of range", f.HostPort, f.GuestPort)
		}
		if f.HostPort == 0 {
			continue // free ports never collide
		}
		k := f.Proto + "/" + f.HostAddr + "/" + strconv.Itoa(f.HostPort)
		if seen[k] {
			return fmt.Errorf("vm: host port %s forwarded twice", k)
		}
		seen[k] = true
	}
	return nil
}

// Paths of the files of an instance with this (normalized) config.
func (c Config) QMPPath() string    { return filepath.Join(c.RunDir, QMPSocketName) }
func (c Config) SerialPath() string { return filepath.Join(c.RunDir, SerialSocketName) }
func (c Config) SerialLog() string  { return filepath.Join(c.RunDir, SerialLogName) }
func (c Config) PidFile() string    { return filepath.Join(c.RunDir, PidFileName) }
func (c Config) LogFile() string    { return filepath.Join(c.RunDir, LogFileName) }
func (c Config) VNCPath() string    { return filepath.Join(c.RunDir, VNCSocketName) }

// Args returns QEMU's arguments (without the binary) for c, resolving
// Accel "auto" to "tcg" (use ResolveAccel first for the KVM probe). It does
// not touch the file system, so it is usable in unit tests.
func (c Config) Args() ([]string, error) {
	c, err := c.Normalize()
	if err != nil {
		return nil, err
	}
	accel := c.Accel
	if accel == "auto" {
		accel = "tcg"
	}
	share := "off"
	if c.MemShare {
		share = "on"
	}
	a := []string{
		"-name", c.Name,
		"-nodefaults", "-no-user-config",
		"-accel", accel,
		"-cpu", c.CPU,
		"-smp", strconv.Itoa(c.SMP),
		"-m", strconv.Itoa(c.MemMiB) + "M",
	}
	if c.MemPlain {
		a = append(a, "-machine", c.Machine)
	} else {
		a = append(a, "-machine", c.Machine+",memory-backend="+MemBackendID,
			"-object", "memory-backend-file,id="+MemBackendID+
				",size="+strconv.Itoa(c.MemMiB)+"M"+
				",mem-path="+c.MemPath+
				",share="+share)
	}
	// Every device, the display too, comes from c.Devices.
	a = append(a, "-vga", "none", "-display", "none")
	if c.VNC {
		a = append(a, "-vnc", "unix:"+c.VNCPath())
	}
	a = append(a,
		"-chardev", "socket,id=qmp0,path="+c.QMPPath()+",server=on,wait=off",
		"-mon", "chardev=qmp0,mode=control",
		"-chardev", "socket,id=ser0,path="+c.SerialPath()+",server=on,wait=off,logfile="+c.SerialLog()+",logappend=on",
		"-serial", "chardev:ser0",
		"-pidfile", c.PidFile(),
	)
	if c.Firmware == FirmwareUEFI {
		a = append(a,
			"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+c.FirmwareCode,
			"-drive", "if=pflash,format=raw,unit=1,file="+c.FirmwareVars)
	}
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
		if c.Initrd != "" {
			a = append(a, "-initrd", c.Initrd)
		}
		if c.Append != "" {
			a = append(a, "-append", c.Append)
		}
	}
	if c.Disk != "" {
		a = append(a, "-blockdev", "driver=qcow2,node-name="+DiskNodeID+",discard=unmap,file.driver=file,file.filename="+c.Disk)
	}
	if c.Net || len(c.Forwards) > 0 {
		a = append(a, c.netdevArgs()...)
	}
	for _, d := range c.Devices {
		a = append(a, c.deviceArgs(d)...)
	}
	if c.Incoming {
		a = append(a, "-incoming", "defer")
	}
	a = append(a, "-sandbox", Sandbox)
	a = append(a, c.ExtraArgs...)
	return a, nil
}

// Sandbox is QEMU's seccomp filter as libvirt sets it (its seccomp_sandbox
// default): the process may not raise or change its privileges, fork or
// exec, change scheduling or use obsolete calls; one that tries is killed.
// Our QEMUs need none of it: migration goes through sockets (never exec:),
// and a QEMU that is subverted through the device state a stranger sent
// cannot start a shell. A denylist, so a layer, not a jail.
const Sandbox = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// netdevArgs returns the user-mode network's -netdev, with its forwards.
func (c Config) netdevArgs() []string {
	nd := "user,id=" + NetDevID
	if c.NetRestrict {
		nd += ",restrict=on"
	}
	for _, f := range c.Forwards {
		nd += fmt.Sprintf(",hostfwd=%s:%s:%d-:%d", f.Proto, f.HostAddr, f.HostPort, f.GuestPort)
	}
	return []string{"-netdev", nd}
}

// NICArgs returns the QEMU options of the user-mode network and its NIC
// d, forwards included: for a libvirt domain whose network libvirt's own
// elements cannot restrict (lib/virt).
func (c Config) NICArgs(d Device) []string {
	return append(c.netdevArgs(), c.deviceArgs(d)...)
}

// deviceArgs returns the options that create d: its -device (PCI devices
// with romfile= and addr= pinned) and the null chardev of an extra ISA
// port. The serial console (isa-serial 0) is -serial's, so it adds none.
func (c Config) deviceArgs(d Device) []string {
	var opt string
	switch d.Driver {
	case format.DriverVirtioBlk:
		opt = "id=vblk0,drive=" + DiskNodeID
	case format.DriverVirtioNet:
		opt = "id=vnet0"
		if c.Net || len(c.Forwards) > 0 {
			opt += ",netdev=" + NetDevID
		}
		opt += ",mac=" + c.MAC
	case format.DriverVirtioBalloon:
		fpr := "off"
		if c.FreePageReporting {
			fpr = "on"
		}
		opt = "id=balloon0,free-page-reporting=" + fpr
	case format.DriverVMGenID:
		opt = "id=vmgenid0,guid=auto"
	case format.DriverUHCI:
		opt = "id=usb0"
	case format.DriverVGA, format.DriverCirrus:
		opt = "id=video0"
		if d.VGAMemMB != 0 {
			opt += ",vgamem_mb=" + strconv.Itoa(d.VGAMemMB)
		}
	case format.DriverSerial, format.DriverParallel:
		if d.Driver == format.DriverSerial && d.Index == 0 {
			return nil
		}
		id := strings.TrimPrefix(d.Driver, "isa-") + strconv.Itoa(d.Index)
		return []string{"-chardev", "null,id=null-" + id,
			"-device", fmt.Sprintf("%s,id=%s,chardev=null-%s,index=%d", d.Driver, id, id, d.Index)}
	}
	if d.Addr != "" {
		opt += ",romfile=" + d.ROMFile + ",addr=" + d.Addr
		if d.Multifunction {
			opt += ",multifunction=on"
		}
	}
	return []string{"-device", d.Driver + "," + opt}
}
