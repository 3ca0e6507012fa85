package format

import "sort"

// spans is a set of disjoint, non-adjacent half-open ranges [lo, hi), kept
// sorted. Its memory grows with the number of records, never with the size
// a record claims, so a hostile length cannot make it allocate.
type spans struct{ s [][2]uint64 }

// add inserts [lo, hi) and reports false if it overlaps what is there.
func (p *spans) add(lo, hi uint64) bool {
	// i: first span whose end is >= lo (could touch or overlap).
	i := sort.Search(len(p.s), func(i int) bool { return p.s[i][1] >= lo })
	if i < len(p.s) && p.s[i][0] < hi && p.s[i][1] > lo {
		return false
	}
	mergeLeft := i < len(p.s) && p.s[i][1] == lo
	j := i
	if mergeLeft {
		j = i + 1
	}
	mergeRight := j < len(p.s) && p.s[j][0] == hi
	switch {
	case mergeLeft && mergeRight:
		p.s[i][1] = p.s[j][1]
		p.s = append(p.s[:j], p.s[j+1:]...)
	case mergeLeft:
		p.s[i][1] = hi
	case mergeRight:
		p.s[j][0] = lo
	default:
		p.s = append(p.s, [2]uint64{})
		copy(p.s[i+1:], p.s[i:])
		p.s[i] = [2]uint64{lo, hi}
	}
	return true
}

// covers reports whether [lo, hi) lies entirely inside the set.
func (p *spans) covers(lo, hi uint64) bool {
	i := sort.Search(len(p.s), func(i int) bool { return p.s[i][1] > lo })
	return i < len(p.s) && p.s[i][0] <= lo && p.s[i][1] >= hi
}
