// Package capture stops a running QEMU VM and writes its whole state as a
// full cloudlet stream: header with the VM description, device state,
// memory and the disk's changed extents. It is the engine of vm-capture.
//
// Memory comes one of two ways. For a VM in the capturable layout (RAM in a
// memory-backend-file with share=on, as vm-resume launches it), QEMU
// migrates only device state (x-ignore-shared) and the RAM is read from the
// file, skipping holes and zero pages. For any other VM, QEMU migrates
// everything and lib/migstream splits the RAM section: pages of the main
// RAM block become MEM records, pages of small blocks (ROMs, ACPI tables)
// stay inside the device state.
package capture
