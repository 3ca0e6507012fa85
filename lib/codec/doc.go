// Package codec compresses and decompresses the SEGMENT payloads of an
// overlay (format/SPEC.md section 2.5): zstd (codec 1, klauspost/compress)
// and xz (codec 2): liblzma through cgo when the build has cgo (the xz
// tool's own encoder and decoder), else ulikunitz/xz in pure Go (build
// with CGO_ENABLED=0 or -tags purego). Both write standard .xz streams
// with one LZMA2 block and read each other's.
//
// Compress and Decompress work on whole segments in memory and reuse
// encoders and decoders through pools, because overlay-pack and
// overlay-apply handle many segments on all cores. Decompress is written for
// hostile input: it never allocates more than the segment's declared raw
// length (itself capped at format.MaxSegmentRaw) and fails unless the output
// is exactly that long. For xz, liblzma decodes under a memory limit;
// the pure-Go path parses the container itself and hands only the LZMA2
// data to ulikunitz/xz, with a dictionary no larger than the raw length,
// so a forged dictionary size cannot make either allocate gigabytes.
//
// Decode speeds differ by an order of magnitude: zstd about 1.4 GB/s of raw
// data per core, liblzma's xz about 100 MB/s, ulikunitz's about 16 MB/s;
// overlay-pack's --codec auto measures them against the link's bandwidth.
package codec
