package lazyfs

import "math/rand/v2"

// spanSet is a set of integers (sector or page numbers) kept as disjoint,
// non-adjacent half-open spans [start, end) in a treap ordered by start.
// Memory is proportional to the number of spans, and every operation costs
// O(log n) expected plus the number of spans it touches. Not safe for
// concurrent use.
type spanSet struct {
	root  *span
	n     int   // spans
	total int64 // integers in the set
}

type span struct {
	start, end  int64
	prio        uint64
	left, right *span
}

func newSpan(start, end int64) *span {
	return &span{start: start, end: end, prio: rand.Uint64()}
}

// split cuts t into the spans starting before key and the rest.
func split(t *span, key int64) (l, r *span) {
	if t == nil {
		return nil, nil
	}
	if t.start < key {
		t.right, r = split(t.right, key)
		return t, r
	}
	l, t.left = split(t.left, key)
	return l, t
}

// merge joins two treaps, every span of a lying before every span of b.
func merge(a, b *span) *span {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	case a.prio > b.prio:
		a.right = merge(a.right, b)
		return a
	default:
		b.left = merge(a, b.left)
		return b
	}
}

func last(t *span) *span {
	if t == nil {
		return nil
	}
	for t.right != nil {
		t = t.right
	}
	return t
}

func dropLast(t *span) *span {
	if t.right == nil {
		return t.left
	}
	t.right = dropLast(t.right)
	return t
}

// walk calls fn on every span of t in order.
func walk(t *span, fn func(*span)) {
	if t == nil {
		return
	}
	walk(t.left, fn)
	fn(t)
	walk(t.right, fn)
}

// add inserts [a, b), merging with the spans it overlaps or touches.
func (s *spanSet) add(a, b int64) {
	if a >= b {
		return
	}
	l, r := split(s.root, a)
	if p := last(l); p != nil && p.end >= a {
		l = dropLast(l)
		a = p.start
		b = max(b, p.end)
		s.n--
		s.total -= p.end - p.start
	}
	mid, r := split(r, b+1) // the spans starting in [a, b]
	walk(mid, func(x *span) {
		b = max(b, x.end)
		s.n--
		s.total -= x.end - x.start
	})
	s.n++
	s.total += b - a
	s.root = merge(merge(l, newSpan(a, b)), r)
}

// remove takes [a, b) out of the set.
func (s *spanSet) remove(a, b int64) {
	if a >= b || s.root == nil {
		return
	}
	l, r := split(s.root, a)
	if p := last(l); p != nil && p.end > a {
		if p.end > b { // p holds all of [a, b): cut a hole in it
			tail := newSpan(b, p.end)
			s.total -= b - a
			s.n++
			p.end = a
			s.root = merge(merge(l, tail), r)
			return
		}
		s.total -= p.end - a
		p.end = a
	}
	mid, r := split(r, b) // the spans starting in [a, b)
	var keep *span
	walk(mid, func(x *span) {
		if x.end > b { // only the last one can reach past b
			keep = newSpan(b, x.end)
			s.total -= b - x.start
			return
		}
		s.n--
		s.total -= x.end - x.start
	})
	s.root = merge(merge(l, keep), r)
}

// visit calls fn, in order, on the spans of t overlapping [a, b) until fn
// returns false; it reports whether fn always returned true.
func visit(t *span, a, b int64, fn func(start, end int64) bool) bool {
	if t == nil {
		return true
	}
	// Spans are disjoint and sorted, so the left subtree ends before
	// t.start and the right subtree starts at or after t.end.
	if t.start > a && !visit(t.left, a, b, fn) {
		return false
	}
	if t.start < b && t.end > a && !fn(t.start, t.end) {
		return false
	}
	if t.end < b {
		return visit(t.right, a, b, fn)
	}
	return true
}

// each calls fn on the parts of the set inside [a, b), in order.
func (s *spanSet) each(a, b int64, fn func(start, end int64)) {
	visit(s.root, a, b, func(start, end int64) bool {
		fn(max(start, a), min(end, b))
		return true
	})
}

// overlaps reports whether any of [a, b) is in the set.
func (s *spanSet) overlaps(a, b int64) bool {
	found := false
	visit(s.root, a, b, func(int64, int64) bool {
		found = true
		return false
	})
	return a < b && found
}

// gaps calls fn on the parts of [a, b) not in the set, in order.
func (s *spanSet) gaps(a, b int64, fn func(start, end int64)) {
	at := a
	s.each(a, b, func(start, end int64) {
		if start > at {
			fn(at, start)
		}
		at = end
	})
	if at < b {
		fn(at, b)
	}
}
