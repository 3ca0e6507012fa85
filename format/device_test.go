package format

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

// handLayout is what a QEMU started by hand (no -nodefaults) has, as
// vm-capture --qmp records it.
func handLayout() []Device {
	return []Device{
		{Driver: DriverVGA, Addr: "02.0", ROMFile: "vgabios-stdvga.bin", VGAMemMB: 16},
		{Driver: DriverVirtioBlk, Addr: "03.0"},
		{Driver: DriverVirtioNet, Addr: "04.0", ROMFile: "efi-virtio.rom"},
		{Driver: DriverSerial},
		{Driver: DriverParallel},
	}
}

func TestDevicesValid(t *testing.T) {
	libvirt := []Device{
		{Driver: DriverUHCI, Addr: "01.2"},
		{Driver: DriverCirrus, Addr: "02.0", ROMFile: "vgabios-cirrus.bin"},
		{Driver: DriverVirtioNet, Addr: "03.0", ROMFile: "efi-virtio.rom"},
		{Driver: DriverVirtioBlk, Addr: "04.0"},
		{Driver: DriverVirtioBalloon, Addr: "1f.0", Multifunction: true},
		{Driver: DriverSerial, Index: 0},
		{Driver: DriverSerial, Index: 3},
		{Driver: DriverVMGenID},
	}
	for _, devs := range [][]Device{handLayout(), libvirt, nil} {
		h := testHeader(KindFull)
		h.VM.Devices = devs
		h.VM.VMGenID = HasDriver(devs, DriverVMGenID)
		if err := h.Validate(); err != nil {
			t.Errorf("%v: %v", devs, err)
		}
	}
	if s, f, ok := (Device{Driver: DriverUHCI, Addr: "01.2"}).PCISlot(); !ok || s != 1 || f != 2 {
		t.Errorf("PCISlot(01.2) = %d %d %v", s, f, ok)
	}
	if _, _, ok := (Device{Driver: DriverVMGenID}).PCISlot(); ok {
		t.Error("vmgenid has a PCI slot")
	}
	if PCIAddr(0x1f, 7) != "1f.7" || PCIAddr(3, 0) != "03.0" {
		t.Error("PCIAddr")
	}
}

func TestDevicesRejected(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*VMDesc)
		want string
	}{
		{"unknown driver", func(d *VMDesc) { d.Devices = append(d.Devices, Device{Driver: "virtio-rng-pci", Addr: "05.0"}) }, "virtio-rng-pci"},
		{"option injection", func(d *VMDesc) { d.Devices[1].Driver = "virtio-blk-pci,drive=x" }, "not one"},
		{"short addr", func(d *VMDesc) { d.Devices[1].Addr = "3.0" }, "SS.F"},
		{"function 8", func(d *VMDesc) { d.Devices[1].Addr = "03.8" }, "SS.F"},
		{"slot 32", func(d *VMDesc) { d.Devices[1].Addr = "20.0" }, "SS.F"},
		{"upper case", func(d *VMDesc) { d.Devices[1].Addr = "0A.0" }, "SS.F"},
		{"addr injection", func(d *VMDesc) { d.Devices[1].Addr = "03.0,romfile=/etc/shadow" }, "SS.F"},
		{"PCI without addr", func(d *VMDesc) { d.Devices[1].Addr = "" }, "SS.F"},
		{"same addr", func(d *VMDesc) { d.Devices[2].Addr = "03.0" }, "two devices"},
		{"romfile path", func(d *VMDesc) { d.Devices[2].ROMFile = "/etc/passwd" }, "romfile"},
		{"romfile option", func(d *VMDesc) { d.Devices[2].ROMFile = "efi-virtio.rom,x=y" }, "romfile"},
		{"two NICs", func(d *VMDesc) { d.Devices = append(d.Devices, Device{Driver: DriverVirtioNet, Addr: "05.0"}) }, "more than 1 virtio-net-pci"},
		{"two displays", func(d *VMDesc) { d.Devices = append(d.Devices, Device{Driver: DriverCirrus, Addr: "05.0"}) }, "display"},
		{"ISA with addr", func(d *VMDesc) { d.Devices[3].Addr = "05.0" }, "not a PCI device"},
		{"vmgenid with romfile", func(d *VMDesc) {
			d.VMGenID = true
			d.Devices = append(d.Devices, Device{Driver: DriverVMGenID, ROMFile: "x.rom"})
		}, "not a PCI device"},
		{"serial 4", func(d *VMDesc) { d.Devices[3].Index = 4 }, "index 4"},
		{"serial twice", func(d *VMDesc) { d.Devices = append(d.Devices, Device{Driver: DriverSerial}) }, "two devices"},
		{"PCI index", func(d *VMDesc) { d.Devices[2].Index = 1 }, "index"},
		{"vgamem on a NIC", func(d *VMDesc) { d.Devices[2].VGAMemMB = 16 }, "vgamem"},
		{"vgamem huge", func(d *VMDesc) { d.Devices[0].VGAMemMB = 1024 }, "vgamem"},
		{"too many", func(d *VMDesc) {
			for i := 0; i < MaxDevices; i++ {
				d.Devices = append(d.Devices, Device{Driver: DriverSerial, Index: 1})
			}
		}, "at most"},
		{"vmgenid flag without device", func(d *VMDesc) { d.VMGenID = true }, "vmgenid"},
		{"disk without device", func(d *VMDesc) { d.Devices = append(d.Devices[:1], d.Devices[2:]...) }, "disk"},
		{"device without disk", func(d *VMDesc) { d.DiskSize = 0 }, "disk"},
	} {
		h := testHeader(KindFull)
		h.VM.Devices = handLayout()
		tc.mod(&h.VM)
		err := h.Validate()
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate = %v; want ErrMalformed mentioning %q", tc.name, err, tc.want)
		}
	}
}

// The device list is optional both ways: a header without it decodes as
// before (nil), and a reader that predates it ignores it.
func TestDevicesCompatible(t *testing.T) {
	h := testHeader(KindFull)
	old, err := Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(old), "devices") {
		t.Error("a header without devices encodes the key")
	}
	var back Header
	if err := Unmarshal(old, &back); err != nil || back.VM.Devices != nil {
		t.Fatalf("old header: %v, devices %v", err, back.VM.Devices)
	}
	h.VM.Devices = handLayout()
	b, err := Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back.VM.Devices, h.VM.Devices) {
		t.Fatalf("round trip: %v, %+v", err, back.VM.Devices)
	}
	type oldVMDesc struct {
		Machine string `msgpack:"machine"`
		MemSize uint64 `msgpack:"mem_size"`
	}
	var o struct {
		Kind string    `msgpack:"kind"`
		VM   oldVMDesc `msgpack:"vm"`
	}
	if err := Unmarshal(b, &o); err != nil || o.VM.Machine != h.VM.Machine || o.VM.MemSize != h.VM.MemSize {
		t.Fatalf("an older reader: %v %+v", err, o)
	}
}
