package format

import (
	"fmt"
	"strconv"
)

// Drivers a VM description may name in its device list (VMDesc.Devices):
// the QEMU device types a consumer knows how to recreate.
const (
	DriverVirtioBlk     = "virtio-blk-pci"     // the VM's one disk
	DriverVirtioNet     = "virtio-net-pci"     // the VM's one NIC (user-mode networking)
	DriverVirtioBalloon = "virtio-balloon-pci" // free page reporting off
	DriverVMGenID       = "vmgenid"            // a new ID at every resume
	DriverUHCI          = "piix3-usb-uhci"     // USB controller, no USB devices
	DriverVGA           = "VGA"                // standard VGA
	DriverCirrus        = "cirrus-vga"
	DriverSerial        = "isa-serial"   // index 0 is the serial console
	DriverParallel      = "isa-parallel" // not connected
)

// DriverInfo says how a known driver is placed.
type DriverInfo struct {
	PCI      bool // on the root PCI bus at Device.Addr
	Display  bool // a display device (at most one per VM)
	Max      int  // devices of this driver per VM
	MaxIndex int  // ISA ports: Device.Index in [0, MaxIndex]
}

var drivers = map[string]DriverInfo{
	DriverVirtioBlk:     {PCI: true, Max: 1},
	DriverVirtioNet:     {PCI: true, Max: 1},
	DriverVirtioBalloon: {PCI: true, Max: 1},
	DriverVMGenID:       {Max: 1},
	DriverUHCI:          {PCI: true, Max: 1},
	DriverVGA:           {PCI: true, Display: true, Max: 1},
	DriverCirrus:        {PCI: true, Display: true, Max: 1},
	DriverSerial:        {Max: 4, MaxIndex: 3},
	DriverParallel:      {Max: 3, MaxIndex: 2},
}

// Driver returns what is known about a device driver; ok is false for a
// driver no consumer recreates.
func Driver(name string) (info DriverInfo, ok bool) {
	info, ok = drivers[name]
	return info, ok
}

// Device is one device of the VM (SPEC.md section 2.1, `devices`). A
// consumer recreates it with the same driver at the same place: QEMU's
// migration sections and RAM blocks are named after the PCI address
// ("0000:00:03.0/virtio-net-pci.rom"), and a RAM block the resuming QEMU
// lacks (an option ROM, video memory) fails the migration.
type Device struct {
	Driver string `msgpack:"driver" json:"driver"`
	// Addr is the PCI slot and function on the root bus, "SS.F" in hex as
	// QEMU's addr= takes it ("03.0", "01.2"); "" for a non-PCI device.
	Addr string `msgpack:"addr,omitempty" json:"addr,omitempty"`
	// Multifunction sets the device's multifunction bit (PCI only).
	Multifunction bool `msgpack:"multifunction,omitempty" json:"multifunction,omitempty"`
	// ROMFile is the option ROM QEMU loaded for a PCI device, a file name
	// in QEMU's data folder ("efi-virtio.rom"); "" means no ROM.
	ROMFile string `msgpack:"romfile,omitempty" json:"romfile,omitempty"`
	// Index is an ISA serial or parallel port's number (0 is COM1/LPT1).
	Index int `msgpack:"index,omitempty" json:"index,omitempty"`
	// VGAMemMB is a display device's video memory in MiB (0: QEMU's
	// default, 16 for VGA and 4 for cirrus-vga).
	VGAMemMB int `msgpack:"vgamem_mb,omitempty" json:"vgamem_mb,omitempty"`
}

// MaxDevices caps VMDesc.Devices.
const MaxDevices = 32

// PCIAddr formats a PCI slot and function as Device.Addr.
func PCIAddr(slot, function int) string {
	return fmt.Sprintf("%02x.%x", slot, function)
}

// ParsePCIAddr splits a Device.Addr into slot (0-31) and function (0-7).
func ParsePCIAddr(addr string) (slot, function int, err error) {
	if len(addr) != 4 || addr[2] != '.' {
		return 0, 0, fmt.Errorf("PCI address %q: want SS.F", addr)
	}
	s, err1 := strconv.ParseUint(addr[:2], 16, 8)
	f, err2 := strconv.ParseUint(addr[3:], 16, 8)
	if err1 != nil || err2 != nil || s > 31 || f > 7 || addr != PCIAddr(int(s), int(f)) {
		return 0, 0, fmt.Errorf("PCI address %q: want SS.F in lower-case hex, slot 00-1f, function 0-7", addr)
	}
	return int(s), int(f), nil
}

// PCISlot returns the slot and function of a PCI device (ok false for a
// device without an address).
func (d Device) PCISlot() (slot, function int, ok bool) {
	s, f, err := ParsePCIAddr(d.Addr)
	return s, f, err == nil
}

// String names the device in messages: "virtio-net-pci at 03.0".
func (d Device) String() string {
	switch {
	case d.Addr != "":
		return d.Driver + " at " + d.Addr
	case d.Driver == DriverSerial || d.Driver == DriverParallel:
		return d.Driver + " " + strconv.Itoa(d.Index)
	}
	return d.Driver
}

// ValidateDevices checks a device list: known drivers only, each in its
// place (PCI addresses unique, ISA port numbers in range and unique),
// options only where they apply, at most Max of a driver and one display.
func ValidateDevices(devs []Device) error {
	if len(devs) > MaxDevices {
		return fmt.Errorf("%d devices (at most %d)", len(devs), MaxDevices)
	}
	count := map[string]int{}
	places := map[string]bool{}
	displays := 0
	for _, d := range devs {
		info, ok := drivers[d.Driver]
		if !ok {
			return fmt.Errorf("device driver %q is not one a consumer recreates", d.Driver)
		}
		if count[d.Driver]++; count[d.Driver] > info.Max {
			return fmt.Errorf("more than %d %s", info.Max, d.Driver)
		}
		if info.Display {
			if displays++; displays > 1 {
				return fmt.Errorf("more than one display device")
			}
		}
		place := d.Driver + "/" + strconv.Itoa(d.Index)
		if info.PCI {
			if _, _, err := ParsePCIAddr(d.Addr); err != nil {
				return fmt.Errorf("%s: %v", d.Driver, err)
			}
			if d.Index != 0 {
				return fmt.Errorf("%s: index is for ISA ports", d)
			}
			if d.ROMFile != "" && !reToken.MatchString(d.ROMFile) {
				return fmt.Errorf("%s: romfile %q is not a plain file name", d, d.ROMFile)
			}
			place = "pci/" + d.Addr
		} else if d.Addr != "" || d.Multifunction || d.ROMFile != "" {
			return fmt.Errorf("%s is not a PCI device: no addr, multifunction or romfile", d.Driver)
		}
		if d.Index < 0 || d.Index > info.MaxIndex {
			return fmt.Errorf("%s: index %d out of range [0, %d]", d.Driver, d.Index, info.MaxIndex)
		}
		if info.Display {
			if d.VGAMemMB < 0 || d.VGAMemMB > 512 {
				return fmt.Errorf("%s: vgamem_mb %d out of range [0, 512]", d, d.VGAMemMB)
			}
		} else if d.VGAMemMB != 0 {
			return fmt.Errorf("%s: vgamem_mb is for display devices", d)
		}
		if places[place] {
			return fmt.Errorf("two devices at the place of %s", d)
		}
		places[place] = true
	}
	return nil
}

// HasDriver reports whether devs holds a device of the driver.
func HasDriver(devs []Device, driver string) bool {
	for _, d := range devs {
		if d.Driver == driver {
			return true
		}
	}
	return false
}
