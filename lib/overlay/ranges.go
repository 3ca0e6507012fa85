package overlay

import (
	"slices"

	"cloudlet/format"
)

// ranges is a list of [offset, length] pairs as the INDEX stores them.
type ranges [][2]uint64

// add appends [off, off+n), extending the last range when adjacent (the
// common case: records mostly come in ascending order).
func (r ranges) add(off, n uint64) ranges {
	if k := len(r); k > 0 && r[k-1][0]+r[k-1][1] == off {
		r[k-1][1] += n
		return r
	}
	return append(r, [2]uint64{off, n})
}

// normalize sorts the ranges and merges those that touch or are closer
// than gap bytes (gap 0: only adjacent ones).
func (r ranges) normalize(gap uint64) ranges {
	slices.SortFunc(r, func(a, b [2]uint64) int {
		switch {
		case a[0] < b[0]:
			return -1
		case a[0] > b[0]:
			return 1
		}
		return 0
	})
	out := r[:0]
	for _, x := range r {
		if k := len(out); k > 0 && out[k-1][0]+out[k-1][1]+gap >= x[0] {
			out[k-1][1] = max(out[k-1][0]+out[k-1][1], x[0]+x[1]) - out[k-1][0]
			continue
		}
		out = append(out, x)
	}
	return out
}

// covers reports whether every range of inner lies inside one range of r
// (both normalized).
func (r ranges) covers(inner ranges) bool {
	i := 0
	for _, x := range inner {
		for i < len(r) && r[i][0]+r[i][1] <= x[0] {
			i++
		}
		if i == len(r) || r[i][0] > x[0] || r[i][0]+r[i][1] < x[0]+x[1] {
			return false
		}
	}
	return true
}

// target returns the space (format.SpaceMem or SpaceDisk) and range a
// record writes, ok false for records that write none.
func target(rec *format.Record) (space uint8, off, n uint64, ok bool) {
	switch rec.Type {
	case format.TypeMem, format.TypeDisk:
		o, data, err := rec.DataRecord()
		if err != nil {
			return 0, 0, 0, false
		}
		space = format.SpaceMem
		if rec.Type == format.TypeDisk {
			space = format.SpaceDisk
		}
		return space, o, uint64(len(data)), true
	case format.TypeMemZero, format.TypeDiskZero:
		o, l, err := rec.ZeroRecord()
		if err != nil {
			return 0, 0, 0, false
		}
		space = format.SpaceMem
		if rec.Type == format.TypeDiskZero {
			space = format.SpaceDisk
		}
		return space, o, l, true
	case format.TypeCopy:
		c, err := rec.CopyRecord()
		if err != nil {
			return 0, 0, 0, false
		}
		return c.Space, c.Offset, c.Length, true
	case format.TypeDelta:
		d, err := rec.DeltaRecord()
		if err != nil {
			return 0, 0, 0, false
		}
		return d.Space, d.Offset, d.Length, true
	}
	return 0, 0, 0, false
}

// segRanges collects the memory and disk ranges of one segment.
type segRanges struct{ mem, disk ranges }

func (s *segRanges) note(rec *format.Record) {
	sp, off, n, ok := target(rec)
	switch {
	case !ok:
	case sp == format.SpaceMem:
		s.mem = s.mem.add(off, n)
	case sp == format.SpaceDisk:
		s.disk = s.disk.add(off, n)
	}
}
