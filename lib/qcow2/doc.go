// Package qcow2 writes a qcow2 copy-on-write top layer over a read-only
// backing image directly from Go, so that vm-resume can synthesize a VM's
// disk without starting qemu-nbd on a fresh top and sending every changed
// range through NBD (a process, socket copies and round trips). Guest data
// goes to the file with one pwrite per contiguous run of host clusters;
// all metadata is written once, at Close, after which QEMU opens the file as
// an ordinary qcow2 image with its backing file and runs a guest on it.
//
// The image is qcow2 version 3 with 64 KiB clusters, extended L2 entries
// (32 subclusters of 2 KiB per cluster, each with an "allocated" and a
// "reads as zero" bit), 16-bit refcounts, and no compression, encryption,
// snapshots or external data file. The layout is:
//
//	cluster 0        header (header_length 112, compression_type zlib), the
//	                 backing format extension, the end-of-extensions marker,
//	                 then the backing file name
//	clusters 1..N    guest data clusters, allocated in the order they are
//	                 first written
//	after the data   the L2 tables (only those covering something written),
//	                 the L1 table (covering the whole virtual size), the
//	                 refcount table and the refcount blocks, which give every
//	                 cluster of the file, themselves included, refcount 1
//
// Subclusters never written stay unallocated and read from the backing
// image, so 2 KiB-aligned writes copy nothing from it. A subcluster written
// only in part (guest writes are 512-byte aligned) is completed at Close
// from the backing content, read through the io.ReaderAt given to Create.
// Whole zeroed subclusters only set their "reads as zero" bit. L1 entries
// and data L2 entries carry QCOW_OFLAG_COPIED (refcount exactly 1), as QEMU
// expects before it writes in place.
//
// Memory is bounded by the number of guest clusters touched: per cluster a
// host offset, a 128-bit per-sector written bitmap and a 32-bit zero
// subcluster bitmap.
package qcow2
