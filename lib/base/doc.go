// Package base manages base VMs: read-only folders holding the base disk
// image, the base memory file, the base device state, the VM description,
// the base ID and a dedup index, plus the catalog that finds a base by ID.
//
// A base folder contains:
//
//	base.json     ID, name, VM description (format.VMDesc), file digests
//	disk.img      raw base disk image
//	mem.ram       raw guest RAM (the memory-backend-file content)
//	devstate.bin  QEMU migration stream taken with x-ignore-shared
//	vmlinuz, initrd.img  the guest kernel and initrd, if the VM used -kernel
//	index.bin     dedup index: xxhash64 of every non-zero 4 KiB page and block
//
// Every file is made read-only once the base is complete. Opening a base
// maps memory and disk read-only (PROT_READ), so no code path can modify it.
package base
