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
