package virt

import (
	"encoding/xml"
	"fmt"
	"os/exec"
	"strconv"

	"cloudlet/format"
	"cloudlet/lib/vm"

	"libvirt.org/go/libvirtxml"
)

// MetadataNS is the XML namespace of the <metadata> element that marks a
// domain as a cloudlet instance and names its run folder.
const MetadataNS = "https://github.com/cloudlet/vm-synthesis/instance/1"

// Metadata is what a cloudlet domain carries in its <metadata>.
type Metadata struct {
	XMLName xml.Name `xml:"https://github.com/cloudlet/vm-synthesis/instance/1 instance"`
	RunDir  string   `xml:"run_dir,attr"`
}

// DomainOptions are what the domain needs beyond the VM's config.
type DomainOptions struct {
	Name  string // domain name
	Accel string // "tcg" or "kvm" (resolved)
	// SecModels are the host's security drivers (from the capabilities):
	// each gets a label that keeps libvirt from relabelling the base
	// files (they are shared, read-only to every VM) and lets QEMU reach
	// the run folder.
	SecModels []string
}

// DomainXML returns the transient domain that runs cfg (normalized; see
// the package comment for what goes where).
func DomainXML(cfg vm.Config, opt DomainOptions) (string, error) {
	c, err := cfg.Normalize()
	if err != nil {
		return "", err
	}
	if c.Accel == "auto" {
		c.Accel = opt.Accel
	}
	if err := vm.CheckID("domain name", opt.Name); err != nil {
		return "", err
	}
	emulator, err := exec.LookPath(c.Binary)
	if err != nil {
		return "", fmt.Errorf("virt: QEMU binary: %w", err)
	}
	meta, err := xml.Marshal(Metadata{RunDir: c.RunDir})
	if err != nil {
		return "", err
	}
	d := &libvirtxml.Domain{
		Type:        "qemu",
		Name:        opt.Name,
		Description: "cloudlet instance; run folder " + c.RunDir,
		Metadata:    &libvirtxml.DomainMetadata{XML: string(meta)},
		Memory:      &libvirtxml.DomainMemory{Value: uint(c.MemMiB), Unit: "MiB"},
		VCPU:        &libvirtxml.DomainVCPU{Value: uint(c.SMP)},
		OS: &libvirtxml.DomainOS{
			Type:    &libvirtxml.DomainOSType{Arch: "x86_64", Machine: c.Machine, Type: "hvm"},
			Kernel:  c.Kernel,
			Initrd:  c.Initrd,
			Cmdline: c.Append,
		},
		// QEMU enables ACPI unless told not to; libvirt passes -no-acpi
		// unless the domain asks for it.
		Features:   &libvirtxml.DomainFeatureList{ACPI: &libvirtxml.DomainFeature{}},
		CPU:        &libvirtxml.DomainCPU{Mode: "custom", Match: "exact", Model: &libvirtxml.DomainCPUModel{Fallback: "forbid", Value: c.CPU}},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Devices:    &libvirtxml.DomainDeviceList{Emulator: emulator},
	}
	if c.Accel == "kvm" {
		d.Type = "kvm"
	}
	if c.Firmware == vm.FirmwareUEFI {
		d.OS.Loader = &libvirtxml.DomainLoader{Path: c.FirmwareCode, Readonly: "yes", Type: "pflash"}
		d.OS.NVRam = &libvirtxml.DomainNVRam{NVRam: c.FirmwareVars}
	}
	dev := d.Devices
	port0 := uint(0)
	// The console is a pseudo-terminal: virsh console takes nothing else.
	// Its log is the run folder's serial log, as for any instance.
	dev.Serials = []libvirtxml.DomainSerial{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Port: &port0},
		Log:    &libvirtxml.DomainChardevLog{File: c.SerialLog(), Append: "on"},
	}}
	dev.Consoles = []libvirtxml.DomainConsole{{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port0},
	}}
	// libvirt adds a USB controller, a balloon and a display unless told
	// not to; a device QEMU was not captured with would not take the
	// device state. Every device is at its recorded PCI address.
	dev.Controllers = []libvirtxml.DomainController{{Type: "usb", Model: "none"}}
	dev.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "none"}
	dev.Videos = []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: "none"}}}
	if c.VNC {
		dev.Graphics = []libvirtxml.DomainGraphic{{VNC: &libvirtxml.DomainGraphicVNC{Socket: c.VNCPath()}}}
	}
	var args []string
	for _, vd := range c.Devices {
		if vd.Driver == format.DriverVirtioNet && c.NetRestrict {
			// libvirt's user-mode <interface> cannot be restricted: the
			// network and NIC are QEMU's own options (forwards are
			// added at run time, as for libvirt's).
			nc := c
			nc.Forwards, nc.Net = nil, true
			args = append(args, nc.NICArgs(vd)...)
			continue
		}
		if err := addDevice(d, c, vd); err != nil {
			return "", err
		}
	}
	for _, m := range opt.SecModels {
		switch m {
		case "dac":
			// QEMU as root, as the one vm-resume starts: it reads the
			// base files and the run folder (0700) as they are.
			d.SecLabel = append(d.SecLabel, libvirtxml.DomainSecLabel{Type: "static", Model: "dac", Relabel: "no", Label: "+0:+0"})
		case "none":
		default:
			d.SecLabel = append(d.SecLabel, libvirtxml.DomainSecLabel{Type: "none", Model: m})
		}
	}
	if !c.MemPlain {
		share := "off"
		if c.MemShare {
			share = "on"
		}
		args = append(args,
			"-object", "memory-backend-file,id="+vm.MemBackendID+",size="+strconv.Itoa(c.MemMiB)+"M,mem-path="+c.MemPath+",share="+share,
			"-machine", "memory-backend="+vm.MemBackendID)
	}
	args = append(args,
		"-chardev", "socket,id=cloudlet-qmp,path="+c.QMPPath()+",server=on,wait=off",
		"-mon", "chardev=cloudlet-qmp,mode=control")
	if c.Incoming {
		args = append(args, "-incoming", "defer")
	}
	args = append(args, c.ExtraArgs...)
	d.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{}
	for _, a := range args {
		d.QEMUCommandline.Args = append(d.QEMUCommandline.Args, libvirtxml.DomainQEMUCommandlineArg{Value: a})
	}
	return d.Marshal()
}

// addDevice adds the libvirt element of one recorded device.
func addDevice(d *libvirtxml.Domain, c vm.Config, vd vm.Device) error {
	dev := d.Devices
	addr, err := pciAddress(vd)
	if err != nil {
		return err
	}
	switch vd.Driver {
	case format.DriverVirtioBlk:
		dev.Disks = append(dev.Disks, libvirtxml.DomainDisk{
			Device:  "disk",
			Driver:  &libvirtxml.DomainDiskDriver{Name: "qemu", Type: "qcow2", Discard: "unmap"},
			Source:  &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: c.Disk}},
			Target:  &libvirtxml.DomainDiskTarget{Dev: "vda", Bus: "virtio"},
			Address: addr,
		})
	case format.DriverVirtioNet:
		rom := &libvirtxml.DomainROM{Enabled: "no"}
		if vd.ROMFile != "" {
			rom = &libvirtxml.DomainROM{File: &vd.ROMFile}
		}
		dev.Interfaces = append(dev.Interfaces, libvirtxml.DomainInterface{
			Source:  &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}},
			MAC:     &libvirtxml.DomainInterfaceMAC{Address: c.MAC},
			Model:   &libvirtxml.DomainInterfaceModel{Type: "virtio"},
			ROM:     rom,
			Address: addr,
		})
	case format.DriverVirtioBalloon:
		fpr := "off"
		if c.FreePageReporting {
			fpr = "on"
		}
		dev.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio", FreePageReporting: fpr, Address: addr}
	case format.DriverVMGenID:
		d.GenID = &libvirtxml.DomainGenID{} // a new ID at every start, as guid=auto
	case format.DriverUHCI:
		zero := uint(0)
		dev.Controllers = []libvirtxml.DomainController{{Type: "usb", Index: &zero, Model: "piix3-uhci", Address: addr}}
	case format.DriverVGA, format.DriverCirrus:
		// libvirt gives QEMU vgamem_mb from vram (KiB), its own default
		// when unset: always set it to what QEMU had.
		model, mib := "vga", 16
		if vd.Driver == format.DriverCirrus {
			model, mib = "cirrus", 4
		}
		if vd.VGAMemMB != 0 {
			mib = vd.VGAMemMB
		}
		dev.Videos = []libvirtxml.DomainVideo{{Model: libvirtxml.DomainVideoModel{Type: model, VRam: uint(mib) << 10, Primary: "yes"}, Address: addr}}
	case format.DriverSerial:
		if vd.Index == 0 {
			return nil // the console
		}
		port := uint(vd.Index)
		dev.Serials = append(dev.Serials, libvirtxml.DomainSerial{
			Source: &libvirtxml.DomainChardevSource{Null: &libvirtxml.DomainChardevSourceNull{}},
			Target: &libvirtxml.DomainSerialTarget{Port: &port},
		})
	case format.DriverParallel:
		port := uint(vd.Index)
		dev.Parallels = append(dev.Parallels, libvirtxml.DomainParallel{
			Source: &libvirtxml.DomainChardevSource{Null: &libvirtxml.DomainChardevSourceNull{}},
			Target: &libvirtxml.DomainParallelTarget{Port: &port},
		})
	default:
		return fmt.Errorf("virt: device %s has no libvirt element here", vd.Driver)
	}
	return nil
}

// pciAddress is the libvirt address of a device's recorded PCI address
// (nil for a device that has none).
func pciAddress(vd vm.Device) (*libvirtxml.DomainAddress, error) {
	if vd.Addr == "" {
		return nil, nil
	}
	slot, fn, err := format.ParsePCIAddr(vd.Addr)
	if err != nil {
		return nil, err
	}
	zero, s, f := uint(0), uint(slot), uint(fn)
	a := &libvirtxml.DomainAddressPCI{Domain: &zero, Bus: &zero, Slot: &s, Function: &f}
	if vd.Multifunction {
		a.MultiFunction = "on"
	}
	return &libvirtxml.DomainAddress{PCI: a}, nil
}
