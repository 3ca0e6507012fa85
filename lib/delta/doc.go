// Package delta encodes and decodes the DELTA record methods of the cloudlet
// stream (format/SPEC.md section 2.4): XOR against the same-offset base
// range, and OPS, a byte-level copy/insert/skip program against it.
//
// An OPS program is a sequence of items `u8 op || uvarint n`:
//
//	op 0 (copy)   append n bytes of the base at the base cursor, advance it by n
//	op 1 (insert) append the n literal bytes that follow the item
//	op 2 (skip)   advance the base cursor by n without output
//
// The base cursor starts at 0 and never moves back. A program must produce
// exactly the record's Length bytes and never read past the base range.
//
// Best picks, for one page, the smallest of XOR, OPS and the raw page;
// mem-diff and disk-diff use it. Decode is safe on hostile input: it never
// reads or writes out of bounds and fails if the program does not produce
// exactly len(out) bytes.
package delta
