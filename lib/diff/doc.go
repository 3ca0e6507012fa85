// Package diff turns the memory or disk records of a stream into the
// smallest correct description relative to a base VM. It is the engine of
// mem-diff (memory space) and disk-diff (disk space): one Engine per space,
// the same rules for both.
//
// Per 4 KiB page (or disk block), in order:
//  1. identical to the base at the same offset: nothing is written;
//  2. all zero: a zero record (only where the base is not zero);
//  3. identical to a base memory page, a base disk block, or a page written
//     earlier in this stream: a COPY record, always verified byte for byte;
//  4. a DELTA against the same-offset base page when that is smaller (and
//     deltas are enabled), else the raw page.
//
// Runs of neighbouring records of the same kind are merged.
package diff
