// Package format reads and writes the cloudlet stream: the one record format
// that every pipeline stage (vm-capture, mem-diff, disk-diff, overlay-pack,
// overlay-apply, vm-resume) reads on stdin and writes on stdout.
//
// SPEC.md in this directory is the authority for the bytes. The API follows
// archive/tar: NewWriter and NewReader, Next to step through records, Read for
// the current record's data, sticky errors, and Close to write the END record
// without closing the underlying writer.
//
// A Reader verifies every frame's checksum before it returns the record, and
// it checks each known record against the stream's HEADER (alignment, bounds,
// no two records writing the same place), so a stage never acts on a corrupt
// or out-of-range record. Data is still tentative until Next returns io.EOF,
// which it does only after the END record's digest has been verified.
package format
