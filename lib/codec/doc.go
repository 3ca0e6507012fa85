// Package codec compresses and decompresses the SEGMENT payloads of an
// overlay (format/SPEC.md section 2.5): zstd (codec 1, klauspost/compress)
// and xz (codec 2, ulikunitz/xz).
//
// Compress and Decompress work on whole segments in memory and reuse
// encoders and decoders through pools, because overlay-pack and
// overlay-apply handle many segments on all cores. Decompress is written for
// hostile input: it never allocates more than the segment's declared raw
// length (itself capped at format.MaxSegmentRaw) and fails unless the output
// is exactly that long. For xz it parses the container itself and hands
// only the LZMA2 data to ulikunitz/xz, with a dictionary no larger than the
// raw length, so a forged dictionary size cannot make it allocate gigabytes.
//
// Decode speed differs by two orders of magnitude: about 1.4 GB/s of raw
// data for zstd and about 16 MB/s for xz in Go (DecodeSpeed), which
// overlay-pack's --codec auto weighs against the link's bandwidth.
package codec
