// Package disk handles the disk images of the VM pipeline with the real
// QEMU tools: a qcow2 copy-on-write top layer over a raw base (CreateTop),
// the extents written in that top layer (Extents, from `qemu-img map`), the
// data extents of a raw file (RawDataExtents, from SEEK_DATA/SEEK_HOLE), and
// serving an image over NBD with qemu-nbd so that it can be read or written
// with cloudlet/lib/nbd without QEMU itself opening it (Serve).
//
// Paths handed to the QEMU tools are made absolute first: a relative name
// containing a colon (such as "nbd:x" or "json:{...}") could otherwise be
// taken for a protocol prefix.
//
// Serve runs qemu-nbd in the foreground of a child process (never --fork)
// on a unix socket inside a private temporary folder, without --persistent,
// so qemu-nbd exits by itself when its one client disconnects. Server.Close
// disconnects, then waits, then sends SIGTERM, then SIGKILL; cancelling the
// context given to Serve stops qemu-nbd the same way; and the child gets
// SIGTERM if the calling thread dies (Pdeathsig). Read-only serving adds
// --read-only and the block layer's force-share=on (through --image-opts:
// qemu-nbd 7.2 has no --force-share/-U option), so it can read an image
// that a running or paused QEMU holds open. Writable serving uses --discard=unmap and
// --detect-zeroes=unmap, so zeroed ranges become qcow2 zero clusters
// instead of allocated data.
package disk
