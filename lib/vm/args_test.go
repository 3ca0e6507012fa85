package vm

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func baseConfig() Config {
	return Config{
		Name:     "t1",
		RunDir:   "/tmp/cl-run",
		MemShare: true,
		Kernel:   "/k/vmlinuz",
		Initrd:   "/k/initrd.img",
		Append:   "console=ttyS0 root=/dev/vda rw",
		Disk:     "/d/top.qcow2",
		BaseDisk: "/k/rootfs.img",
		Forwards: []Forward{{HostPort: 8080, GuestPort: 80}},
		Accel:    "tcg",
	}
}

func argValue(t *testing.T, args []string, flag string, n int) string {
	t.Helper()
	k := 0
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			if k == n {
				return args[i+1]
			}
			k++
		}
	}
	t.Fatalf("no %d-th %s in %q", n, flag, args)
	return ""
}

func TestArgsCapturableLayout(t *testing.T) {
	a, err := baseConfig().Args()
	if err != nil {
		t.Fatal(err)
	}
	j := strings.Join(a, " ")
	for _, want := range []string{
		"-accel tcg",
		"-machine pc-i440fx-7.2,memory-backend=mem",
		"-cpu qemu64",
		"-m 256M",
		"-object memory-backend-file,id=mem,size=256M,mem-path=/tmp/cl-run/mem.ram,share=on",
		"-vga none -display none",
		"-nodefaults",
		"-chardev socket,id=qmp0,path=/tmp/cl-run/qmp.sock,server=on,wait=off",
		"-chardev socket,id=ser0,path=/tmp/cl-run/serial.sock,server=on,wait=off,logfile=/tmp/cl-run/serial.log,logappend=on",
		"-serial chardev:ser0",
		"-pidfile /tmp/cl-run/qemu.pid",
		"-blockdev driver=qcow2,node-name=disk0,discard=unmap,file.driver=file,file.filename=/d/top.qcow2",
		"-device virtio-blk-pci,id=vblk0,drive=disk0",
		"-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80",
		"-device virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=",
		"-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
	} {
		if !strings.Contains(j, want) {
			t.Errorf("args lack %q:\n%s", want, j)
		}
	}
	if strings.Contains(j, "-incoming") || strings.Contains(j, "balloon") || strings.Contains(j, "-vnc") {
		t.Errorf("unexpected options: %s", j)
	}
	if argValue(t, a, "-append", 0) != "console=ttyS0 root=/dev/vda rw" {
		t.Error("append")
	}
}

func TestArgsResumeLayout(t *testing.T) {
	c := baseConfig()
	c.MemShare = false
	c.MemPath = "/base/mem.img"
	c.Incoming = true
	c.Balloon = true
	c.ExtraArgs = []string{"-S", "-d", "guest_errors"}
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	j := strings.Join(a, " ")
	for _, want := range []string{
		"mem-path=/base/mem.img,share=off",
		"-incoming defer",
		"-device virtio-balloon-pci,id=balloon0,free-page-reporting=off",
	} {
		if !strings.Contains(j, want) {
			t.Errorf("args lack %q:\n%s", want, j)
		}
	}
	if !strings.HasSuffix(j, "-S -d guest_errors") {
		t.Errorf("extra args not last: %s", j)
	}
	c.FreePageReporting = true
	if _, err := c.Args(); err == nil {
		t.Error("free page reporting with a private base memory file accepted")
	}
}

func TestArgsAutoMeansTCGWithoutProbe(t *testing.T) {
	c := baseConfig()
	c.Accel = "auto"
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	if argValue(t, a, "-accel", 0) != "tcg" {
		t.Error("auto should render as tcg in Args")
	}
	c.Accel = "kvm"
	a, _ = c.Args()
	if argValue(t, a, "-accel", 0) != "kvm" {
		t.Error("kvm")
	}
	c.Accel = "hvf"
	if _, err := c.Args(); err == nil {
		t.Error("bad accel accepted")
	}
}

func TestConfigRejectsInjection(t *testing.T) {
	bad := []func(*Config){
		func(c *Config) { c.Name = "x,share=off" },
		func(c *Config) { c.Name = "a b" },
		func(c *Config) { c.RunDir = "/tmp/r,server=off" },
		func(c *Config) { c.MemPath = "/m,share=on" },
		func(c *Config) { c.MemPath = "/m:x" },
		func(c *Config) { c.Kernel = "/k,x=y" },
		func(c *Config) { c.Initrd = "/i\nx" },
		func(c *Config) { c.Disk = "/d/top.qcow2,file.locking=off" },
		func(c *Config) { c.Disk = "nbd:localhost:10809" },
		func(c *Config) { c.Disk = "-readconfig" },
		func(c *Config) { c.BaseDisk = "/b/base img" },
		func(c *Config) { c.BaseDisk = "json:{\"x\":1}" },
		func(c *Config) { c.Machine = "pc,accel=kvm" },
		func(c *Config) { c.CPU = "host,+vmx" },
		func(c *Config) { c.MAC = "52:54:00:12:34:56,romfile=/x" },
		func(c *Config) { c.BaseFormat = "raw,backing=x" },
		func(c *Config) { c.Append = "console=ttyS0\n-device x" },
		func(c *Config) { c.Forwards[0].HostAddr = "127.0.0.1,hostfwd=tcp::22-:22" },
		func(c *Config) { c.Forwards[0].HostAddr = "0.0.0.0:1" },
		func(c *Config) { c.Forwards[0].Proto = "tcp,restrict=on" },
		func(c *Config) { c.Forwards[0].HostPort = 70000 },
		func(c *Config) { c.Forwards[0].GuestPort = 0 },
		func(c *Config) { c.Forwards = append(c.Forwards, c.Forwards[0]) },
		func(c *Config) { c.RunDir = "/tmp/" + strings.Repeat("r", 100) },
		func(c *Config) { c.RunDir = "" },
		func(c *Config) { c.MemMiB = 1 },
		func(c *Config) { c.Binary = "qemu;rm" },
	}
	for i, f := range bad {
		c := baseConfig()
		c.Forwards = append([]Forward(nil), c.Forwards...)
		f(&c)
		if a, err := c.Args(); err == nil {
			t.Errorf("case %d accepted: %q", i, a)
		}
	}
}

func TestStartRejectsBadConfigEarly(t *testing.T) {
	c := baseConfig()
	c.RunDir = t.TempDir() + "/r,x"
	if _, err := Start(context.Background(), c); err == nil {
		t.Fatal("started with a comma in RunDir")
	}
}

func TestQEMUVersion(t *testing.T) {
	v, err := QEMUVersion()
	if err != nil {
		t.Skip("no QEMU:", err)
	}
	if !strings.HasPrefix(v, "QEMU emulator version ") {
		t.Fatalf("version %q", v)
	}
	t.Log(v)
}

// QEMU runs in the run folder, so relative paths (a relative --kit or
// --base) must reach it absolute.
func TestRelativePathsBecomeAbsolute(t *testing.T) {
	c := baseConfig()
	c.Kernel, c.Initrd, c.BaseDisk = "kit/vmlinuz", "kit/initrd.img", "kit/rootfs.img"
	n, err := c.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	wd, _ := os.Getwd()
	args, err := n.Args()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := argValue(t, args, "-kernel", 0), filepath.Join(wd, "kit/vmlinuz"); got != want {
		t.Errorf("-kernel %q; want %q", got, want)
	}
	if got, want := n.BaseDisk, filepath.Join(wd, "kit/rootfs.img"); got != want {
		t.Errorf("BaseDisk %q; want %q", got, want)
	}
}

// UEFI firmware as two pflash drives, a generation ID device, free ports.
func TestArgsFirmwareGenIDFreePort(t *testing.T) {
	c := baseConfig()
	c.Kernel, c.Initrd, c.Append = "", "", ""
	c.Firmware, c.FirmwareCode, c.FirmwareVars = FirmwareUEFI, "/usr/share/OVMF/OVMF_CODE_4M.fd", "/tmp/cl-run/efivars.fd"
	c.VMGenID = true
	c.Forwards = []Forward{{HostPort: 0, GuestPort: 80}, {HostPort: 0, GuestPort: 22}}
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	j := strings.Join(a, " ")
	for _, want := range []string{
		"-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
		"-drive if=pflash,format=raw,unit=1,file=/tmp/cl-run/efivars.fd",
		"-device vmgenid,id=vmgenid0,guid=auto",
		"hostfwd=tcp:127.0.0.1:0-:80,hostfwd=tcp:127.0.0.1:0-:22",
	} {
		if !strings.Contains(j, want) {
			t.Errorf("args lack %q:\n%s", want, j)
		}
	}
	if strings.Contains(j, "-kernel") {
		t.Errorf("a firmware boot passes -kernel: %s", j)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.FirmwareVars = "" },
		func(c *Config) { c.Firmware = "coreboot" },
		func(c *Config) { c.Firmware = FirmwareBIOS },
	} {
		b := c
		bad(&b)
		if _, err := b.Args(); err == nil {
			t.Errorf("accepted firmware %q code %q vars %q", b.Firmware, b.FirmwareCode, b.FirmwareVars)
		}
	}
}

// devices returns the -device values of args.
func devices(args []string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "-device" {
			out = append(out, args[i+1])
		}
	}
	return out
}

// The fixed layout (no Devices): the devices today's fields ask for, in
// today's order, at the PCI slots QEMU gave them before addresses were
// pinned (checked on QEMU 7.2 with "info pci": TestDeviceAddressesOnQEMU),
// so bases and streams made before still load.
func TestFixedLayoutGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want []string
	}{
		{"disk and net", func(c *Config) {}, []string{
			"virtio-blk-pci,id=vblk0,drive=disk0,romfile=,addr=02.0",
			"virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=,addr=03.0",
		}},
		{"launch", func(c *Config) { c.VMGenID = true }, []string{
			"virtio-blk-pci,id=vblk0,drive=disk0,romfile=,addr=02.0",
			"virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=,addr=03.0",
			"vmgenid,id=vmgenid0,guid=auto",
		}},
		{"everything", func(c *Config) { c.VNC, c.Balloon, c.VMGenID = true, true, true }, []string{
			"VGA,id=video0,romfile=vgabios-stdvga.bin,addr=02.0",
			"virtio-blk-pci,id=vblk0,drive=disk0,romfile=,addr=03.0",
			"virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=,addr=04.0",
			"virtio-balloon-pci,id=balloon0,free-page-reporting=off,romfile=,addr=05.0",
			"vmgenid,id=vmgenid0,guid=auto",
		}},
		{"no disk, balloon", func(c *Config) { c.Disk, c.BaseDisk, c.Balloon = "", "", true }, []string{
			"virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=,addr=02.0",
			"virtio-balloon-pci,id=balloon0,free-page-reporting=off,romfile=,addr=03.0",
		}},
		{"nothing", func(c *Config) { c.Disk, c.BaseDisk, c.Forwards = "", "", nil }, nil},
	} {
		c := baseConfig()
		tc.mod(&c)
		a, err := c.Args()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := devices(a); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
			t.Errorf("%s: devices\n%s\nwant\n%s", tc.name, strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
		}
		j := strings.Join(a, " ")
		if !strings.Contains(j, "-vga none -display none") || strings.Contains(j, "-vga std") {
			t.Errorf("%s: display options in %s", tc.name, j)
		}
		if strings.Contains(j, "-vnc") != c.VNC {
			t.Errorf("%s: -vnc %v in %s", tc.name, c.VNC, j)
		}
		// The normalized list is what Args made them from.
		n, err := c.Normalize()
		if err != nil {
			t.Fatal(err)
		}
		if len(devices(a)) != len(n.Devices) {
			t.Errorf("%s: %d -device for %d Devices", tc.name, len(devices(a)), len(n.Devices))
		}
		// Normalizing again (Start, then Args) changes nothing.
		if a2, err := n.Args(); err != nil || strings.Join(a2, " ") != j {
			t.Errorf("%s: Args of the normalized config differ: %v\n%s\n%s", tc.name, err, strings.Join(a2, " "), j)
		}
	}
}

// A recorded layout (a QEMU started by hand: default VGA, the disk, a NIC
// with its option ROM, the default serial and parallel ports) is created
// as recorded.
func TestArgsRecordedDevices(t *testing.T) {
	c := baseConfig()
	c.VMGenID = true // follows the list: none there
	c.Devices = []Device{
		{Driver: "VGA", Addr: "02.0", ROMFile: "vgabios-stdvga.bin", VGAMemMB: 16},
		{Driver: "virtio-blk-pci", Addr: "03.0"},
		{Driver: "virtio-net-pci", Addr: "04.0", ROMFile: "efi-virtio.rom"},
		{Driver: "piix3-usb-uhci", Addr: "01.2"},
		{Driver: "virtio-balloon-pci", Addr: "1f.0", Multifunction: true},
		{Driver: "isa-serial"},
		{Driver: "isa-serial", Index: 1},
		{Driver: "isa-parallel"},
	}
	a, err := c.Args()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"VGA,id=video0,vgamem_mb=16,romfile=vgabios-stdvga.bin,addr=02.0",
		"virtio-blk-pci,id=vblk0,drive=disk0,romfile=,addr=03.0",
		"virtio-net-pci,id=vnet0,netdev=net0,mac=52:54:00:c1:0d:01,romfile=efi-virtio.rom,addr=04.0",
		"piix3-usb-uhci,id=usb0,romfile=,addr=01.2",
		"virtio-balloon-pci,id=balloon0,free-page-reporting=off,romfile=,addr=1f.0,multifunction=on",
		"isa-serial,id=serial1,chardev=null-serial1,index=1",
		"isa-parallel,id=parallel0,chardev=null-parallel0,index=0",
	}
	if got := devices(a); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("devices\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	j := strings.Join(a, " ")
	for _, s := range []string{"-chardev null,id=null-serial1", "-chardev null,id=null-parallel0", "-serial chardev:ser0", "-vga none", "-netdev user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"} {
		if !strings.Contains(j, s) {
			t.Errorf("args lack %q: %s", s, j)
		}
	}
	if strings.Contains(j, "vmgenid") {
		t.Errorf("vmgenid outside the list: %s", j)
	}
	n, err := c.Normalize()
	if err != nil {
		t.Fatal(err)
	}
	if !n.Balloon || n.VMGenID {
		t.Errorf("Balloon %v VMGenID %v do not follow the list", n.Balloon, n.VMGenID)
	}
	// VNC only adds the display: the list has one.
	c.VNC = true
	if a, err := c.Args(); err != nil || len(devices(a)) != len(want) || !strings.Contains(strings.Join(a, " "), "-vnc unix:") {
		t.Errorf("VNC: %v %q", err, a)
	}
	// A NIC without a netdev stays unconnected.
	c.Net, c.Forwards = false, nil
	if a, err := c.Args(); err != nil || strings.Contains(strings.Join(a, " "), "netdev") {
		t.Errorf("NIC without Net: %v %q", err, a)
	}
	// Normalize does not share the caller's list.
	n.Devices[0].Addr = "07.0"
	if c.Devices[0].Addr != "02.0" {
		t.Error("Normalize aliases Devices")
	}
}

func TestRecordedDevicesRejected(t *testing.T) {
	rec := func() []Device {
		return []Device{{Driver: "virtio-blk-pci", Addr: "02.0"}, {Driver: "virtio-net-pci", Addr: "03.0"}}
	}
	for name, mod := range map[string]func(*Config){
		"unknown driver":     func(c *Config) { c.Devices = append(c.Devices, Device{Driver: "virtio-rng-pci", Addr: "04.0"}) },
		"injected driver":    func(c *Config) { c.Devices[0].Driver = "virtio-blk-pci,drive=x" },
		"injected addr":      func(c *Config) { c.Devices[0].Addr = "02.0,romfile=/x" },
		"injected romfile":   func(c *Config) { c.Devices[1].ROMFile = "x.rom,bootindex=1" },
		"same addr":          func(c *Config) { c.Devices[1].Addr = "02.0" },
		"disk, no device":    func(c *Config) { c.Devices = c.Devices[1:] },
		"device, no disk":    func(c *Config) { c.Disk, c.BaseDisk = "", "" },
		"forwards, no NIC":   func(c *Config) { c.Devices = c.Devices[:1] },
		"net, no NIC":        func(c *Config) { c.Devices, c.Forwards, c.Net = c.Devices[:1], nil, true },
		"fpr, no balloon":    func(c *Config) { c.Balloon, c.FreePageReporting = true, true },
		"two disks":          func(c *Config) { c.Devices = append(c.Devices, Device{Driver: "virtio-blk-pci", Addr: "04.0"}) },
		"ISA port with addr": func(c *Config) { c.Devices = append(c.Devices, Device{Driver: "isa-serial", Index: 1, Addr: "04.0"}) },
	} {
		c := baseConfig()
		c.Devices = rec()
		mod(&c)
		if a, err := c.Args(); err == nil {
			t.Errorf("%s: accepted: %q", name, devices(a))
		}
	}
	c := baseConfig()
	c.Devices = rec()
	if _, err := c.Args(); err != nil {
		t.Fatal(err)
	}
}
