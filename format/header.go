package format

import (
	"bytes"
	"fmt"
	"regexp"
	"sort"

	"github.com/vmihailenco/msgpack/v5"
)

// Header is the HEADER record (SPEC.md section 2.1).
type Header struct {
	Kind     string   `msgpack:"kind" json:"kind"`
	VM       VMDesc   `msgpack:"vm" json:"vm"`
	BaseID   string   `msgpack:"base_id,omitempty" json:"base_id,omitempty"`
	Producer []string `msgpack:"producer" json:"producer"`
	// MemRelative says absent memory pages equal the base's (set by
	// mem-diff); otherwise they are zero. Only diff streams may set it.
	MemRelative bool `msgpack:"mem_relative" json:"mem_relative"`
	// Live marks a handoff stream (vm-handoff): it is sent while the VM
	// still runs, in passes, so a later record may write a range an
	// earlier one wrote, and the latest wins (SPEC.md section 5, item 3);
	// a COPY from this stream reads what the records before it left
	// there. Only diff and overlay streams with mem_relative; no MANIFEST.
	Live bool `msgpack:"live,omitempty" json:"live,omitempty"`
}

// VMDesc describes the VM exactly enough to recreate it. It is typed data:
// consumers map each field to QEMU options and Validate rejects values
// outside fixed ranges and character sets, so no stream can inject options.
type VMDesc struct {
	Machine      string     `msgpack:"machine" json:"machine"`
	CPU          string     `msgpack:"cpu" json:"cpu"`
	MemSize      uint64     `msgpack:"mem_size" json:"mem_size"`
	RAMBlocks    []RAMBlock `msgpack:"ram_blocks" json:"ram_blocks"`
	DiskSize     uint64     `msgpack:"disk_size" json:"disk_size"`
	DiskFormat   string     `msgpack:"disk_format" json:"disk_format"`
	DiskBase     string     `msgpack:"disk_base" json:"disk_base"`
	QEMUVersion  string     `msgpack:"qemu_version" json:"qemu_version"`
	Kernel       string     `msgpack:"kernel" json:"kernel"`
	Initrd       string     `msgpack:"initrd" json:"initrd"`
	Append       string     `msgpack:"append" json:"append"`
	Forwards     []Forward  `msgpack:"forwards" json:"forwards"`
	IgnoreShared bool       `msgpack:"ignore_shared" json:"ignore_shared"`
	// Firmware is "" (QEMU's default BIOS, SeaBIOS) or "uefi": OVMF's code
	// and variable store as pflash, named by sha256 like the kernel.
	Firmware     string `msgpack:"firmware,omitempty" json:"firmware,omitempty"`
	FirmwareCode string `msgpack:"firmware_code,omitempty" json:"firmware_code,omitempty"`
	FirmwareVars string `msgpack:"firmware_vars,omitempty" json:"firmware_vars,omitempty"`
	// VMGenID says the VM has a VM generation ID device (each resume gives
	// it a new ID, so a guest with the driver reseeds its RNG).
	VMGenID bool `msgpack:"vmgenid,omitempty" json:"vmgenid,omitempty"`
	// Devices is the VM's device layout, each device at its PCI address
	// (device.go). Absent in streams from before it was recorded: a
	// consumer then uses its own fixed layout.
	Devices []Device `msgpack:"devices,omitempty" json:"devices,omitempty"`
}

// FirmwareUEFI is VMDesc.Firmware for a VM started with UEFI (OVMF).
const FirmwareUEFI = "uefi"

// RAMBlock is one of QEMU's RAM blocks as the migration stream names it.
type RAMBlock struct {
	ID   string `msgpack:"id" json:"id"`
	Size uint64 `msgpack:"size" json:"size"`
	Addr uint64 `msgpack:"addr" json:"addr"`
}

// Forward is a host-to-guest port forward of user-mode networking.
type Forward struct {
	Proto     string `msgpack:"proto" json:"proto"`
	HostPort  uint16 `msgpack:"host_port" json:"host_port"`
	GuestPort uint16 `msgpack:"guest_port" json:"guest_port"`
}

// Limits for VMDesc.Validate.
const (
	MaxMemSize  = 1 << 40 // 1 TiB
	MaxDiskSize = 1 << 44 // 16 TiB
	MaxBlocks   = 256
	MaxForwards = 64
)

var (
	reToken  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	reBlock  = regexp.MustCompile(`^[A-Za-z0-9/@._:-]{1,255}$`)
	reSHA    = regexp.MustCompile(`^([0-9a-f]{64})?$`)
	reAppend = regexp.MustCompile(`^[A-Za-z0-9 =._:/,-]*$`)
)

// Validate checks every field against the ranges and character sets that
// consumers rely on when they turn the description into QEMU options.
func (d *VMDesc) Validate() error {
	bad := func(field string, v any) error {
		return fmt.Errorf("%w: vm.%s %q is not allowed", ErrMalformed, field, fmt.Sprint(v))
	}
	if !reToken.MatchString(d.Machine) {
		return bad("machine", d.Machine)
	}
	if !reToken.MatchString(d.CPU) {
		return bad("cpu", d.CPU)
	}
	if d.MemSize == 0 || d.MemSize%PageSize != 0 || d.MemSize > MaxMemSize {
		return bad("mem_size", d.MemSize)
	}
	if len(d.RAMBlocks) > MaxBlocks {
		return bad("ram_blocks", len(d.RAMBlocks))
	}
	for _, b := range d.RAMBlocks {
		if !reBlock.MatchString(b.ID) || b.Size > MaxMemSize {
			return bad("ram_blocks", b.ID)
		}
	}
	if d.DiskSize%SectorSize != 0 || d.DiskSize > MaxDiskSize {
		return bad("disk_size", d.DiskSize)
	}
	if d.DiskFormat != "" && d.DiskFormat != "raw" && d.DiskFormat != "qcow2" {
		return bad("disk_format", d.DiskFormat)
	}
	switch {
	case d.Firmware == "" && (d.FirmwareCode != "" || d.FirmwareVars != ""):
		return bad("firmware_code", d.FirmwareCode+d.FirmwareVars)
	case d.Firmware == FirmwareUEFI && (d.FirmwareCode == "" || d.FirmwareVars == ""):
		return bad("firmware", "uefi without firmware_code and firmware_vars")
	case d.Firmware != "" && d.Firmware != FirmwareUEFI:
		return bad("firmware", d.Firmware)
	}
	for f, v := range map[string]string{"disk_base": d.DiskBase, "kernel": d.Kernel, "initrd": d.Initrd,
		"firmware_code": d.FirmwareCode, "firmware_vars": d.FirmwareVars} {
		if !reSHA.MatchString(v) {
			return bad(f, v)
		}
	}
	if d.QEMUVersion != "" && !reToken.MatchString(d.QEMUVersion) {
		return bad("qemu_version", d.QEMUVersion)
	}
	if len(d.Append) > 1024 || !reAppend.MatchString(d.Append) {
		return bad("append", d.Append)
	}
	if len(d.Forwards) > MaxForwards {
		return bad("forwards", len(d.Forwards))
	}
	for _, f := range d.Forwards {
		if (f.Proto != "tcp" && f.Proto != "udp") || f.GuestPort == 0 {
			return bad("forwards", f)
		}
	}
	if err := ValidateDevices(d.Devices); err != nil {
		return fmt.Errorf("%w: vm.devices: %v", ErrMalformed, err)
	}
	if len(d.Devices) > 0 {
		if HasDriver(d.Devices, DriverVMGenID) != d.VMGenID {
			return fmt.Errorf("%w: vm.vmgenid %v disagrees with vm.devices", ErrMalformed, d.VMGenID)
		}
		if HasDriver(d.Devices, DriverVirtioBlk) != (d.DiskSize > 0) {
			return fmt.Errorf("%w: vm.devices: a %s device goes with a disk (disk_size %d)", ErrMalformed, DriverVirtioBlk, d.DiskSize)
		}
	}
	return nil
}

// Validate checks the header's kind, base ID and VM description.
func (h *Header) Validate() error {
	switch h.Kind {
	case KindFull:
	case KindDiff, KindOverlay, KindBase:
		if h.BaseID == "" {
			return fmt.Errorf("%w: %s stream without base_id", ErrMalformed, h.Kind)
		}
	default:
		return fmt.Errorf("%w: kind %q (want full, diff, overlay or base)", ErrMalformed, h.Kind)
	}
	if h.MemRelative && (h.Kind == KindFull || h.Kind == KindBase) {
		return fmt.Errorf("%w: mem_relative in a %s stream", ErrMalformed, h.Kind)
	}
	if h.Live && (!h.MemRelative || (h.Kind != KindDiff && h.Kind != KindOverlay)) {
		return fmt.Errorf("%w: live in a %s stream (only diff and overlay streams relative to the base are live)", ErrMalformed, h.Kind)
	}
	if h.Kind == KindBase && h.VM.DiskBase != "" {
		return fmt.Errorf("%w: a base export's disk is whole (disk_base must be empty)", ErrMalformed)
	}
	if !reSHA.MatchString(h.BaseID) {
		return fmt.Errorf("%w: base_id %q is not a hex sha256", ErrMalformed, h.BaseID)
	}
	return h.VM.Validate()
}

// End is the END record (SPEC.md section 2.7).
type End struct {
	Frames uint64 `msgpack:"frames" json:"frames"`
	Bytes  uint64 `msgpack:"bytes" json:"bytes"`
	Digest uint64 `msgpack:"digest" json:"digest"`
	Counts Counts `msgpack:"counts" json:"counts"`
	SHA256 string `msgpack:"sha256,omitempty" json:"sha256,omitempty"`
}

// Index is the INDEX record of an overlay (SPEC.md section 2.6).
type Index struct {
	Segments []SegmentInfo `msgpack:"segments" json:"segments"`
	// Order is how overlay-pack ordered the records: OrderOffset or
	// OrderAccess (empty in overlays from before it said).
	Order string `msgpack:"order,omitempty" json:"order,omitempty"`
}

// SegmentInfo describes one SEGMENT of an overlay.
type SegmentInfo struct {
	Offset uint64      `msgpack:"offset" json:"offset"`
	Size   uint64      `msgpack:"size" json:"size"`
	Raw    uint64      `msgpack:"raw" json:"raw"`
	Check  uint64      `msgpack:"check" json:"check"`
	Mem    [][2]uint64 `msgpack:"mem" json:"mem"`
	Disk   [][2]uint64 `msgpack:"disk" json:"disk"`
}

// Marshal encodes v as a deterministic msgpack map (sorted keys).
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := msgpack.NewEncoder(&buf)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes a msgpack payload, ignoring unknown keys. The caller has
// already bounded and checksum-verified b.
func Unmarshal(b []byte, v any) error {
	if err := msgpack.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

// Counts maps record type names to counts. It encodes with sorted keys
// (msgpack's SetSortMapKeys does not reach maps inside structs).
type Counts map[string]uint64

// EncodeMsgpack implements msgpack.CustomEncoder.
func (c Counts) EncodeMsgpack(enc *msgpack.Encoder) error {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if err := enc.EncodeMapLen(len(keys)); err != nil {
		return err
	}
	for _, k := range keys {
		if err := enc.EncodeString(k); err != nil {
			return err
		}
		if err := enc.EncodeUint(c[k]); err != nil {
			return err
		}
	}
	return nil
}

// DecodeMsgpack implements msgpack.CustomDecoder.
func (c *Counts) DecodeMsgpack(dec *msgpack.Decoder) error {
	var m map[string]uint64
	if err := dec.Decode(&m); err != nil {
		return err
	}
	*c = m
	return nil
}
