package handoff

import (
	"bytes"
	"fmt"

	"cloudlet/format"
	"cloudlet/lib/base"

	"github.com/cespare/xxhash/v2"
)

// baseReader reads the base's memory and disk (lib/base.Base).
type baseReader interface {
	ReadMemAt(p []byte, off int64) (int, error)
	ReadDiskAt(p []byte, off int64) (int, error)
}

// onBase marks a page or block the destination holds as the base has it
// (every one at the start). Other values are the xxhash64 of the content
// sent last, with the low bit set, so no content hashes to onBase.
const onBase = 0

func sum(p []byte) uint64 { return xxhash.Sum64(p) | 1 }

// tracker writes the records that bring the destination from what it
// holds to the content it is shown, and remembers what it then holds.
// Memory state is a slice (one word per guest page); disk state a map
// (only blocks of the top layer are ever shown).
type tracker struct {
	w    *format.Writer
	base baseReader
	mem  []uint64
	disk map[uint64]uint64
	buf  []byte // a base page or block
	run  run    // records are coalesced while contiguous
	// held finds a place where the destination holds a given content that
	// this stream sent (memory or disk, a whole page), so the same content
	// elsewhere goes as a COPY from there: the page cache of a file and
	// its disk blocks, a file and its copy. Checked against mem and disk
	// when used (the place may have changed since).
	held map[uint64]place

	// counted per space: raw data bytes written and records
	memBytes, diskBytes uint64
	copied              uint64 // bytes sent as copies of what the destination holds
	sent                uint64 // bytes given to w (frames' payloads, roughly)
}

// Kinds of coalesced runs.
const (
	runNone = iota
	runData
	runZero
	runBase // back to the base's content at the same offset
	runCopy // a copy of what the destination holds elsewhere (run.from)
)

// place is a page of memory or disk.
type place struct {
	space uint8
	off   uint64
}

// holds reports whether the destination holds content h at p.
func (t *tracker) holds(p place, h uint64) bool {
	if p.space == format.SpaceMem {
		return p.off/format.PageSize < uint64(len(t.mem)) && t.mem[p.off/format.PageSize] == h
	}
	return t.disk[p.off] == h
}

type run struct {
	kind  int
	space uint8
	off   uint64
	n     uint64
	data  []byte
	from  place // runCopy: where the run's first page comes from
}

func newTracker(w *format.Writer, b baseReader, memSize uint64) *tracker {
	return &tracker{w: w, base: b, mem: make([]uint64, memSize/format.PageSize), disk: map[uint64]uint64{},
		buf: make([]byte, format.PageSize), run: run{data: make([]byte, 0, format.MaxRecordData)}, held: map[uint64]place{}}
}

// page shows the destination the content of guest page off.
func (t *tracker) page(off uint64, data []byte) error {
	i := off / format.PageSize
	if i >= uint64(len(t.mem)) || off%format.PageSize != 0 || len(data) != format.PageSize {
		return fmt.Errorf("page at %d (%d bytes) is not a page of the VM's %d bytes of RAM", off, len(data), uint64(len(t.mem))*format.PageSize)
	}
	kind, h, err := t.decide(format.SpaceMem, t.mem[i], off, data)
	if err != nil || kind == runNone {
		return err
	}
	t.mem[i] = h
	return t.send(kind, h, place{format.SpaceMem, off}, data)
}

// send writes data (of hash h) at p as a COPY when the destination holds
// the same content elsewhere, else as decided.
func (t *tracker) send(kind int, h uint64, p place, data []byte) error {
	if kind == runData && len(data) == format.PageSize {
		if from, ok := t.held[h]; ok && from != p && t.holds(from, h) {
			return t.addCopy(p, from)
		}
		t.held[h] = p
	}
	return t.add(kind, p.space, p.off, data)
}

// block shows the destination the content of the disk block at off (a
// multiple of 512, at most a page long).
func (t *tracker) block(off uint64, data []byte) error {
	kind, h, err := t.decide(format.SpaceDisk, t.disk[off], off, data)
	if err != nil || kind == runNone {
		return err
	}
	if h == onBase {
		delete(t.disk, off)
	} else {
		t.disk[off] = h
	}
	return t.send(kind, h, place{format.SpaceDisk, off}, data)
}

// decide says what to send for data at off, given what the destination
// holds there (have): nothing (runNone), the data, a zero run or the
// base's content; and what the destination then holds.
func (t *tracker) decide(space uint8, have uint64, off uint64, data []byte) (int, uint64, error) {
	h := sum(data)
	if have == h {
		return runNone, h, nil
	}
	// Equal to the base? (Always asked while the destination has the
	// base: QEMU's first pass shows every page.)
	b := t.buf[:len(data)]
	var err error
	if space == format.SpaceMem {
		_, err = t.base.ReadMemAt(b, int64(off))
	} else {
		_, err = t.base.ReadDiskAt(b, int64(off))
	}
	if err != nil {
		return 0, 0, fmt.Errorf("reading the base at %d: %w", off, err)
	}
	same := bytes.Equal(b, data)
	switch {
	case same && have == onBase:
		return runNone, onBase, nil
	case same:
		return runBase, onBase, nil
	case base.IsZero(data):
		return runZero, h, nil
	}
	return runData, h, nil
}

// add extends the current run or starts a new one.
func (t *tracker) add(kind int, space uint8, off uint64, data []byte) error {
	n := uint64(len(data))
	r := &t.run
	if r.kind != kind || r.space != space || r.off+r.n != off || (kind == runData && len(r.data)+len(data) > cap(r.data)) {
		if err := t.flush(); err != nil {
			return err
		}
		r.kind, r.space, r.off = kind, space, off
	}
	r.n += n
	if kind == runData {
		r.data = append(r.data, data...)
	}
	return nil
}

// addCopy extends the current copy run (contiguous target and source) or
// starts one; a run of data before it is written first, so what the copy
// reads has arrived.
func (t *tracker) addCopy(to, from place) error {
	r := &t.run
	if r.kind != runCopy || r.space != to.space || r.off+r.n != to.off || r.from.space != from.space || r.from.off+r.n != from.off {
		if err := t.flush(); err != nil {
			return err
		}
		r.kind, r.space, r.off, r.from = runCopy, to.space, to.off, from
	}
	r.n += format.PageSize
	return nil
}

// flush writes the current run as one record.
func (t *tracker) flush() error {
	r := &t.run
	if r.kind == runNone || r.n == 0 {
		r.kind, r.n = runNone, 0
		return nil
	}
	var err error
	switch {
	case r.kind == runData && r.space == format.SpaceMem:
		err = t.w.WriteMem(r.off, r.data)
		t.memBytes += r.n
	case r.kind == runData:
		err = t.w.WriteDisk(r.off, r.data)
		t.diskBytes += r.n
	case r.kind == runZero && r.space == format.SpaceMem:
		err = t.w.WriteMemZero(r.off, r.n)
	case r.kind == runZero:
		err = t.w.WriteDiskZero(r.off, r.n)
	case r.kind == runCopy:
		src := format.SourceStreamMem
		if r.from.space == format.SpaceDisk {
			src = format.SourceStreamDisk
		}
		err = t.w.WriteCopy(format.Copy{Space: r.space, Source: src, Offset: r.off, SourceOffset: r.from.off, Length: r.n})
		t.copied += r.n
	default:
		src := format.SourceBaseMem
		if r.space == format.SpaceDisk {
			src = format.SourceBaseDisk
		}
		err = t.w.WriteCopy(format.Copy{Space: r.space, Source: src, Offset: r.off, SourceOffset: r.off, Length: r.n})
	}
	if r.kind == runData {
		t.sent += r.n
	} else {
		t.sent += 48
	}
	r.kind, r.n, r.data = runNone, 0, r.data[:0]
	return err
}
