package vm_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"
)

// pciFunction is one function on QEMU's root bus, from query-pci.
type pciFunction struct {
	Slot, Function int
	QdevID         string `json:"qdev_id"`
}

// The normalized Devices say where QEMU puts each device: the fixed
// layout's slots are the ones QEMU assigned before addr= was pinned, and a
// recorded layout lands as recorded, option ROMs and video memory
// included (their RAM blocks are named after the address).
func TestDeviceAddressesOnQEMU(t *testing.T) {
	dir := shortDir(t)
	base := filepath.Join(dir, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		cfg     vm.Config
		wantIDs map[string]string // addr -> qdev id
		blocks  []string
	}{
		{"fixed", vm.Config{VNC: true, Net: true, Balloon: true, VMGenID: true},
			map[string]string{"02.0": "video0", "03.0": "vblk0", "04.0": "vnet0", "05.0": "balloon0"},
			[]string{"0000:00:02.0/vga.vram", "0000:00:02.0/vga.rom"}},
		{"recorded", vm.Config{Net: true, Devices: []vm.Device{
			{Driver: format.DriverUHCI, Addr: "01.2"},
			{Driver: format.DriverVGA, Addr: "02.0", ROMFile: "vgabios-stdvga.bin", VGAMemMB: 8},
			{Driver: format.DriverVirtioBlk, Addr: "03.0"},
			{Driver: format.DriverVirtioNet, Addr: "04.0", ROMFile: "efi-virtio.rom"},
			{Driver: format.DriverSerial},
			{Driver: format.DriverSerial, Index: 1},
			{Driver: format.DriverParallel},
			{Driver: format.DriverVMGenID},
		}},
			map[string]string{"01.2": "usb0", "02.0": "video0", "03.0": "vblk0", "04.0": "vnet0"},
			[]string{"0000:00:04.0/virtio-net-pci.rom", "0000:00:02.0/vga.vram"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cfg
			c.Name, c.RunDir, c.MemMiB, c.MemShare, c.Accel = "devs", filepath.Join(dir, tc.name), 64, true, "tcg"
			c.Disk, c.BaseDisk = filepath.Join(dir, tc.name+".qcow2"), base
			in := startNoGuest(t, c)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			q, err := qmpctl.Dial(ctx, in.QMPPath())
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			var buses []struct{ Devices []pciFunction }
			if err := q.Execute(ctx, "query-pci", nil, &buses); err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, f := range buses[0].Devices {
				if f.Slot > 1 || f.Function == 2 { // past the board's own functions
					got[format.PCIAddr(f.Slot, f.Function)] = f.QdevID
				}
			}
			t.Logf("root bus: %v", got)
			if len(got) != len(tc.wantIDs) {
				t.Errorf("PCI functions %v; want %v", got, tc.wantIDs)
			}
			for addr, id := range tc.wantIDs {
				if got[addr] != id {
					t.Errorf("at %s: %q; want %q", addr, got[addr], id)
				}
			}
			for _, d := range in.Config.Devices {
				if _, _, ok := d.PCISlot(); ok {
					if _, there := got[d.Addr]; !there {
						t.Errorf("normalized device %s is not where Devices says", d)
					}
				}
			}
			blocks, err := q.HumanMonitorCommand(ctx, "info ramblock")
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range tc.blocks {
				if !strings.Contains(blocks, b+" ") {
					t.Errorf("no RAM block %s in\n%s", b, blocks)
				}
			}
			if tc.name == "recorded" && !strings.Contains(blocks, "0x0000000000800000") {
				t.Errorf("vgamem_mb=8 did not give 8 MiB of video memory:\n%s", blocks)
			}
		})
	}
}
