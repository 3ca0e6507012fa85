// Package migstream parses and rewrites QEMU 7.2 precopy migration streams
// (the byte stream QEMU writes for `migrate` to a file, pipe or socket),
// limited to what cloudlet needs: the RAM section.
//
// Split reads a full stream and separates it into the guest pages (handed
// to a PageSink one at a time) and the "device state": the same stream
// with every RAM page record removed, everything else kept byte for byte.
// Inject does the reverse: it copies a device-state stream (from Split, or
// a stream QEMU wrote with the x-ignore-shared capability) and inserts page
// records right after the RAM section's block list, where QEMU's loader
// accepts them.
//
// # Stream layout (QEMU 7.2, x86 target pages of 4096 bytes)
//
//	"QEVM" be32(3)
//	0x07 be32(len) machine-name              configuration section
//	  { 0x05 u8(len) name be32(version) fields }   its subsections
//	0x01 be32(sid) u8(3) "ram" be32(0) be32(4) RAM section start
//	  be64(total | 0x04)                      MEM_SIZE
//	  { u8(len) block-id be64(used-length) [be64(guest-address)] }
//	  be64(0x10)                              EOS
//	0x7e be32(sid)                            section footer
//	0x02 be32(sid) records... be64(0x10) 0x7e be32(sid)   RAM parts
//	0x03 be32(sid) records... be64(0x10) 0x7e be32(sid)   RAM end
//	0x04 ... device sections (no length framing) ...
//	0x00                                      QEMU_VM_EOF
//	0x06 be32(len) JSON                       VM description
//
// A RAM record is be64(offset | flags). PAGE (0x08) is followed by the
// block id (u8 length + id) unless CONTINUE (0x20) says "same block as
// the previous record", then 4096 bytes; ZERO (0x02) likewise, then one fill
// byte. The guest address after each used length is present exactly when
// the x-ignore-shared capability is on, which the source announces in the
// "configuration/capabilities" subsection; QEMU 7.2 also writes a be64 page
// size for blocks with huge pages when postcopy-ram is on, so postcopy
// streams (announced by a POSTCOPY_ADVISE command) are rejected. XBZRLE
// (0x40), compressed pages (0x100) and RDMA hooks (0x80) are rejected too:
// those capabilities are off by default. QEMU 7.2 has no MULTIFD_FLUSH flag
// (it came in 8.0).
//
// Device sections have no length framing, so nothing after the end of
// the RAM section is parsed; it is copied verbatim. To still detect a
// truncated stream, Split and Inject check that the stream ends with
// QEMU_VM_EOF followed by a QEMU_VM_VMDESCRIPTION whose length matches the
// rest of the stream (QEMU 7.2 always writes it unless the machine sets
// suppress-vmdesc, which cloudlet never does).
//
// Memory use is bounded: pages are handed over one at a time, and every
// length read from the stream is checked against a cap before anything is
// allocated. Errors name the byte offset where the problem was found:
//
//	migstream: offset 1234: unknown RAM flags 0x80 in block "pc.ram"
//
// A stream cut short yields an error wrapping io.ErrUnexpectedEOF.
package migstream
