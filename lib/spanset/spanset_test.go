package spanset

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// Add, Remove and the queries against a bitmap model.
func TestSpanSet(t *testing.T) {
	const n = 300
	r := rand.New(rand.NewPCG(3, 4))
	var s Set[int64]
	model := make([]bool, n)
	for i := 0; i < 20000; i++ {
		a := r.Int64N(n)
		b := a + r.Int64N(min(n-a, 40)+1)
		if r.IntN(2) == 0 {
			s.Add(a, b)
			for x := a; x < b; x++ {
				model[x] = true
			}
		} else {
			s.Remove(a, b)
			for x := a; x < b; x++ {
				model[x] = false
			}
		}
		// The spans, their count and total match the model, and
		// the spans are disjoint and not adjacent.
		var spans [][2]int64
		s.All(func(a, b int64) { spans = append(spans, [2]int64{a, b}) })
		var want [][2]int64
		total := int64(0)
		for x := int64(0); x < n; x++ {
			if !model[x] {
				continue
			}
			total++
			if k := len(want); k > 0 && want[k-1][1] == x {
				want[k-1][1]++
			} else {
				want = append(want, [2]int64{x, x + 1})
			}
		}
		if !slices.Equal(spans, want) || s.Len() != len(want) || s.Total() != total {
			t.Fatalf("op %d: spans %v (n %d total %d), want %v (total %d)", i, spans, s.Len(), s.Total(), want, total)
		}
		qa := r.Int64N(n)
		qb := qa + r.Int64N(n-qa+1)
		wantOverlap := false
		var wantGaps [][2]int64
		for x := qa; x < qb; x++ {
			wantOverlap = wantOverlap || model[x]
			if !model[x] {
				if k := len(wantGaps); k > 0 && wantGaps[k-1][1] == x {
					wantGaps[k-1][1]++
				} else {
					wantGaps = append(wantGaps, [2]int64{x, x + 1})
				}
			}
		}
		wantCover := qa < qb
		for x := qa; x < qb; x++ {
			wantCover = wantCover && model[x]
		}
		if got := s.Covers(qa, qb); got != (wantCover || qa == qb) {
			t.Fatalf("op %d: Covers(%d, %d) = %v", i, qa, qb, got)
		}
		var gaps [][2]int64
		s.Gaps(qa, qb, func(a, b int64) { gaps = append(gaps, [2]int64{a, b}) })
		if s.Overlaps(qa, qb) != wantOverlap || !slices.Equal(gaps, wantGaps) {
			t.Fatalf("op %d: query [%d, %d): overlaps %v gaps %v, want %v %v", i, qa, qb, s.Overlaps(qa, qb), gaps, wantOverlap, wantGaps)
		}
	}
}

// Insert adds only what does not overlap, and leaves the set alone
// otherwise.
func TestInsert(t *testing.T) {
	var s Set[uint64]
	for _, tc := range []struct {
		a, b uint64
		ok   bool
	}{{10, 20, true}, {20, 30, true}, {5, 11, false}, {29, 40, false}, {0, 10, true}, {30, 31, true}, {0, 0, true}} {
		if got := s.Insert(tc.a, tc.b); got != tc.ok {
			t.Errorf("Insert(%d, %d) = %v, want %v", tc.a, tc.b, got, tc.ok)
		}
	}
	if s.Len() != 1 || s.Total() != 31 || !s.Covers(0, 31) {
		t.Errorf("after inserts: %d spans, %d total", s.Len(), s.Total())
	}
	// The largest values do not overflow.
	const top = ^uint64(0)
	if !s.Insert(top-10, top) || !s.Insert(top-20, top-10) || s.Len() != 2 || !s.Covers(top-20, top) {
		t.Errorf("near the top: %d spans", s.Len())
	}
}

// BenchmarkDescending: n disjoint ranges added last first cost n log n
// (issue 32: the sorted slice this replaces copied itself on every insert).
func BenchmarkDescending(b *testing.B) {
	for range b.N {
		var s Set[uint64]
		for i := uint64(160000); i > 0; i-- {
			s.Insert(i*8192, i*8192+4096)
		}
	}
}
