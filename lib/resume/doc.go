// Package resume brings VMs up: Launch boots a fresh VM from a disk image in
// the capturable layout, and FromStream recreates a VM from a cloudlet
// stream (a full stream, or a stream relative to a base). It is the engine
// of vm-resume.
//
// A stream relative to a base costs in proportion to what changed, not to
// the RAM size: QEMU maps the base memory file privately (share=off, so the
// base is never written) and the changed pages are injected into the RAM
// section of the incoming migration stream. The disk is a new qcow2 top
// layer over the base disk; the changed extents are written into it through
// qemu-nbd before QEMU opens it.
//
// Nothing runs before the whole stream is verified: records are spooled into
// the run folder while the stream is read, and QEMU is started only after
// the END record checked out. On any failure QEMU is killed and the run
// folder removed.
package resume
