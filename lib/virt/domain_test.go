package virt

import (
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/vm"

	"libvirt.org/go/libvirtxml"
)

func parse(t *testing.T, doc string) *libvirtxml.Domain {
	t.Helper()
	var d libvirtxml.Domain
	if err := d.Unmarshal(doc); err != nil {
		t.Fatalf("%v\n%s", err, doc)
	}
	return &d
}

func slotOf(a *libvirtxml.DomainAddress) uint {
	if a == nil || a.PCI == nil || a.PCI.Slot == nil {
		return 0
	}
	return *a.PCI.Slot
}

// The kit's layout: the devices at the slots vm.Config gives them, RAM as
// a private mapping of the base memory file with the block id "mem", our
// QMP monitor, the incoming migration, nothing libvirt would add.
func TestDomainXMLKit(t *testing.T) {
	cfg := vm.Config{Name: "x", RunDir: "/run/cloudlet/x-1", MemMiB: 256, MemPath: "/srv/b/mem.ram",
		Kernel: "/k/vmlinuz", Initrd: "/k/initrd.img", Append: vm.KitAppend,
		Disk: "/run/cloudlet/x-1/disk.qcow2", Net: true, Incoming: true, VMGenID: true, Accel: "tcg"}
	doc, err := DomainXML(cfg, DomainOptions{Name: "x-1", Accel: "tcg", SecModels: []string{"none", "dac", "apparmor"}})
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, doc)
	if d.Type != "qemu" || d.Name != "x-1" || d.Memory.Value != 256 || d.OS.Kernel != "/k/vmlinuz" || d.OS.Cmdline != vm.KitAppend {
		t.Errorf("domain basics wrong:\n%s", doc)
	}
	if d.Features == nil || d.Features.ACPI == nil {
		t.Error("no <acpi/>: libvirt would pass -no-acpi")
	}
	if d.GenID == nil {
		t.Error("no <genid/>")
	}
	dev := d.Devices
	if len(dev.Disks) != 1 || slotOf(dev.Disks[0].Address) != 2 || dev.Disks[0].Source.File.File != cfg.Disk {
		t.Errorf("disk: %+v", dev.Disks)
	}
	if len(dev.Interfaces) != 1 || slotOf(dev.Interfaces[0].Address) != 3 || dev.Interfaces[0].ROM == nil || dev.Interfaces[0].ROM.Enabled != "no" ||
		dev.Interfaces[0].MAC.Address != vm.DefaultMAC || dev.Interfaces[0].Source.User == nil {
		t.Errorf("interface: %+v", dev.Interfaces)
	}
	if dev.MemBalloon == nil || dev.MemBalloon.Model != "none" || len(dev.Controllers) != 1 || dev.Controllers[0].Model != "none" ||
		len(dev.Videos) != 1 || dev.Videos[0].Model.Type != "none" {
		t.Errorf("libvirt's defaults not turned off: balloon %+v controllers %+v videos %+v", dev.MemBalloon, dev.Controllers, dev.Videos)
	}
	if len(dev.Serials) != 1 || dev.Serials[0].Source.Pty == nil || dev.Serials[0].Log == nil || dev.Serials[0].Log.File != "/run/cloudlet/x-1/serial.log" {
		t.Errorf("serial: %+v", dev.Serials)
	}
	var labels []string
	for _, l := range d.SecLabel {
		labels = append(labels, l.Model+":"+l.Type+":"+l.Relabel+":"+l.Label)
	}
	if got := strings.Join(labels, " "); got != "dac:static:no:+0:+0 apparmor:none::" {
		t.Errorf("seclabels %q", got)
	}
	var args []string
	for _, a := range d.QEMUCommandline.Args {
		args = append(args, a.Value)
	}
	want := "-object memory-backend-file,id=mem,size=256M,mem-path=/srv/b/mem.ram,share=off -machine memory-backend=mem " +
		"-chardev socket,id=cloudlet-qmp,path=/run/cloudlet/x-1/qmp.sock,server=on,wait=off -mon chardev=cloudlet-qmp,mode=control -incoming defer"
	if got := strings.Join(args, " "); got != want {
		t.Errorf("qemu:commandline\n got %s\nwant %s", got, want)
	}
	m, err := InstanceOf(d)
	if err != nil || m.RunDir != cfg.RunDir {
		t.Errorf("metadata: %+v %v", m, err)
	}
}

// A device set libvirt chose (as vm-capture records it) comes back at the
// same addresses, with the ROM and video memory QEMU had; plain RAM needs
// no memory object.
func TestDomainXMLRecordedDevices(t *testing.T) {
	devs := []vm.Device{
		{Driver: format.DriverUHCI, Addr: "01.2"},
		{Driver: format.DriverCirrus, Addr: "02.0", ROMFile: "vgabios-cirrus.bin"},
		{Driver: format.DriverVirtioNet, Addr: "03.0", ROMFile: "efi-virtio.rom"},
		{Driver: format.DriverVirtioBlk, Addr: "04.0"},
		{Driver: format.DriverVirtioBalloon, Addr: "05.0"},
		{Driver: format.DriverSerial},
		{Driver: format.DriverParallel},
	}
	cfg := vm.Config{Name: "y", RunDir: "/run/cloudlet/y-1", MemPlain: true, Disk: "/run/cloudlet/y-1/disk.qcow2", Net: true, Devices: devs}
	doc, err := DomainXML(cfg, DomainOptions{Name: "y-1", Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	d := parse(t, doc)
	dev := d.Devices
	if len(dev.Controllers) != 1 || dev.Controllers[0].Model != "piix3-uhci" || *dev.Controllers[0].Address.PCI.Function != 2 || slotOf(dev.Controllers[0].Address) != 1 {
		t.Errorf("usb: %+v", dev.Controllers)
	}
	if len(dev.Videos) != 1 || dev.Videos[0].Model.Type != "cirrus" || dev.Videos[0].Model.VRam != 4096 || slotOf(dev.Videos[0].Address) != 2 {
		t.Errorf("video: %+v", dev.Videos)
	}
	if r := dev.Interfaces[0].ROM; r == nil || r.File == nil || *r.File != "efi-virtio.rom" || slotOf(dev.Interfaces[0].Address) != 3 {
		t.Errorf("interface rom: %+v", dev.Interfaces[0])
	}
	if slotOf(dev.Disks[0].Address) != 4 || dev.MemBalloon.Model != "virtio" || slotOf(dev.MemBalloon.Address) != 5 {
		t.Errorf("disk %+v balloon %+v", dev.Disks[0], dev.MemBalloon)
	}
	if len(dev.Serials) != 1 || len(dev.Parallels) != 1 || dev.Parallels[0].Source.Null == nil {
		t.Errorf("serials %+v parallels %+v", dev.Serials, dev.Parallels)
	}
	if d.GenID != nil {
		t.Error("genid without a vmgenid device")
	}
	for _, a := range d.QEMUCommandline.Args {
		if strings.Contains(a.Value, "memory-backend") {
			t.Errorf("plain RAM with a memory object: %s", a.Value)
		}
	}
	if _, err := DomainXML(cfg, DomainOptions{Name: "bad name", Accel: "tcg"}); err == nil {
		t.Error("a domain name with a space was accepted")
	}
}

func TestDomainName(t *testing.T) {
	for in, want := range map[string]string{
		"/run/cloudlet/web-1a2b3c4d":              "web-1a2b3c4d",
		"/tmp/my.run dir":                         "my-run-dir",
		"/tmp/.hidden":                            "vm-hidden",
		"/x/" + strings.Repeat("a", 70) + "-tail": strings.Repeat("a", 59) + "-tail",
	} {
		got := DomainName(in)
		if got != want {
			t.Errorf("DomainName(%q) = %q, want %q", in, got, want)
		}
		if err := vm.CheckID("domain", got); err != nil {
			t.Errorf("DomainName(%q) = %q: %v", in, got, err)
		}
	}
}
