// Package spanset keeps a set of integers (byte offsets, sectors, pages)
// as disjoint, non-adjacent half-open spans [start, end) in a treap
// ordered by start. Memory is proportional to the number of spans, never
// to the lengths they cover, and every operation costs O(log n) expected
// plus the number of spans it touches, in whatever order spans arrive: a
// stream cannot make its checker quadratic by sending its records
// backwards. A Set is not safe for concurrent use; its zero value is an
// empty set.
package spanset

import "math/rand/v2"

// Integer is what a Set holds.
type Integer interface{ ~int64 | ~uint64 }

// Set is a set of integers kept as spans.
type Set[T Integer] struct {
	root  *node[T]
	n     int // spans
	total T   // integers in the set
}

type node[T Integer] struct {
	start, end  T
	prio        uint64
	left, right *node[T]
}

func newNode[T Integer](start, end T) *node[T] {
	return &node[T]{start: start, end: end, prio: rand.Uint64()}
}

// Len returns the number of spans.
func (s *Set[T]) Len() int { return s.n }

// Total returns the number of integers in the set.
func (s *Set[T]) Total() T { return s.total }

// Add inserts [a, b), merging with the spans it overlaps or touches.
func (s *Set[T]) Add(a, b T) {
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
	mid, r := splitAfter(r, b) // the spans starting in [a, b]
	walk(mid, func(x *node[T]) {
		b = max(b, x.end)
		s.n--
		s.total -= x.end - x.start
	})
	s.n++
	s.total += b - a
	s.root = merge(merge(l, newNode(a, b)), r)
}

// Insert adds [a, b) if none of it is in the set yet and reports whether
// it did; an overlapping span leaves the set unchanged.
func (s *Set[T]) Insert(a, b T) bool {
	if s.Overlaps(a, b) {
		return false
	}
	s.Add(a, b)
	return true
}

// Remove takes [a, b) out of the set.
func (s *Set[T]) Remove(a, b T) {
	if a >= b || s.root == nil {
		return
	}
	l, r := split(s.root, a)
	if p := last(l); p != nil && p.end > a {
		if p.end > b { // p holds all of [a, b): cut a hole in it
			tail := newNode(b, p.end)
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
	var keep *node[T]
	walk(mid, func(x *node[T]) {
		if x.end > b { // only the last one can reach past b
			keep = newNode(b, x.end)
			s.total -= b - x.start
			return
		}
		s.n--
		s.total -= x.end - x.start
	})
	s.root = merge(merge(l, keep), r)
}

// Each calls fn on the parts of the set inside [a, b), in order.
func (s *Set[T]) Each(a, b T, fn func(start, end T)) {
	visit(s.root, a, b, func(start, end T) bool {
		fn(max(start, a), min(end, b))
		return true
	})
}

// All calls fn on every span, in order.
func (s *Set[T]) All(fn func(start, end T)) {
	walk(s.root, func(x *node[T]) { fn(x.start, x.end) })
}

// Overlaps reports whether any of [a, b) is in the set.
func (s *Set[T]) Overlaps(a, b T) bool {
	found := false
	visit(s.root, a, b, func(T, T) bool {
		found = true
		return false
	})
	return a < b && found
}

// Covers reports whether all of [a, b) is in the set (an empty range is).
func (s *Set[T]) Covers(a, b T) bool {
	if a >= b {
		return true
	}
	covered := false
	visit(s.root, a, b, func(start, end T) bool {
		covered = start <= a && end >= b
		return false // spans are not adjacent: only the first can hold it
	})
	return covered
}

// Gaps calls fn on the parts of [a, b) not in the set, in order.
func (s *Set[T]) Gaps(a, b T, fn func(start, end T)) {
	at := a
	s.Each(a, b, func(start, end T) {
		if start > at {
			fn(at, start)
		}
		at = end
	})
	if at < b {
		fn(at, b)
	}
}

// split cuts t into the spans starting before key and the rest.
func split[T Integer](t *node[T], key T) (l, r *node[T]) {
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

// splitAfter cuts t into the spans starting at or before key and the rest
// (split at key+1, without overflowing at the type's maximum).
func splitAfter[T Integer](t *node[T], key T) (l, r *node[T]) {
	if t == nil {
		return nil, nil
	}
	if t.start <= key {
		t.right, r = splitAfter(t.right, key)
		return t, r
	}
	l, t.left = splitAfter(t.left, key)
	return l, t
}

// merge joins two treaps, every span of a lying before every span of b.
func merge[T Integer](a, b *node[T]) *node[T] {
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

func last[T Integer](t *node[T]) *node[T] {
	if t == nil {
		return nil
	}
	for t.right != nil {
		t = t.right
	}
	return t
}

func dropLast[T Integer](t *node[T]) *node[T] {
	if t.right == nil {
		return t.left
	}
	t.right = dropLast(t.right)
	return t
}

// walk calls fn on every span of t in order.
func walk[T Integer](t *node[T], fn func(*node[T])) {
	if t == nil {
		return
	}
	walk(t.left, fn)
	fn(t)
	walk(t.right, fn)
}

// visit calls fn, in order, on the spans of t overlapping [a, b) until fn
// returns false; it reports whether fn always returned true.
func visit[T Integer](t *node[T], a, b T, fn func(start, end T) bool) bool {
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
