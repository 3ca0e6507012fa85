package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"sync"
)

const (
	sectorSize        = 512
	clusterBits       = 16
	clusterSize       = 1 << clusterBits // 64 KiB
	subclusters       = 32               // per cluster, with extended L2 entries
	subclusterSize    = clusterSize / subclusters
	sectorsPerSub     = subclusterSize / sectorSize // 4
	sectorsPerCluster = clusterSize / sectorSize    // 128
	l2EntrySize       = 16                          // extended L2 entry: descriptor + bitmap
	l2Entries         = clusterSize / l2EntrySize   // 4096 guest clusters per L2 table
	refcountOrder     = 4                           // 16-bit refcounts
	refcountsPerBlock = clusterSize * 8 / (1 << refcountOrder)

	headerLength = 112 // v3 header through compression_type, padded to 8
	maxL1Entries = 32 << 20 / 8
	maxBacking   = 1023 // bytes of backing file name qcow2 allows

	oflagCopied     = uint64(1) << 63 // refcount exactly one
	incompatExtL2   = uint64(1) << 4
	extBackingFmt   = 0xE2792ACA
	extEnd          = 0
	qcowMagic       = 0x514649fb // "QFI\xfb"
	qcowVersion     = 3
	offsetMask      = uint64(0x00fffffffffffe00) // bits 9-55
	maxHostOffset   = int64(1) << 56
	maxVirtualBytes = int64(maxL1Entries) * l2Entries * clusterSize
)

// cluster is the state of one touched guest cluster.
type cluster struct {
	host    int64     // host offset of its data cluster, 0 if none yet
	written [2]uint64 // sectors written (data or zero), bit i = sector i
	zero    uint32    // subclusters made wholly zero, without data
}

// Writer writes a new qcow2 image; see Create. Its methods are safe for
// concurrent use (they are serialized).
type Writer struct {
	mu       sync.Mutex
	f        *os.File
	path     string
	size     int64
	backing  string
	format   string
	base     io.ReaderAt
	clusters map[int64]*cluster // by guest cluster index
	next     int64              // host offset of the next data cluster
	initEnd  int64              // clusters 1..initEnd-1 hold the empty image's metadata, free after Close
	err      error              // sticky: a failed write leaves the image unusable
	closed   bool
	rewrite  bool // a sector may be written again (AllowRewrite)
}

// AllowRewrite lets later writes replace earlier ones (the latest wins),
// for a live stream (vm-handoff), whose passes write a range again. Call
// it before the first write.
func (w *Writer) AllowRewrite() {
	w.mu.Lock()
	w.rewrite = true
	w.mu.Unlock()
}

// Create makes a new qcow2 image at path (it must not exist: O_EXCL) of
// virtual size `size` bytes (a multiple of 512), whose backing file is
// `backing` (stored as given; pass an absolute path) of format
// `backingFormat` ("raw" or "qcow2"). base reads the backing image's
// virtual content (for a raw backing file, the opened file itself); it is
// used only to complete partly written subclusters.
//
// An empty backing (with an empty backingFormat and a nil base) makes an
// image without a backing file, whose unwritten parts read as zero.
func Create(path string, size int64, backing, backingFormat string, base io.ReaderAt) (*Writer, error) {
	if size < 0 || size%sectorSize != 0 {
		return nil, fmt.Errorf("qcow2: create %s: size %d is not a multiple of %d", path, size, sectorSize)
	}
	if size > maxVirtualBytes {
		return nil, fmt.Errorf("qcow2: create %s: size %d is beyond the %d bytes an L1 table of %d entries covers", path, size, maxVirtualBytes, maxL1Entries)
	}
	if backing == "" {
		if backingFormat != "" || base != nil {
			return nil, fmt.Errorf("qcow2: create %s: a backing format or base reader without a backing file", path)
		}
	} else {
		if len(backing) > maxBacking {
			return nil, fmt.Errorf("qcow2: create %s: backing file name of %d bytes is longer than %d", path, len(backing), maxBacking)
		}
		if backingFormat != "raw" && backingFormat != "qcow2" {
			return nil, fmt.Errorf("qcow2: create %s: backing format %q is neither raw nor qcow2", path, backingFormat)
		}
		if base == nil {
			return nil, fmt.Errorf("qcow2: create %s: no reader for the backing file %s", path, backing)
		}
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("qcow2: create: %w", err)
	}
	w := &Writer{
		f:        f,
		path:     path,
		size:     size,
		backing:  backing,
		format:   backingFormat,
		base:     base,
		clusters: make(map[int64]*cluster),
	}
	if err := w.writeEmpty(); err != nil {
		f.Close()
		os.Remove(path)
		return nil, err
	}
	return w, nil
}

// writeEmpty makes the file a valid empty image at once (header, refcount
// table, refcount block, L1 table in clusters 0 to initEnd-1), so that
// QEMU can open it while the data is still being written: vm-resume starts
// QEMU with the disk inactive (incoming migration) and QEMU reads the
// image again when the migration completes, after Close. Data clusters
// follow; Close writes the final metadata after them and gives the empty
// image's metadata clusters refcount 0.
func (w *Writer) writeEmpty() error {
	l := layout{l1Size: ceilDiv(ceilDiv(w.size, clusterSize), l2Entries), rtOffset: clusterSize, rtCluster: 1,
		rbOffset: 2 * clusterSize, rbCount: 1}
	l1c := ceilDiv(l.l1Size*8, clusterSize)
	if l.l1Size > 0 {
		l.l1Offset = 3 * clusterSize
	}
	l.clusters = 3 + l1c
	w.initEnd, w.next = l.clusters, l.clusters*clusterSize
	be := binary.BigEndian
	rt := make([]byte, clusterSize)
	be.PutUint64(rt, uint64(l.rbOffset))
	rb := make([]byte, clusterSize)
	for j := range l.clusters {
		be.PutUint16(rb[j*2:], 1)
	}
	if err := w.f.Truncate(w.next); err != nil { // the L1 table reads as zero
		return fmt.Errorf("qcow2: sizing %s: %w", w.path, err)
	}
	for _, p := range []struct {
		b    []byte
		off  int64
		what string
	}{{rt, l.rtOffset, "refcount table"}, {rb, l.rbOffset, "refcount block"}, {w.header(l), 0, "header"}} {
		if err := w.put(p.b, p.off, p.what); err != nil {
			return err
		}
	}
	return nil
}

// usable reports why the Writer takes no more calls, if it does not.
func (w *Writer) usable() error {
	if w.closed {
		return fmt.Errorf("qcow2: %s is closed", w.path)
	}
	return w.err
}

// check validates a write request of n bytes at off.
func (w *Writer) check(what string, off, n int64) error {
	if off%sectorSize != 0 {
		return fmt.Errorf("qcow2: %s at offset %d of %d bytes: offset not a multiple of %d", what, off, n, sectorSize)
	}
	if n%sectorSize != 0 {
		return fmt.Errorf("qcow2: %s at offset %d of %d bytes: length not a multiple of %d", what, off, n, sectorSize)
	}
	if off < 0 || n < 0 || off > w.size || n > w.size-off {
		return fmt.Errorf("qcow2: %s at offset %d of %d bytes: beyond the %d-byte disk", what, off, n, w.size)
	}
	return nil
}

// sectorMask returns the bits of sectors [s0, s1) of a cluster.
func sectorMask(s0, s1 int) [2]uint64 {
	var m [2]uint64
	for i := range 2 {
		lo, hi := max(s0, 64*i), min(s1, 64*(i+1))
		if lo < hi {
			width := uint(hi - lo)
			var v uint64
			if width == 64 {
				v = ^uint64(0)
			} else {
				v = (uint64(1)<<width - 1) << uint(lo-64*i)
			}
			m[i] = v
		}
	}
	return m
}

// span calls fn for each guest cluster [off, off+n) touches, with the
// cluster index and the byte range [a, b) within it, and stops at the
// first error.
func span(off, n int64, fn func(ci int64, a, b int) error) error {
	for end := off + n; off < end; {
		ci := off / clusterSize
		a := int(off % clusterSize)
		b := int(min(end-ci*clusterSize, clusterSize))
		if err := fn(ci, a, b); err != nil {
			return err
		}
		off = ci*clusterSize + int64(b)
	}
	return nil
}

// checkFree fails if any sector of [off, off+n) was written before
// (unless rewrites are allowed).
func (w *Writer) checkFree(what string, off, n int64) error {
	if w.rewrite {
		return nil
	}
	return span(off, n, func(ci int64, a, b int) error {
		c := w.clusters[ci]
		if c == nil {
			return nil
		}
		m := sectorMask(a/sectorSize, b/sectorSize)
		for i := range 2 {
			if hit := c.written[i] & m[i]; hit != 0 {
				s := int64(64*i + bits.TrailingZeros64(hit))
				return fmt.Errorf("qcow2: %s at offset %d of %d bytes: sector at offset %d already written", what, off, n, ci*clusterSize+s*sectorSize)
			}
		}
		return nil
	})
}

// unzero turns the zero subclusters that [off, off+n) touches into data
// subclusters that read as zero, so a write can replace part of them.
func (w *Writer) unzero(off, n int64) error {
	return span(off, n, func(ci int64, a, b int) error {
		c := w.clusters[ci]
		if c == nil || c.zero == 0 {
			return nil
		}
		for s := a / subclusterSize; s*subclusterSize < b; s++ {
			if c.zero&(1<<uint(s)) == 0 {
				continue
			}
			if _, err := w.touch(ci, true); err != nil {
				return w.fail(err)
			}
			if _, err := w.f.WriteAt(zeroBuf[:subclusterSize], c.host+int64(s*subclusterSize)); err != nil {
				return w.fail(fmt.Errorf("qcow2: write at offset %d of %d bytes: %w", off, n, err))
			}
			c.zero &^= 1 << uint(s)
		}
		return nil
	})
}

// touch returns the state of guest cluster ci, creating it, and gives it a
// host data cluster if withData and it has none.
func (w *Writer) touch(ci int64, withData bool) (*cluster, error) {
	c := w.clusters[ci]
	if c == nil {
		c = &cluster{}
		w.clusters[ci] = c
	}
	if withData && c.host == 0 {
		if w.next+clusterSize > maxHostOffset {
			return nil, fmt.Errorf("qcow2: %s: image file would grow beyond %d bytes", w.path, maxHostOffset)
		}
		c.host = w.next
		w.next += clusterSize
	}
	return c, nil
}

func (c *cluster) mark(m [2]uint64) {
	c.written[0] |= m[0]
	c.written[1] |= m[1]
}

// fail records a write error, which makes the image unusable: Close then
// removes it.
func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// WriteAt writes p at off (both multiples of 512, inside the size). Each
// sector may be written at most once (WriteAt or WriteZeroes); a second
// write to a sector is an error naming the offset. Data goes straight to
// the file (one pwrite per contiguous run of host clusters).
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return 0, err
	}
	n := int64(len(p))
	if err := w.check("write", off, n); err != nil {
		return 0, err
	}
	if err := w.checkFree("write", off, n); err != nil {
		return 0, err
	}
	if w.rewrite {
		if err := w.unzero(off, n); err != nil {
			return 0, err
		}
	}
	// Allocate and mark first, then write the runs of contiguous host
	// clusters, each with one pwrite.
	var runHost, runFrom, runTo int64 = 0, 0, 0 // host offset, range of p
	flush := func() error {
		if runTo == runFrom {
			return nil
		}
		if _, err := w.f.WriteAt(p[runFrom:runTo], runHost); err != nil {
			return w.fail(fmt.Errorf("qcow2: write at offset %d of %d bytes: %w", off, n, err))
		}
		return nil
	}
	err := span(off, n, func(ci int64, a, b int) error {
		c, err := w.touch(ci, true)
		if err != nil {
			return w.fail(err)
		}
		c.mark(sectorMask(a/sectorSize, b/sectorSize))
		host := c.host + int64(a)
		from := ci*clusterSize + int64(a) - off
		if runTo > runFrom && host == runHost+(runTo-runFrom) {
			runTo = from + int64(b-a)
			return nil
		}
		if err := flush(); err != nil {
			return err
		}
		runHost, runFrom, runTo = host, from, from+int64(b-a)
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

var zeroBuf [2 * subclusterSize]byte

// WriteZeroes makes [off, off+n) read as zero (multiples of 512). Whole
// zero subclusters cost no data (zero bits in the bitmap); partial ones are
// written as zero bytes.
func (w *Writer) WriteZeroes(off, n int64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return err
	}
	if err := w.check("write zeroes", off, n); err != nil {
		return err
	}
	if err := w.checkFree("write zeroes", off, n); err != nil {
		return err
	}
	return span(off, n, func(ci int64, a, b int) error {
		sa := (a + subclusterSize - 1) / subclusterSize // first whole subcluster
		sb := b / subclusterSize                        // end of whole subclusters
		partial := func(pa, pb int) error {
			if pa >= pb {
				return nil
			}
			c, err := w.touch(ci, true)
			if err != nil {
				return w.fail(err)
			}
			c.mark(sectorMask(pa/sectorSize, pb/sectorSize))
			// Less than two subclusters: a range without a whole one.
			if _, err := w.f.WriteAt(zeroBuf[:pb-pa], c.host+int64(pa)); err != nil {
				return w.fail(fmt.Errorf("qcow2: write zeroes at offset %d of %d bytes: %w", off, n, err))
			}
			return nil
		}
		if sa >= sb {
			return partial(a, b)
		}
		c, err := w.touch(ci, false)
		if err != nil {
			return w.fail(err)
		}
		c.mark(sectorMask(sa*sectorsPerSub, sb*sectorsPerSub))
		for s := sa; s < sb; s++ {
			c.zero |= 1 << uint(s)
		}
		if err := partial(a, sa*subclusterSize); err != nil {
			return err
		}
		return partial(sb*subclusterSize, b)
	})
}

// readBase reads the backing content at off into p; what lies beyond the
// end of the backing image reads as zero.
func (w *Writer) readBase(p []byte, off int64) error {
	if w.base == nil {
		clear(p)
		return nil
	}
	n, err := w.base.ReadAt(p, off)
	if n < len(p) {
		if err == nil || errors.Is(err, io.EOF) {
			clear(p[n:])
			return nil
		}
		return fmt.Errorf("qcow2: reading the backing file %s at offset %d: %w", w.backing, off+int64(n), err)
	}
	return nil
}

// Kinds of sector content, for ReadAt.
const (
	fromBase = iota
	fromZero
	fromHost
)

func (c *cluster) kind(s int) int {
	if c.written[s/64]&(1<<uint(s%64)) == 0 {
		return fromBase
	}
	if c.zero&(1<<uint(s/sectorsPerSub)) != 0 {
		return fromZero
	}
	return fromHost
}

// ReadAt reads the image's current virtual content: what was written, zero
// ranges, else the backing content through base. (Used to resolve a
// stream's copy of an earlier disk range.) Offsets need no alignment; a
// read reaching the end of the disk returns io.EOF with what it read.
func (w *Writer) ReadAt(p []byte, off int64) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("qcow2: read at offset %d: negative offset", off)
	}
	if off >= w.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > w.size-off {
		p, eof = p[:w.size-off], io.EOF
	}
	err := span(off, int64(len(p)), func(ci int64, a, b int) error {
		base := ci * clusterSize
		dst := p[base+int64(a)-off : base+int64(b)-off]
		c := w.clusters[ci]
		if c == nil {
			return w.readBase(dst, base+int64(a))
		}
		// Runs of sectors of the same kind.
		for x := a; x < b; {
			k := c.kind(x / sectorSize)
			y := (x/sectorSize + 1) * sectorSize
			for y < b && c.kind(y/sectorSize) == k {
				y += sectorSize
			}
			y = min(y, b)
			part := dst[x-a : y-a]
			switch k {
			case fromBase:
				if err := w.readBase(part, base+int64(x)); err != nil {
					return err
				}
			case fromZero:
				clear(part)
			case fromHost:
				if _, err := w.f.ReadAt(part, c.host+int64(x)); err != nil {
					return fmt.Errorf("qcow2: read at offset %d of %d bytes: %w", off, len(p), err)
				}
			}
			x = y
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), eof
}

// Abort closes and removes the file.
func (w *Writer) Abort() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return
	}
	w.closed = true
	w.f.Close()
	os.Remove(w.path)
}

// Close completes partial subclusters from base, writes the L2 tables, the
// L1 table, the refcount table and blocks (exact refcounts for every
// cluster in use, including the refcount structures themselves) and the
// header, and closes the file. It does not fsync. After an error the file
// is removed.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fmt.Errorf("qcow2: %s is closed", w.path)
	}
	w.closed = true
	err := w.err
	if err == nil {
		err = w.finish()
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("qcow2: closing %s: %w", w.path, cerr)
	}
	if err != nil {
		os.Remove(w.path)
		return err
	}
	return nil
}

// layout is where Close puts the metadata.
type layout struct {
	l2Offset  map[int64]int64 // by L1 index
	l1Offset  int64
	l1Size    int64 // entries
	rtOffset  int64
	rtCluster int64 // refcount table clusters
	rbOffset  int64 // first refcount block; they are contiguous
	rbCount   int64
	clusters  int64 // clusters in the file, all with refcount 1
}

func ceilDiv(a, b int64) int64 { return (a + b - 1) / b }

func (w *Writer) plan(order []int64) layout {
	l := layout{l2Offset: make(map[int64]int64)}
	end := w.next
	for _, ci := range order {
		if _, ok := l.l2Offset[ci/l2Entries]; !ok {
			l.l2Offset[ci/l2Entries] = end
			end += clusterSize
		}
	}
	l.l1Size = ceilDiv(ceilDiv(w.size, clusterSize), l2Entries)
	if l.l1Size > 0 {
		l.l1Offset = end
		end += ceilDiv(l.l1Size*8, clusterSize) * clusterSize
	}
	// The refcount structures must count themselves: grow them until the
	// count is stable.
	used := end / clusterSize
	var rt, rb int64 = 1, 1
	for {
		total := used + rt + rb
		nrb := ceilDiv(total, refcountsPerBlock)
		nrt := ceilDiv(nrb*8, clusterSize)
		if nrb == rb && nrt == rt {
			break
		}
		rb, rt = nrb, nrt
	}
	l.rtOffset, l.rtCluster = end, rt
	l.rbOffset, l.rbCount = end+rt*clusterSize, rb
	l.clusters = used + rt + rb
	return l
}

// finish does the work of Close.
func (w *Writer) finish() error {
	order := make([]int64, 0, len(w.clusters))
	for ci := range w.clusters {
		order = append(order, ci)
	}
	slices.Sort(order)

	if err := w.complete(order); err != nil {
		return err
	}
	l := w.plan(order)
	be := binary.BigEndian
	buf := make([]byte, clusterSize)

	// L2 tables, in L1 order (the order of the sorted guest clusters).
	for i := 0; i < len(order); {
		l1i := order[i] / l2Entries
		clear(buf)
		for ; i < len(order) && order[i]/l2Entries == l1i; i++ {
			ci := order[i]
			c := w.clusters[ci]
			e := buf[(ci%l2Entries)*l2EntrySize:]
			var alloc uint32
			for s := range subclusters {
				if c.zero&(1<<uint(s)) != 0 {
					continue
				}
				m := sectorMask(s*sectorsPerSub, (s+1)*sectorsPerSub)
				if c.written[0]&m[0] != 0 || c.written[1]&m[1] != 0 {
					alloc |= 1 << uint(s)
				}
			}
			if c.host != 0 {
				be.PutUint64(e, uint64(c.host)&offsetMask|oflagCopied)
			} else if alloc != 0 {
				return fmt.Errorf("qcow2: internal error: guest cluster %d has data but no host cluster", ci)
			}
			be.PutUint64(e[8:], uint64(alloc)|uint64(c.zero)<<32)
		}
		if err := w.put(buf, l.l2Offset[l1i], "L2 table"); err != nil {
			return err
		}
	}

	// L1 table.
	if l.l1Size > 0 {
		l1 := make([]byte, ceilDiv(l.l1Size*8, clusterSize)*clusterSize)
		for l1i, off := range l.l2Offset {
			be.PutUint64(l1[l1i*8:], uint64(off)&offsetMask|oflagCopied)
		}
		if err := w.put(l1, l.l1Offset, "L1 table"); err != nil {
			return err
		}
	}

	// Refcount table, then the refcount blocks: every cluster has
	// refcount 1.
	rt := make([]byte, l.rtCluster*clusterSize)
	for i := range l.rbCount {
		be.PutUint64(rt[i*8:], uint64(l.rbOffset+i*clusterSize))
	}
	if err := w.put(rt, l.rtOffset, "refcount table"); err != nil {
		return err
	}
	for i := range l.rbCount {
		clear(buf)
		first := i * refcountsPerBlock
		for j := range min(refcountsPerBlock, l.clusters-first) {
			if c := first + j; c == 0 || c >= w.initEnd {
				be.PutUint16(buf[j*2:], 1)
			}
		}
		if err := w.put(buf, l.rbOffset+i*clusterSize, "refcount block"); err != nil {
			return err
		}
	}

	// The header last, so that the image stays the valid empty one until
	// all its metadata is in place.
	if err := w.put(w.header(l), 0, "header"); err != nil {
		return err
	}
	if err := w.f.Truncate(l.clusters * clusterSize); err != nil {
		return fmt.Errorf("qcow2: sizing %s: %w", w.path, err)
	}
	return nil
}

func (w *Writer) put(p []byte, off int64, what string) error {
	if _, err := w.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("qcow2: writing the %s of %s at offset %d: %w", what, w.path, off, err)
	}
	return nil
}

// complete fills the unwritten sectors of partly written subclusters from
// the backing content, so that the subclusters can be marked allocated.
func (w *Writer) complete(order []int64) error {
	buf := make([]byte, clusterSize)
	for _, ci := range order {
		c := w.clusters[ci]
		if c.host == 0 {
			continue
		}
		// Sectors to fill: the unwritten ones of subclusters with some
		// sector written and no zero bit.
		var need [2]uint64
		for s := range subclusters {
			m := sectorMask(s*sectorsPerSub, (s+1)*sectorsPerSub)
			i := s * sectorsPerSub / 64
			wr := c.written[i] & m[i]
			if wr != 0 && wr != m[i] {
				need[i] |= m[i] &^ wr
			}
		}
		for x := 0; x < sectorsPerCluster; {
			if need[x/64]&(1<<uint(x%64)) == 0 {
				x++
				continue
			}
			y := x + 1
			for y < sectorsPerCluster && need[y/64]&(1<<uint(y%64)) != 0 {
				y++
			}
			part := buf[:(y-x)*sectorSize]
			if err := w.readBase(part, ci*clusterSize+int64(x)*sectorSize); err != nil {
				return err
			}
			if err := w.put(part, c.host+int64(x)*sectorSize, "backing data of a partly written subcluster"); err != nil {
				return err
			}
			x = y
		}
	}
	return nil
}

// header builds cluster 0 up to the end of the backing file name.
func (w *Writer) header(l layout) []byte {
	be := binary.BigEndian
	h := make([]byte, headerLength, 512)
	be.PutUint32(h[0:], qcowMagic)
	be.PutUint32(h[4:], qcowVersion)
	// 8: backing_file_offset, 16: backing_file_size, set below.
	be.PutUint32(h[20:], clusterBits)
	be.PutUint64(h[24:], uint64(w.size))
	be.PutUint32(h[32:], 0) // crypt_method
	be.PutUint32(h[36:], uint32(l.l1Size))
	be.PutUint64(h[40:], uint64(l.l1Offset))
	be.PutUint64(h[48:], uint64(l.rtOffset))
	be.PutUint32(h[56:], uint32(l.rtCluster))
	be.PutUint32(h[60:], 0) // nb_snapshots
	be.PutUint64(h[64:], 0) // snapshots_offset
	be.PutUint64(h[72:], incompatExtL2)
	be.PutUint64(h[80:], 0) // compatible_features
	be.PutUint64(h[88:], 0) // autoclear_features
	be.PutUint32(h[96:], refcountOrder)
	be.PutUint32(h[100:], headerLength)
	// 104: compression_type 0 (zlib), then padding to 112.

	if w.format != "" {
		h = be.AppendUint32(h, extBackingFmt)
		h = be.AppendUint32(h, uint32(len(w.format)))
		h = append(h, w.format...)
		for len(h)%8 != 0 {
			h = append(h, 0)
		}
	}
	h = be.AppendUint32(h, extEnd)
	h = be.AppendUint32(h, 0)
	if w.backing != "" {
		be.PutUint64(h[8:], uint64(len(h)))
		be.PutUint32(h[16:], uint32(len(w.backing)))
		h = append(h, w.backing...)
	}
	return h
}
