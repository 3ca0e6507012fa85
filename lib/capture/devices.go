package capture

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"cloudlet/format"
	"cloudlet/lib/qmpctl"
)

// Where QEMU keeps devices in its QOM tree: -device ones with an id, those
// without, and the ones the machine and QEMU's defaults made (-vga, -serial,
// the default parallel port, -usb, next to the board's own devices).
var deviceContainers = []string{"/machine/peripheral", "/machine/peripheral-anon", "/machine/unattached"}

// boardPCI are the PCI functions the machine type itself creates (vendor
// and device IDs): i440FX host bridge, PIIX3 ISA bridge, IDE and ACPI;
// q35's MCH, ICH9 LPC, AHCI and SMBus. vm-resume's QEMU has them from
// the machine type.
var boardPCI = map[[2]int]bool{
	{0x8086, 0x1237}: true, {0x8086, 0x7000}: true, {0x8086, 0x7010}: true, {0x8086, 0x7113}: true,
	{0x8086, 0x29c0}: true, {0x8086, 0x2918}: true, {0x8086, 0x2922}: true, {0x8086, 0x2930}: true,
}

// supported names the drivers vm-resume recreates, for messages.
func supported() string {
	return strings.Join([]string{format.DriverVirtioBlk + " (the one disk)", format.DriverVirtioNet, format.DriverVirtioBalloon,
		format.DriverVMGenID, format.DriverUHCI, format.DriverVGA, format.DriverCirrus, format.DriverSerial, format.DriverParallel}, ", ")
}

// qdev is a device found in the QOM tree.
type qdev struct {
	path string // QOM path
	id   string // -device id; "" when it has none
	dev  format.Device
}

// name is how a message names the device.
func (d qdev) name() string {
	if d.id != "" {
		return d.id
	}
	return d.path
}

// refuse is the error for a device vm-resume cannot recreate.
func refuse(name, driver, why, fix string) error {
	return fmt.Errorf("device %s (%s) cannot be recreated by vm-resume: %s; %s", name, driver, why, fix)
}

const fixRemove = "remove it from the VM's configuration (its QEMU command line or libvirt domain) and restart the VM before capturing, or capture a VM that vm-resume launched"

// listDevices returns the devices of a QEMU that vm-resume did not start,
// as the VM description records them, after checking that vm-resume can
// recreate every one: known drivers only (anything else is refused here,
// at capture time, naming the device), every PCI function on the root bus
// accounted for, and exactly one disk, the virtio-blk-pci whose image is
// disk (the --disk top layer; "" for a VM captured without its disk).
func listDevices(ctx context.Context, c *qmpctl.Client, disk string) ([]format.Device, error) {
	var found []qdev
	for _, dir := range deviceContainers {
		var children []struct{ Name, Type string }
		if err := c.Execute(ctx, "qom-list", map[string]string{"path": dir}, &children); err != nil {
			return nil, fmt.Errorf("listing the VM's devices (qom-list %s): %w", dir, err)
		}
		for _, ch := range children {
			driver, ok := strings.CutPrefix(ch.Type, "child<")
			if !ok {
				continue
			}
			driver = strings.TrimSuffix(driver, ">")
			d := qdev{path: dir + "/" + ch.Name, dev: format.Device{Driver: driver}}
			if dir == "/machine/peripheral" {
				d.id = ch.Name
			}
			if _, ok := format.Driver(driver); !ok {
				if dir == "/machine/unattached" {
					continue // the board's own, or caught below as an unknown PCI function
				}
				return nil, refuse(d.name(), driver, "vm-resume recreates only "+supported(), fixRemove)
			}
			if err := d.read(ctx, c); err != nil {
				return nil, err
			}
			found = append(found, d)
		}
	}
	if err := checkPCI(ctx, c, found); err != nil {
		return nil, err
	}
	if err := checkDisks(ctx, c, found, disk); err != nil {
		return nil, err
	}
	devs := make([]format.Device, len(found))
	for i, d := range found {
		devs[i] = d.dev
	}
	// PCI devices by address, then the others.
	sort.SliceStable(devs, func(i, j int) bool {
		a, b := devs[i], devs[j]
		if (a.Addr == "") != (b.Addr == "") {
			return a.Addr != ""
		}
		if a.Addr != b.Addr {
			return a.Addr < b.Addr
		}
		if a.Driver != b.Driver {
			return a.Driver < b.Driver
		}
		return a.Index < b.Index
	})
	if err := format.ValidateDevices(devs); err != nil {
		return nil, fmt.Errorf("the VM's devices cannot be recreated by vm-resume: %v", err)
	}
	return devs, nil
}

// qomGet reads one property of a QOM object.
func qomGet(ctx context.Context, c *qmpctl.Client, path, prop string, v any) error {
	if err := c.Execute(ctx, "qom-get", map[string]string{"path": path, "property": prop}, v); err != nil {
		return fmt.Errorf("reading %s of %s: %w", prop, path, err)
	}
	return nil
}

// read fills in the device's place and options from QEMU, refusing the
// settings vm-resume does not recreate.
func (d *qdev) read(ctx context.Context, c *qmpctl.Client) error {
	info, _ := format.Driver(d.dev.Driver)
	if !info.PCI {
		if info.MaxIndex > 0 {
			return qomGet(ctx, c, d.path, "index", &d.dev.Index)
		}
		return nil
	}
	var devfn int
	var rom *string
	if err := qomGet(ctx, c, d.path, "addr", &devfn); err != nil {
		return err
	}
	if devfn < 0 || devfn > 0xff {
		return fmt.Errorf("device %s (%s): PCI address %d out of range", d.name(), d.dev.Driver, devfn)
	}
	d.dev.Addr = format.PCIAddr(devfn>>3, devfn&7)
	if err := qomGet(ctx, c, d.path, "multifunction", &d.dev.Multifunction); err != nil {
		return err
	}
	if err := qomGet(ctx, c, d.path, "romfile", &rom); err != nil {
		return err
	}
	if rom != nil {
		d.dev.ROMFile = *rom
	}
	if d.dev.ROMFile != "" && filepath.Base(d.dev.ROMFile) != d.dev.ROMFile {
		return refuse(d.name(), d.dev.Driver, fmt.Sprintf("its option ROM comes from %s, and vm-resume loads ROMs by name from QEMU's data folder", d.dev.ROMFile),
			"start it with the ROM QEMU installs (romfile="+filepath.Base(d.dev.ROMFile)+" if it is QEMU's) or with romfile= (none)")
	}
	if info.Display {
		if err := qomGet(ctx, c, d.path, "vgamem_mb", &d.dev.VGAMemMB); err != nil {
			return err
		}
	}
	if d.dev.Driver == format.DriverVirtioBalloon {
		var fpr bool
		if err := qomGet(ctx, c, d.path, "free-page-reporting", &fpr); err != nil {
			return err
		}
		if fpr {
			return refuse(d.name(), d.dev.Driver, "it has free-page-reporting on, and vm-resume recreates the balloon with it off", "start the VM with free-page-reporting=off")
		}
	}
	return nil
}

// checkPCI makes sure every function on QEMU's PCI buses is one of the
// machine's own or a recorded device: a device QEMU's defaults made that
// vm-resume does not know (the e1000 of "-net nic"), or anything behind a
// bridge, is refused.
func checkPCI(ctx context.Context, c *qmpctl.Client, found []qdev) error {
	var buses []struct {
		Bus     int
		Devices []struct {
			Bus, Slot, Function int
			QdevID              string `json:"qdev_id"`
			ClassInfo           struct {
				Desc string
			} `json:"class_info"`
			ID struct{ Vendor, Device int }
		}
	}
	if err := c.Execute(ctx, "query-pci", nil, &buses); err != nil {
		return fmt.Errorf("listing the VM's PCI devices: %w", err)
	}
	at := map[string]qdev{}
	for _, d := range found {
		if d.dev.Addr != "" {
			at[d.dev.Addr] = d
		}
	}
	seen := map[string]bool{}
	for _, b := range buses {
		for _, f := range b.Devices {
			addr := format.PCIAddr(f.Slot, f.Function)
			if f.Bus == 0 && b.Bus == 0 {
				if _, ok := at[addr]; ok {
					seen[addr] = true
					continue
				}
				if boardPCI[[2]int{f.ID.Vendor, f.ID.Device}] {
					continue
				}
			}
			what := f.ClassInfo.Desc
			if what == "" {
				what = "PCI device"
			}
			name := fmt.Sprintf("%s %04x:%04x at %02x:%s", what, f.ID.Vendor, f.ID.Device, f.Bus, addr)
			if f.QdevID != "" {
				name = f.QdevID + ", " + name
			}
			return fmt.Errorf("the VM has a PCI device vm-resume cannot recreate (%s), made by QEMU's defaults, the machine or behind a bridge: vm-resume recreates only %s on the root bus; remove it from the VM's configuration (a NIC from -net nic or -nic: use -netdev with -device virtio-net-pci) and restart the VM before capturing",
				name, supported())
		}
	}
	for addr, d := range at {
		if !seen[addr] {
			return refuse(d.name(), d.dev.Driver, "it is not on the root PCI bus", fixRemove)
		}
	}
	return nil
}

// checkDisks makes sure the VM's one disk is the virtio-blk-pci on the
// --disk top layer: vm-resume recreates that disk alone.
func checkDisks(ctx context.Context, c *qmpctl.Client, found []qdev, disk string) error {
	var drives []struct {
		Device   string
		Qdev     string
		Inserted *struct{ File string }
	}
	if err := c.Execute(ctx, "query-block", nil, &drives); err != nil {
		return fmt.Errorf("listing the VM's drives: %w", err)
	}
	// The image of each virtio-blk-pci (by QOM path), and the drives no
	// such device has.
	var disks []qdev
	for _, d := range found {
		if d.dev.Driver == format.DriverVirtioBlk {
			disks = append(disks, d)
		}
	}
	image := map[string]string{}
	var others []int
drives:
	for i, dr := range drives {
		if dr.Inserted == nil {
			continue // an empty drive (QEMU's default CD-ROM and floppy): no data
		}
		for _, d := range disks {
			if dr.Qdev == d.path+"/virtio-backend" || dr.Qdev == d.path || (d.id != "" && dr.Qdev == d.id) {
				image[d.path] = dr.Inserted.File
				continue drives
			}
		}
		others = append(others, i)
	}
	var onDisk *qdev // the disk on --disk
	for i, d := range disks {
		if f, ok := image[d.path]; ok && disk != "" && sameFile(f, disk) {
			onDisk = &disks[i]
			break
		}
	}
	switch {
	case len(disks) == 0 && disk != "":
		return fmt.Errorf("--disk %s given, but the VM has no %s device: vm-resume recreates the disk only as %s", disk, format.DriverVirtioBlk, format.DriverVirtioBlk)
	case len(disks) > 0 && disk == "":
		return fmt.Errorf("device %s (%s) is the VM's disk: give its qcow2 top layer with --disk, so that vm-resume can recreate it", disks[0].name(), disks[0].dev.Driver)
	case len(disks) > 0 && onDisk == nil:
		f := image[disks[0].path]
		if f == "" {
			f = "no image"
		}
		return fmt.Errorf("device %s (%s) is on %s, not on --disk %s: give the VM's own qcow2 top layer with --disk", disks[0].name(), disks[0].dev.Driver, f, disk)
	}
	for _, d := range disks {
		if d.path != onDisk.path {
			return refuse(d.name(), d.dev.Driver, "it is a second disk, and vm-resume recreates one (the one given with --disk)", fixRemove)
		}
	}
	for _, i := range others {
		dr := drives[i]
		name := dr.Device
		if name == "" {
			name = dr.Qdev
		}
		if strings.HasPrefix(dr.Device, "pflash") || strings.Contains(dr.Qdev, "system.flash") {
			return fmt.Errorf("the VM runs firmware from pflash drive %s (%s): vm-capture --qmp does not record firmware; start the VM with vm-resume launch --firmware uefi to capture it", name, dr.Inserted.File)
		}
		return fmt.Errorf("drive %s (%s, on %s) is a second disk: vm-resume recreates one disk, the %s given with --disk; remove the drive from the VM's configuration, or eject it (QMP eject) before capturing", name, dr.Inserted.File, dr.Qdev, format.DriverVirtioBlk)
	}
	return nil
}

// sameFile reports whether QEMU's image path names the file path does.
// QEMU's may be relative to its own working folder: then the base names
// must match.
func sameFile(qemuPath, path string) bool {
	a, err1 := os.Stat(qemuPath)
	b, err2 := os.Stat(path)
	if err1 == nil && err2 == nil && os.SameFile(a, b) {
		return true
	}
	return !filepath.IsAbs(qemuPath) && filepath.Base(qemuPath) == filepath.Base(path)
}
