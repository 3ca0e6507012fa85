// Package lazyfs is the FUSE file system behind early start: it serves a
// VM's memory and disk images before the overlay has fully arrived, so
// that QEMU can resume at once. QEMU maps the memory image privately
// (memory-backend-file, share=off) and reads the disk image from the
// mount; this process answers the kernel's reads.
//
// # What it serves
//
// Mount serves a flat, read-only directory: one file per Image, mode 0444,
// owned by root. An image's content is a read-only base (any io.ReaderAt;
// shorter than the image or nil: the rest reads as zero) overlaid with the
// ranges that arrive later from the stream (Fill; Zero for ranges of
// zeros). The package does not know the stream format: the resume engine
// declares what will arrive (Expect, from the overlay's manifest, before
// Mount) and feeds what arrived (Fill, Zero, Fail).
//
// Files open read-write too, because QEMU before 8.2 (Debian 12 has 7.2)
// opens a share=off memory-backend-file O_RDWR although it maps it
// privately; writes, truncation and fallocate fail with EROFS, and the
// pages QEMU writes in its private mapping never reach the file.
//
// # The blocking rule
//
// Ranges are tracked per 512-byte sector (a disk sector; a memory page is
// eight), as sorted span sets whose memory is bounded by the number of
// ranges, not by the image size. Expect, Fill and Zero take sector-aligned
// ranges (the end may also be the end of the image).
//
// A read of a range that holds an expected sector not arrived yet blocks
// until every such sector of it has arrived (a FUSE read must return its
// full length: a short read looks like the end of the file to the kernel),
// then returns the arrived data and the base around it. Everything else
// reads at once. After Fail, the reads that wait, or would wait, fail with
// EIO (for a page fault QEMU gets SIGBUS, for a read(2) EIO); arrived and
// unexpected ranges still read. When the kernel interrupts a waiting read
// (a signal to the reader) it fails with EINTR: read(2) returns EINTR, and
// a page fault is retried by the kernel (measured on 6.18: no SIGBUS).
//
// # Readahead bound
//
// The kernel never asks for just the page touched. A page fault reads the
// window around the faulting page (readaround: half the readahead size
// before it, half after, on the 6.18 kernel this was written on), and
// read(2) reads ahead of sequential readers, growing its window up to the
// readahead size; one request is at most 128 KiB (max_read), so a large
// read(2) becomes several requests. Because the reply must be complete,
// the touched page waits for every expected sector in its window. Options.
// MaxReadAhead bounds that window (default and maximum 128 KiB: the kernel
// does not let a FUSE mount raise it beyond its default): a fault waits for
// expected data at most about 64 KiB away, never for far-away pages still
// in flight. A smaller MaxReadAhead makes faults on the base slower (one
// request per page when 4 KiB). Each waiting readahead holds one of the
// kernel's asynchronous request slots; the mount asks for 256 instead of
// the kernel's 12, so that a few faults waiting for data do not stall the
// reads of the base behind them.
//
// # Caching
//
// Open returns FOPEN_KEEP_CACHE: pages read once stay in the page cache
// across opens (otherwise the kernel drops a file's cache at each open), so
// each page is read through this process once. That is sound because the
// content of a range never changes once it can be read: an expected range
// can only be read after it arrived, and an unexpected range reads the base
// for good. Filling a range that was not expected, after it was read, is
// therefore undefined (the kernel may keep serving the base): Expect every
// range that will arrive before Mount.
//
// # Memory
//
// Arrived data goes to one sparse scratch file per image (created on the
// first Fill, unlinked at once, in Options.StoreDir, default os.TempDir();
// Zero leaves holes), so it costs disk, not RAM; Unmount closes it, which
// frees it. The page cache holds one copy per instance: the pages QEMU
// reads through the mount are cached once per mount, and QEMU's private
// mapping uses these pages until the guest writes one. A base page read
// through the mount is therefore cached once per mount, not shared with
// the other instances resumed from the same base, as it would be if QEMU
// mapped the base file itself: each instance's PSS carries its whole
// working set of base pages (plus, reclaimable, this process's own reads of
// the base and of the store through their page cache). That is the price of
// starting before the overlay arrived.
//
// # Lifetime and stale mounts
//
// The mount lives as long as this process serves it: QEMU faults pages in
// from it for the VM's whole life, not only while the overlay arrives.
// Unmount unmounts (fusermount3 -u or fusermount -u when installed, a plain
// umount otherwise). When files are still open (a QEMU still running), it
// aborts the connection (umount -f: every later read of an open file fails
// with ENOTCONN, so nothing hangs) and detaches the mount point; reads
// waiting for expected data fail. It then waits for the serving goroutines
// and drops the scratch files.
//
// Mount marks the process's /dev/fuse descriptors close-on-exec (go-fuse's
// direct mount opens it without O_CLOEXEC): a child that inherited the
// connection would keep it alive after this process died, and then wait
// forever for answers (QEMU hung in its exit, flushing the served file).
//
// A process killed while serving (SIGKILL, a crash) leaves a dead mount:
// every access to the folder fails with ENOTCONN ("transport endpoint is
// not connected") until it is unmounted, and Mount on it fails. Whoever
// reclaims the folder of a dead owner must call Cleanup(dir) before
// removing or reusing it.
//
// The serving process must not map the images itself (nor fault on them
// in any other way): a goroutine waiting in a page fault cannot be stopped
// by the Go runtime, so the next stop-the-world (a GC) waits for it while
// the goroutines that would answer the fault stay stopped, and the process
// hangs. Reads with pread from the serving process are safe (a goroutine
// in a system call does not hold up the runtime). The tests fault from a
// helper process for that reason.
package lazyfs
