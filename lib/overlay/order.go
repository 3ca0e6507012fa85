package overlay

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"

	"cloudlet/format"
)

// The order in which Pack packs records (SPEC.md section 5): the stream's
// own (offset order), or first touched first (access order).

// source yields the records of a diff stream in the order they are
// packed.
type source interface {
	// next returns the next record, and whether it goes into an early
	// (small) segment; io.EOF after the last. The record is valid until
	// the next call.
	next() (rec *format.Record, early bool, err error)
	// order is format.OrderOffset or format.OrderAccess.
	order() string
	close()
}

func newSource(r *format.Reader, h *format.Header, o *PackOptions) (source, error) {
	switch {
	case o.Order == format.OrderAccess:
		if _, _, err := accessRanks(o.Access, o.AccessFile, h); err != nil {
			return nil, err
		}
		l := startLog(h)
		l.Accesses = append(l.Accesses, o.Access.Accesses...)
		return newAccessSource(r, h, o, l, o.AccessFile)
	case o.NoManifest || h.Kind != format.KindDiff:
		return &offsetSource{r: r}, nil
	}
	// An overlay with a MANIFEST can start early: what QEMU needs before
	// the guest runs goes first (startRanks), the rest in stream order.
	return newAccessSource(r, h, o, startLog(h), "")
}

// StartDisk is how much of the disk's start an overlay with a MANIFEST
// carries first, after the device state, in offset order too: QEMU reads
// the disk's first sectors when it opens it (the partition table, before
// the guest runs), with the kernel's readahead around them.
const StartDisk = 128 << 10

// startLog is the access log of what QEMU reads before the guest runs.
func startLog(h *format.Header) *format.AccessLog {
	l := &format.AccessLog{Version: format.AccessLogVersion}
	if n := min(h.VM.DiskSize, StartDisk) / format.PageSize * format.PageSize; n > 0 {
		l.Accesses = append(l.Accesses, format.Access{Space: format.AccessDisk, Offset: 0, Length: n})
	}
	return l
}

// offsetSource passes the records on as they come.
type offsetSource struct{ r *format.Reader }

func (s *offsetSource) next() (*format.Record, bool, error) {
	for {
		off := s.r.Offset()
		rec, err := s.r.Next()
		if err != nil {
			return nil, false, err
		}
		if rec.Type == format.TypeManifest {
			continue // of the diff stream; the overlay gets its own
		}
		return rec, false, checkRecordSize(rec, off)
	}
}

func (s *offsetSource) order() string { return format.OrderOffset }
func (s *offsetSource) close()        {}

// written is a record's target range, for finding the records a COPY
// reads from.
type written struct {
	off, end uint64
	i        int // index into accessSource.recs
}

// noRank is the rank of a record no access touched.
const noRank = math.MaxInt64

// spooled is a record of the diff stream kept in the spool file.
type spooled struct {
	at     int64  // offset of its frame in the spool file
	size   int64  // of the frame
	dev    bool   // DEVSTATE
	space  uint8  // of the range it writes; 0: none
	off, n uint64 // the range it writes
	src    uint8  // COPY from this stream: the space it reads (SpaceMem, SpaceDisk); else 0
	srcOff uint64 // where it reads
}

// accessSource spools the whole diff stream to a temporary file, then
// yields its records in access order: DEVSTATE first, in order; then the
// records whose ranges the access log lists, by the rank of their first
// access (the records a COPY from this stream reads from no later than
// it, ties in stream order); then the rest in stream order.
type accessSource struct {
	f     *os.File
	recs  []spooled
	seq   []int32 // indices into recs in packing order
	early int     // the first early records of seq go into early segments
	by    [3][]written
	ord   string
	k     int // records returned so far
	br    *format.Reader
}

// newAccessSource packs in the order of log: startLog's accesses, then
// those of the access log named file ("" for offset order with the start
// first).
func newAccessSource(r *format.Reader, h *format.Header, o *PackOptions, log *format.AccessLog, file string) (src *accessSource, err error) {
	mem, disk, err := accessRanks(log, file, h)
	if err != nil {
		return nil, err
	}
	nStart := int64(len(startLog(h).Accesses))
	f, err := tempFile(o.TempDir, "overlay-pack-diff-")
	if err != nil {
		return nil, err
	}
	s := &accessSource{f: f}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := s.spool(r, &mem, &disk); err != nil {
		return nil, err
	}
	rank := s.ranks(&mem, &disk)
	touchedRank := int64(len(log.Accesses)) // ranks below are touched
	s.seq = make([]int32, len(s.recs))
	touched := false
	for i := range s.seq {
		s.seq[i] = int32(i)
		touched = touched || (!s.recs[i].dev && rank[i] < touchedRank && rank[i] >= nStart)
	}
	if touched && file != "" {
		s.near(rank, &mem, &disk, touchedRank)
	}
	s.pull(rank)
	s.ord = format.OrderAccess
	if file == "" {
		s.ord = format.OrderOffset
	}
	if !touched {
		s.ord = format.OrderOffset
		if o.Log != nil && file != "" {
			fmt.Fprintf(o.Log, "overlay-pack: access log %s: no record of the diff stream goes first (none writes a range the log lists, or only COPY records from data it does not list); packing in offset order\n", o.AccessFile)
		}
	}
	// The device state and the start (startLog) go first in either
	// order, in early segments with what the log lists.
	slices.SortStableFunc(s.seq, func(a, b int32) int { return cmp.Compare(rank[a], rank[b]) })
	for s.early < len(s.seq) && rank[s.seq[s.early]] < touchedRank {
		s.early++
	}
	// The records are read back through a Reader with a fresh Validator:
	// it checks their frames again and that the new order keeps the
	// stream's invariants (a COPY from this stream after its source).
	s.br = format.NewBodyStreamReader(&seqReader{s: s}, format.NewValidator(h))
	return s, nil
}

// spool copies the records of r to the spool file. MEM, DISK and zero
// records are cut where the rank maps change (at page or sector
// boundaries), so that a touched page does not bring the untouched pages
// of a long record forward with it.
func (s *accessSource) spool(r *format.Reader, mem, disk *rankMap) error {
	bw := format.NewBodyWriter(s.f)
	in := &offsetSource{r: r}
	for {
		rec, _, err := in.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if pieces := cut(rec, mem, disk); len(pieces) > 1 {
			for _, p := range pieces {
				if err := s.spoolOne(bw, p); err != nil {
					return err
				}
			}
			continue
		}
		if err := s.spoolOne(bw, rec); err != nil {
			return err
		}
	}
	if err := bw.Close(); err != nil {
		return fmt.Errorf("writing spool file %s: %w (free space there or set --tmpdir)", s.f.Name(), err)
	}
	return nil
}

// cut splits a MEM, DISK or zero record at the boundaries of the rank map
// of its space; nil for other records and records that need no cut.
func cut(rec *format.Record, mem, disk *rankMap) []*format.Record {
	space, off, n, ok := target(rec)
	if !ok || (rec.Type == format.TypeCopy || rec.Type == format.TypeDelta) {
		return nil
	}
	rm, align := mem, uint64(format.PageSize)
	if space == format.SpaceDisk {
		rm, align = disk, format.SectorSize
	}
	var cuts []uint64
	i, _ := slices.BinarySearch(rm.b, off+1)
	for ; i < len(rm.b) && rm.b[i] < off+n; i++ {
		if c := rm.b[i] / align * align; c > off && (len(cuts) == 0 || c > cuts[len(cuts)-1]) {
			cuts = append(cuts, c)
		}
	}
	if len(cuts) == 0 {
		return nil
	}
	var data []byte
	if rec.Type == format.TypeMem || rec.Type == format.TypeDisk {
		_, data, _ = rec.DataRecord()
	}
	var out []*format.Record
	from := off
	for _, c := range append(cuts, off+n) {
		var p []byte
		if data != nil {
			p = format.DataPayload(from, data[from-off:c-off])
		} else {
			p = format.ZeroPayload(from, c-from)
		}
		out = append(out, &format.Record{Type: rec.Type, Flags: rec.Flags, Payload: p})
		from = c
	}
	return out
}

func (s *accessSource) spoolOne(bw *format.Writer, rec *format.Record) error {
	at := int64(bw.Bytes())
	if err := bw.WriteRecord(rec); err != nil {
		return fmt.Errorf("writing spool file %s: %w (free space there or set --tmpdir)", s.f.Name(), err)
	}
	sp := spooled{at: at, size: int64(bw.Bytes()) - at, dev: rec.Type == format.TypeDevState}
	if space, o, n, ok := target(rec); ok {
		sp.space, sp.off, sp.n = space, o, n
	}
	if c, err := rec.CopyRecord(); err == nil && (c.Source == format.SourceStreamMem || c.Source == format.SourceStreamDisk) {
		sp.src, sp.srcOff = format.SpaceMem, c.SourceOffset
		if c.Source == format.SourceStreamDisk {
			sp.src = format.SpaceDisk
		}
	}
	s.recs = append(s.recs, sp)
	return nil
}

// ranks returns the rank of every record: -1 for DEVSTATE, the index of
// the first access that overlaps what it writes, noRank if none. A COPY
// from this stream needs the records it reads from before it: they get
// its rank when theirs is later (a touched COPY pulls its sources
// forward), so with ties in stream order they still come first.
func (s *accessSource) ranks(mem, disk *rankMap) []int64 {
	var by [3][]written // by space: the records writing each range, sorted
	for i, r := range s.recs {
		if r.space != 0 {
			by[r.space] = append(by[r.space], written{r.off, r.off + r.n, i})
		}
	}
	for _, ws := range by {
		slices.SortFunc(ws, func(a, b written) int { return cmp.Compare(a.off, b.off) })
	}
	s.by = by
	rank := make([]int64, len(s.recs))
	for i, r := range s.recs {
		switch {
		case r.dev:
			rank[i] = -1
		case r.space == format.SpaceMem:
			rank[i] = mem.lookup(r.off, r.n)
		case r.space == format.SpaceDisk:
			rank[i] = disk.lookup(r.off, r.n)
		default:
			rank[i] = noRank
		}
	}
	return rank
}

func (s *accessSource) next() (*format.Record, bool, error) {
	rec, err := s.br.Next()
	if err == io.EOF {
		return nil, false, io.EOF
	}
	if err != nil {
		return nil, false, fmt.Errorf("overlay: the records in access order do not read back (a bug in overlay-pack, or the spool file %s is damaged): %w", s.f.Name(), err)
	}
	early := s.k < s.early
	s.k++
	return rec, early, nil
}

func (s *accessSource) order() string { return s.ord }
func (s *accessSource) close()        { s.f.Close() }

// seqReader reads the spooled frames in packing order.
type seqReader struct {
	s    *accessSource
	k    int // next index into s.seq
	at   int64
	left int64
}

func (q *seqReader) Read(p []byte) (int, error) {
	for q.left == 0 {
		if q.k == len(q.s.seq) {
			return 0, io.EOF
		}
		r := q.s.recs[q.s.seq[q.k]]
		q.at, q.left = r.at, r.size
		q.k++
	}
	n, err := q.s.f.ReadAt(p[:min(int64(len(p)), q.left)], q.at)
	q.at += int64(n)
	q.left -= int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	} else if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

// pull gives the records each COPY from this stream reads from the COPY's
// rank when theirs is later: they come before it in the stream, so with
// ties in stream order they stay before it in any order (invariant 4).
func (s *accessSource) pull(rank []int64) {
	// Sources come before their COPY in the stream: walking backwards,
	// every COPY's rank is final when its sources are pulled.
	for i := len(s.recs) - 1; i >= 0; i-- {
		r := s.recs[i]
		if r.src == 0 || rank[i] == noRank {
			continue
		}
		ws := s.by[r.src]
		j := sort.Search(len(ws), func(j int) bool { return ws[j].end > r.srcOff })
		for ; j < len(ws) && ws[j].off < r.srcOff+r.n; j++ {
			if k := ws[j].i; k < i {
				rank[k] = min(rank[k], rank[i])
			}
		}
	}
}

// nearBucket is the granularity of the order of the untouched records:
// those within nearBucket bytes of a touched range first, then within
// twice that, and so on.
const nearBucket = 256 << 10

// near ranks the records no access touched after the touched ones, the
// closest to a touched range of their space first (ties in stream order):
// a guest that touches a page the access log missed most likely touches
// one near those it listed (the same slab, the same file), so a miss
// waits for less of the stream. Ranks from touchedRank up; records with
// nothing near stay at noRank.
func (s *accessSource) near(rank []int64, mem, disk *rankMap, touchedRank int64) {
	for i, r := range s.recs {
		if rank[i] != noRank || r.space == 0 {
			continue
		}
		rm := mem
		if r.space == format.SpaceDisk {
			rm = disk
		}
		if d, ok := rm.distance(r.off, r.n); ok {
			rank[i] = touchedRank + int64(min(d/nearBucket, math.MaxInt32))
		}
	}
}

// distance returns how far [off, off+n) is from the nearest range with a
// rank (0 when it overlaps one); false when there is none.
func (rm *rankMap) distance(off, n uint64) (uint64, bool) {
	last := len(rm.b) - 1 // intervals are 0..last-1
	i := sort.Search(last, func(i int) bool { return rm.b[i+1] > off })
	best, ok := uint64(math.MaxUint64), false
	for j := i; j < last; j++ { // at or after off
		if rm.r[j] != noRank {
			if rm.b[j] < off+n {
				return 0, true
			}
			best, ok = rm.b[j]-(off+n), true
			break
		}
	}
	for j := min(i, last) - 1; j >= 0; j-- { // before off
		if rm.r[j] != noRank {
			if d := off - min(off, rm.b[j+1]); !ok || d < best {
				best, ok = d, true
			}
			break
		}
	}
	return best, ok
}

// rankMap gives the rank of the first access to any part of a range: the
// access log's ranges cut the space into elementary intervals [b[i],
// b[i+1]), each with the smallest rank of the accesses covering it.
type rankMap struct {
	b []uint64
	r []int64 // r[i] is the rank of [b[i], b[i+1]); noRank if none
}

// accessRanks checks the access log against the VM of h and returns the
// rank maps of memory and disk.
func accessRanks(l *format.AccessLog, file string, h *format.Header) (mem, disk rankMap, err error) {
	type ranked struct {
		off, end uint64
		rank     int64
	}
	var m, d []ranked
	for i, a := range l.Accesses {
		size, what, list := h.VM.MemSize, "memory", &m
		if a.Space == format.AccessDisk {
			size, what, list = h.VM.DiskSize, "disk", &d
		}
		if a.Offset > size || a.Length > size-a.Offset {
			return rankMap{}, rankMap{}, fmt.Errorf("access log %s: access %d (%s %d+%d) lies outside the VM's %d bytes of %s: is it the access log of another VM?", file, i, a.Space, a.Offset, a.Length, size, what)
		}
		*list = append(*list, ranked{a.Offset, a.Offset + a.Length, int64(i)})
	}
	build := func(acc []ranked) rankMap {
		var rm rankMap
		for _, a := range acc {
			rm.b = append(rm.b, a.off, a.end)
		}
		slices.Sort(rm.b)
		rm.b = slices.Compact(rm.b)
		rm.r = make([]int64, len(rm.b))
		next := make([]int, len(rm.b)) // the first interval >= i without a rank yet
		for i := range rm.r {
			rm.r[i], next[i] = noRank, i
		}
		find := func(i int) int {
			for next[i] != i {
				next[i] = next[next[i]]
				i = next[i]
			}
			return i
		}
		for _, a := range acc { // in rank order: the first to cover an interval wins
			lo, _ := slices.BinarySearch(rm.b, a.off)
			hi, _ := slices.BinarySearch(rm.b, a.end)
			for i := find(lo); i < hi; i = find(i) {
				rm.r[i], next[i] = a.rank, i+1
			}
		}
		return rm
	}
	return build(m), build(d), nil
}

// lookup returns the smallest rank of the intervals [off, off+n) overlaps.
func (rm *rankMap) lookup(off, n uint64) int64 {
	best := int64(noRank)
	last := len(rm.b) - 1 // intervals are 0..last-1
	i := sort.Search(last, func(i int) bool { return rm.b[i+1] > off })
	for ; i < last && rm.b[i] < off+n; i++ {
		best = min(best, rm.r[i])
	}
	return best
}
