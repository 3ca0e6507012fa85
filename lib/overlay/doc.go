// Package overlay packs a diff stream into an overlay and applies an
// overlay against its base (format/SPEC.md section 3): the library behind
// overlay-pack and overlay-apply.
//
// Pack groups the records of a diff stream into segments of about
// PackOptions.SegmentSize raw bytes, compresses them independently on all
// cores (lib/codec) and writes them in order as SEGMENT frames, followed by
// an INDEX and an END that carries the sha256 of the overlay. By default
// the compressed segments wait in an unlinked temporary file until the
// last one is made, so that the overlay can start with a MANIFEST listing
// every segment (size, sha256, ranges written); NoManifest writes each
// segment as soon as it is ready instead. Records keep stream order, or,
// with OrderAccess, those an access log lists come first (order.go); either
// way a COPY from this stream's data only refers backward.
//
// Apply reads an overlay, checks each segment against the MANIFEST before
// decompressing it, decompresses segments in parallel ahead of the writer,
// and writes a diff stream (starting with a MANIFEST of the ranges it will
// write) in which every DELTA, and with KeepCopies false every COPY, has
// been resolved against the Base to MEM, DISK or zero records. Data that
// earlier records of the overlay wrote (the sources of COPY from this
// stream) is kept in sparse scratch files, not in memory. Apply returns
// nil, which lets the caller write the output's END, only after every
// segment, the MANIFEST's promises, the INDEX and the overlay's END
// (digest and sha256) verified.
//
// Signed overlays (sign.go, SPEC.md section 6.1) carry a SIGNER, a
// HEAD_SIGNATURE over the head (HEADER, SIGNER, MANIFEST) and a SIGNATURE
// over everything; a Verifier checks them on the bytes as they pass.
//
// Memory stays bounded by a few segments per worker whatever the size of
// the overlay.
package overlay
