package capture

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/qmpctl"
)

// fakeQEMU answers QMP like a QEMU 7.2 with the QOM tree, PCI functions
// and drives it is given (trimmed from what real QEMUs answered).
type fakeQEMU struct {
	lists map[string][]qomChild // qom-list
	props map[string]any        // qom-get, by "path property"
	pci   []pciFunc             // query-pci, bus 0
	block []map[string]any      // query-block

	mu   sync.Mutex
	cmds []string // commands received
}

type qomChild struct {
	Name string `json:"name"`
	Type string `json:"type"`
}

type pciFunc struct {
	Bus       int    `json:"bus"`
	Slot      int    `json:"slot"`
	Function  int    `json:"function"`
	QdevID    string `json:"qdev_id"`
	ClassInfo struct {
		Desc string `json:"desc,omitempty"`
	} `json:"class_info"`
	ID struct {
		Vendor int `json:"vendor"`
		Device int `json:"device"`
	} `json:"id"`
}

func fn(slot, function, vendor, device int, id, desc string) pciFunc {
	f := pciFunc{Slot: slot, Function: function, QdevID: id}
	f.ClassInfo.Desc = desc
	f.ID.Vendor, f.ID.Device = vendor, device
	return f
}

// board is what every pc-i440fx machine has.
func board() (unattached []qomChild, pci []pciFunc) {
	for i, t := range []string{"qemu64-x86_64-cpu", "kvmvapic", "i440FX", "PIIX3", "isa-i8259", "hpet", "mc146818rtc",
		"isa-pit", "isa-pcspk", "isa-fdc", "floppy", "i8042", "vmport", "vmmouse", "port92", "piix3-ide", "ide-cd", "PIIX4_PM", "smbus-eeprom"} {
		unattached = append(unattached, qomChild{fmt.Sprintf("device[%d]", 40+i), "child<" + t + ">"})
	}
	unattached = append(unattached, qomChild{"type", "string"}, qomChild{"pc.ram[0]", "child<memory-region>"}, qomChild{"non-qdev-gpio[3]", "child<irq>"})
	return unattached, []pciFunc{fn(0, 0, 0x8086, 0x1237, "", "Host bridge"), fn(1, 0, 0x8086, 0x7000, "", "ISA bridge"),
		fn(1, 1, 0x8086, 0x7010, "", "IDE controller"), fn(1, 3, 0x8086, 0x7113, "", "Bridge")}
}

// emptyDrives are QEMU's default empty drives.
func emptyDrives() []map[string]any {
	return []map[string]any{
		{"device": "ide1-cd0", "qdev": "/machine/unattached/device[56]", "removable": true},
		{"device": "floppy0", "qdev": "/machine/unattached/device[50]", "removable": true},
		{"device": "sd0", "removable": true},
	}
}

func drive(device, qdev, file string) map[string]any {
	return map[string]any{"device": device, "qdev": qdev, "inserted": map[string]any{"file": file, "drv": "qcow2"}}
}

// handStarted is "qemu-system-x86_64 -m 256 -kernel ... -drive
// file=TOP,if=none,id=d0 -device virtio-blk-pci,drive=d0 -netdev user,id=n0
// -device virtio-net-pci,netdev=n0 -serial unix:... -display none": the
// default VGA, serial and parallel port come with it.
func handStarted(top string) *fakeQEMU {
	un, pci := board()
	un = append(un, qomChild{"device[8]", "child<VGA>"}, qomChild{"device[13]", "child<isa-serial>"}, qomChild{"device[14]", "child<isa-parallel>"})
	f := &fakeQEMU{
		lists: map[string][]qomChild{
			"/machine/peripheral":      {{"type", "string"}},
			"/machine/peripheral-anon": {{"type", "string"}, {"device[0]", "child<virtio-blk-pci>"}, {"device[1]", "child<virtio-net-pci>"}},
			"/machine/unattached":      un,
		},
		props: map[string]any{},
		pci: append(pci, fn(2, 0, 0x1234, 0x1111, "", "VGA controller"), fn(3, 0, 0x1af4, 0x1001, "", "SCSI controller"),
			fn(4, 0, 0x1af4, 0x1000, "", "Ethernet controller")),
		block: append([]map[string]any{drive("d0", "/machine/peripheral-anon/device[0]/virtio-backend", top)}, emptyDrives()...),
	}
	f.pciDev("/machine/unattached/device[8]", 2, 0, "vgabios-stdvga.bin")
	f.props["/machine/unattached/device[8] vgamem_mb"] = 16
	f.pciDev("/machine/peripheral-anon/device[0]", 3, 0, "")
	f.pciDev("/machine/peripheral-anon/device[1]", 4, 0, "efi-virtio.rom")
	f.props["/machine/unattached/device[13] index"] = 0
	f.props["/machine/unattached/device[14] index"] = 0
	return f
}

// libvirtStarted is what libvirt's -device lines make (ids usb, video0,
// net0, virtio-disk0, balloon0, serial0; -nodefaults).
func libvirtStarted(top string) *fakeQEMU {
	un, pci := board()
	p := "/machine/peripheral/"
	f := &fakeQEMU{
		lists: map[string][]qomChild{
			"/machine/peripheral": {{"type", "string"}, {"usb", "child<piix3-usb-uhci>"}, {"video0", "child<VGA>"}, {"net0", "child<virtio-net-pci>"},
				{"virtio-disk0", "child<virtio-blk-pci>"}, {"balloon0", "child<virtio-balloon-pci>"}, {"serial0", "child<isa-serial>"}},
			"/machine/peripheral-anon": {{"type", "string"}},
			"/machine/unattached":      un,
		},
		props: map[string]any{},
		pci: append(pci, fn(1, 2, 0x8086, 0x7020, "usb", "USB controller"), fn(2, 0, 0x1234, 0x1111, "video0", "VGA controller"),
			fn(3, 0, 0x1af4, 0x1000, "net0", "Ethernet controller"), fn(4, 0, 0x1af4, 0x1001, "virtio-disk0", "SCSI controller"),
			fn(5, 0, 0x1af4, 0x1002, "balloon0", "")),
		block: []map[string]any{drive("", p+"virtio-disk0/virtio-backend", top)},
	}
	f.pciDev(p+"usb", 1, 2, "")
	f.pciDev(p+"video0", 2, 0, "vgabios-stdvga.bin")
	f.props[p+"video0 vgamem_mb"] = 16
	f.pciDev(p+"net0", 3, 0, "efi-virtio.rom")
	f.pciDev(p+"virtio-disk0", 4, 0, "")
	f.pciDev(p+"balloon0", 5, 0, "")
	f.props[p+"balloon0 free-page-reporting"] = false
	f.props[p+"serial0 index"] = 0
	return f
}

func (f *fakeQEMU) pciDev(path string, slot, function int, rom string) {
	f.props[path+" addr"] = slot<<3 | function
	f.props[path+" multifunction"] = false
	f.props[path+" romfile"] = rom
}

func (f *fakeQEMU) answer(cmd string, args json.RawMessage) (any, string) {
	var a struct{ Path, Property string }
	json.Unmarshal(args, &a)
	switch cmd {
	case "qom-list":
		if l, ok := f.lists[a.Path]; ok {
			return l, ""
		}
		return nil, "Device '" + a.Path + "' not found"
	case "qom-get":
		if v, ok := f.props[a.Path+" "+a.Property]; ok {
			return v, ""
		}
		return nil, fmt.Sprintf("Property '%s' not found", a.Property)
	case "query-pci":
		return []map[string]any{{"bus": 0, "devices": f.pci}}, ""
	case "query-block":
		return f.block, ""
	}
	return nil, "The command " + cmd + " has not been found"
}

// serve listens on a socket in a fresh folder and answers like QEMU.
func (f *fakeQEMU) serve(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go f.conn(conn)
		}
	}()
	return path
}

func (f *fakeQEMU) conn(conn net.Conn) {
	defer conn.Close()
	conn.Write([]byte(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}}` + "\r\n"))
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &req) != nil {
			return
		}
		f.mu.Lock()
		f.cmds = append(f.cmds, req.Execute)
		f.mu.Unlock()
		resp := map[string]any{}
		if len(req.ID) > 0 {
			resp["id"] = req.ID
		}
		if req.Execute == "qmp_capabilities" {
			resp["return"] = map[string]any{}
		} else if v, e := f.answer(req.Execute, req.Arguments); e != "" {
			resp["error"] = map[string]string{"class": "GenericError", "desc": e}
		} else {
			resp["return"] = v
		}
		b, _ := json.Marshal(resp)
		conn.Write(append(b, '\r', '\n'))
	}
}

func (f *fakeQEMU) list(t *testing.T, disk string) ([]format.Device, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmpctl.Dial(ctx, f.serve(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return listDevices(ctx, c, disk)
}

func topFile(t *testing.T) string {
	p := filepath.Join(t.TempDir(), "top.qcow2")
	if err := os.WriteFile(p, []byte("QFI\xfb"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestListDevicesHandStarted(t *testing.T) {
	top := topFile(t)
	devs, err := handStarted(top).list(t, top)
	if err != nil {
		t.Fatal(err)
	}
	want := []format.Device{
		{Driver: "VGA", Addr: "02.0", ROMFile: "vgabios-stdvga.bin", VGAMemMB: 16},
		{Driver: "virtio-blk-pci", Addr: "03.0"},
		{Driver: "virtio-net-pci", Addr: "04.0", ROMFile: "efi-virtio.rom"},
		{Driver: "isa-parallel"},
		{Driver: "isa-serial"},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("devices\n%+v\nwant\n%+v", devs, want)
	}
}

func TestListDevicesLibvirt(t *testing.T) {
	top := topFile(t)
	devs, err := libvirtStarted(top).list(t, top)
	if err != nil {
		t.Fatal(err)
	}
	want := []format.Device{
		{Driver: "piix3-usb-uhci", Addr: "01.2"},
		{Driver: "VGA", Addr: "02.0", ROMFile: "vgabios-stdvga.bin", VGAMemMB: 16},
		{Driver: "virtio-net-pci", Addr: "03.0", ROMFile: "efi-virtio.rom"},
		{Driver: "virtio-blk-pci", Addr: "04.0"},
		{Driver: "virtio-balloon-pci", Addr: "05.0"},
		{Driver: "isa-serial"},
	}
	if !reflect.DeepEqual(devs, want) {
		t.Errorf("devices\n%+v\nwant\n%+v", devs, want)
	}
}

// Whatever vm-resume cannot recreate is refused with a message that names
// the device and says what to do.
func TestListDevicesRefused(t *testing.T) {
	top := topFile(t)
	other := topFile(t)
	p := "/machine/peripheral/"
	for _, tc := range []struct {
		name string
		mod  func(f *fakeQEMU)
		disk string
		want []string
	}{
		{"rng", func(f *fakeQEMU) {
			f.lists["/machine/peripheral"] = append(f.lists["/machine/peripheral"], qomChild{"rng0", "child<virtio-rng-pci>"})
			f.pci = append(f.pci, fn(6, 0, 0x1af4, 0x1005, "rng0", ""))
		}, top, []string{"device rng0 (virtio-rng-pci) cannot be recreated by vm-resume", "remove it from the VM's configuration", "virtio-net-pci"}},
		{"anonymous tablet", func(f *fakeQEMU) {
			f.lists["/machine/peripheral-anon"] = append(f.lists["/machine/peripheral-anon"], qomChild{"device[0]", "child<usb-tablet>"})
		}, top, []string{"device /machine/peripheral-anon/device[0] (usb-tablet)"}},
		{"second virtio disk", func(f *fakeQEMU) {
			f.lists["/machine/peripheral"] = append(f.lists["/machine/peripheral"], qomChild{"virtio-disk1", "child<virtio-blk-pci>"})
			f.pciDev(p+"virtio-disk1", 6, 0, "")
			f.pci = append(f.pci, fn(6, 0, 0x1af4, 0x1001, "virtio-disk1", "SCSI controller"))
			f.block = append(f.block, drive("", p+"virtio-disk1/virtio-backend", other))
		}, top, []string{"virtio-disk1 (virtio-blk-pci)", "second disk"}},
		{"second virtio disk listed first", func(f *fakeQEMU) {
			f.lists["/machine/peripheral"] = append([]qomChild{{"data", "child<virtio-blk-pci>"}}, f.lists["/machine/peripheral"]...)
			f.pciDev(p+"data", 6, 0, "")
			f.pci = append(f.pci, fn(6, 0, 0x1af4, 0x1001, "data", "SCSI controller"))
			f.block = append([]map[string]any{drive("", p+"data/virtio-backend", other)}, f.block...)
		}, top, []string{"device data (virtio-blk-pci)", "second disk"}},
		{"-hda", func(f *fakeQEMU) {
			f.lists["/machine/unattached"] = append(f.lists["/machine/unattached"], qomChild{"device[23]", "child<ide-hd>"})
			f.block = append(f.block, drive("ide0-hd0", "/machine/unattached/device[23]", other))
		}, top, []string{"drive ide0-hd0", "second disk", other}},
		{"-net nic", func(f *fakeQEMU) {
			f.lists["/machine/unattached"] = append(f.lists["/machine/unattached"], qomChild{"device[9]", "child<e1000>"})
			f.pci = append(f.pci, fn(6, 0, 0x8086, 0x100e, "", "Ethernet controller"))
		}, top, []string{"Ethernet controller 8086:100e at 00:06.0", "-device virtio-net-pci"}},
		{"bridge", func(f *fakeQEMU) {
			f.lists["/machine/peripheral"] = append(f.lists["/machine/peripheral"], qomChild{"br0", "child<pci-bridge>"})
		}, top, []string{"device br0 (pci-bridge)"}},
		{"another disk file", func(f *fakeQEMU) {}, other, []string{"virtio-disk0 (virtio-blk-pci) is on " + top, "not on --disk " + other}},
		{"no --disk", func(f *fakeQEMU) {}, "", []string{"device virtio-disk0 (virtio-blk-pci) is the VM's disk", "--disk"}},
		{"--disk, no virtio disk", func(f *fakeQEMU) {
			f.lists["/machine/peripheral"] = f.lists["/machine/peripheral"][:4]
			f.pci = f.pci[:7]
			f.block = nil
		}, top, []string{"no virtio-blk-pci device"}},
		{"free page reporting", func(f *fakeQEMU) { f.props[p+"balloon0 free-page-reporting"] = true },
			top, []string{"device balloon0 (virtio-balloon-pci)", "free-page-reporting"}},
		{"ROM from a path", func(f *fakeQEMU) { f.props[p+"net0 romfile"] = "/srv/roms/ipxe.rom" },
			top, []string{"device net0 (virtio-net-pci)", "/srv/roms/ipxe.rom", "romfile=ipxe.rom"}},
		{"UEFI", func(f *fakeQEMU) { f.block = append(f.block, drive("pflash0", "", "/usr/share/OVMF/OVMF_CODE_4M.fd")) },
			top, []string{"pflash drive pflash0", "--firmware uefi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := libvirtStarted(top)
			tc.mod(f)
			devs, err := f.list(t, tc.disk)
			if err == nil {
				t.Fatalf("accepted: %+v", devs)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			t.Log(err)
		})
	}
}

// A refused VM is refused before it is stopped: it keeps running, and the
// stream holds no header.
func TestCaptureRefusesBeforeStopping(t *testing.T) {
	top := topFile(t)
	f := libvirtStarted(top)
	f.lists["/machine/peripheral"] = append(f.lists["/machine/peripheral"], qomChild{"rng0", "child<virtio-rng-pci>"})
	var out bytes.Buffer
	_, err := Capture(context.Background(), Options{QMP: f.serve(t), Disk: top, After: Quit}, format.NewWriter(&out))
	if err == nil || !strings.Contains(err.Error(), "rng0") {
		t.Fatalf("Capture = %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.cmds {
		if c == "stop" || c == "quit" || c == "migrate" {
			t.Errorf("refused VM got %q (commands %v)", c, f.cmds)
		}
	}
	if out.Len() > 0 {
		t.Errorf("refused capture wrote %d bytes", out.Len())
	}
}
