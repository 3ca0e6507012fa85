package base

import (
	"os"

	"cloudlet/format"
	"cloudlet/lib/disk"
)

// WriteExport writes the whole base as a full stream that needs nothing
// else (format/SPEC.md section 3, kind base once packed): the VM
// description with base_id set and no disk_base, the device state, every
// non-zero memory page, every non-zero 4 KiB block of the disk (holes and
// zero blocks cost nothing), and the boot files (kernel, initrd, firmware)
// as FILE records. overlay.PackBase packs it into a base export; import
// rebuilds the folder from it and checks the ID.
func (b *Base) WriteExport(w *format.Writer) error {
	vm := b.Meta.VM
	vm.DiskBase = ""
	if err := w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vm, BaseID: b.ID(), Producer: []string{"cloudlet-base export"}}); err != nil {
		return err
	}
	dev, err := os.ReadFile(b.Path(DevStateFile))
	if err != nil {
		return err
	}
	if err := w.WriteDevState(dev); err != nil {
		return err
	}
	if err := writeNonZero(b.Mem, 0, w.WriteMem); err != nil {
		return err
	}
	if len(b.Disk) > 0 {
		exts, err := disk.RawDataExtents(b.Path(DiskFile))
		if err != nil {
			return err
		}
		for _, e := range exts {
			if err := writeNonZero(b.Disk[e.Offset:e.End()], uint64(e.Offset), w.WriteDisk); err != nil {
				return err
			}
		}
	}
	for name := range BootFiles(b.Meta.VM) {
		data, err := os.ReadFile(b.Path(name))
		if err != nil {
			return err
		}
		if err := w.WriteFile(name, 0, data); err != nil {
			return err
		}
	}
	return w.Close()
}

// writeNonZero writes the runs of non-zero 4 KiB blocks of p (which starts
// at offset base) with write; a short tail block counts as one block.
func writeNonZero(p []byte, base uint64, write func(off uint64, data []byte) error) error {
	const blk = format.PageSize
	start := -1
	for i := 0; i < len(p); i += blk {
		zero := IsZero(p[i:min(i+blk, len(p))])
		if !zero && start < 0 {
			start = i
		}
		if zero && start >= 0 {
			if err := write(base+uint64(start), p[start:i]); err != nil {
				return err
			}
			start = -1
		}
	}
	if start >= 0 {
		return write(base+uint64(start), p[start:])
	}
	return nil
}
