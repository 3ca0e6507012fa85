// Package overlay packs a diff stream into an overlay and applies an
// overlay against its base (format/SPEC.md section 3): the library behind
// overlay-pack and overlay-apply.
//
// Pack groups the records of a diff stream, in stream order, into segments
// of about PackOptions.SegmentSize raw bytes, compresses them independently
// on all cores (lib/codec) and writes them in order as SEGMENT frames,
// followed by an INDEX and an END that carries the sha256 of the overlay.
// Because segments keep stream order, a COPY from this stream's data still
// only refers backward.
//
// Apply reads an overlay, decompresses segments in parallel ahead of the
// writer, and writes a diff stream in which every COPY and DELTA has been
// resolved against the Base to MEM, DISK or zero records, so that vm-resume
// only sees DEVSTATE, MEM, MEM_ZERO, DISK and DISK_ZERO. Data that earlier
// records of the overlay wrote (the sources of COPY from this stream) is
// kept in sparse scratch files, not in memory. Apply returns nil, which
// lets the caller write the output's END, only after every segment, the
// INDEX and the overlay's END (digest and sha256) verified.
//
// Memory stays bounded by a few segments per worker whatever the size of
// the overlay.
package overlay
