// Package resume brings VMs up: Launch boots a fresh VM from a disk image in
// the capturable layout, and FromStream recreates a VM from a cloudlet
// stream (a full stream, or a stream relative to a base). It is the engine
// of vm-resume.
//
// A stream relative to a base costs in proportion to what changed, not to
// the RAM size: QEMU maps the base memory file privately (share=off, so the
// base is never written) and the changed pages are written straight into
// that mapping (lib/guestmem: process_vm_writev while QEMU waits in its
// incoming migration; the pages go into the migration stream instead when
// this process may not, or with --mem-write migration). The disk is a new
// qcow2 top layer over the base disk, which vm-resume writes itself
// (lib/qcow2): QEMU opens it at start, inactive, and reads it again when
// the migration completes. COPY records (overlay-apply passes them on) are
// resolved here, from the base or from the memory and disk already written.
//
// Synthesis is pipelined: QEMU starts as soon as the header is read, and
// takes the incoming migration (device state; the pages are written
// meanwhile)
// while the rest of the stream still arrives, so the time after the last
// byte is short. Nothing runs before the whole stream is verified: the
// end of the device state (the part that completes the migration and lets
// QEMU activate the disk) reaches QEMU only after the END record checked
// out and the memory and disk are written, and `cont` comes after
// that. On any failure QEMU is killed and the run folder removed; the
// guest never ran.
//
// FromStreamEarly (early.go) is the other engine: the guest runs before
// the stream has arrived, its memory and disk served on demand through
// lib/lazyfs from the stream's MANIFEST.
package resume
