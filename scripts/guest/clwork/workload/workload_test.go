package workload

import (
	"bytes"
	"compress/gzip"
	"testing"
)

func TestFilesSizes(t *testing.T) {
	for _, mib := range []int{1, 3, 8, 13} {
		var total int64
		fs := Files(mib, 7)
		for _, f := range fs {
			total += f.Size
		}
		if total != int64(mib)*MiB {
			t.Fatalf("mib %d: total %d", mib, total)
		}
		if len(fs) > MaxFiles {
			t.Fatalf("too many files: %d", len(fs))
		}
	}
}

func TestDeterministicAndMixed(t *testing.T) {
	if Sum(Text, MiB, 1, 0) != Sum(Text, MiB, 1, 0) {
		t.Fatal("not deterministic")
	}
	if Sum(Text, MiB, 1, 0) == Sum(Text, MiB, 2, 0) {
		t.Fatal("seed ignored")
	}
	ratio := func(k Kind) float64 {
		var raw, z bytes.Buffer
		_ = Generate(&raw, k, MiB, 3, 1)
		w := gzip.NewWriter(&z)
		_, _ = w.Write(raw.Bytes())
		_ = w.Close()
		return float64(z.Len()) / float64(raw.Len())
	}
	if r := ratio(Text); r > 0.5 {
		t.Fatalf("text compresses to %.2f", r)
	}
	if r := ratio(Random); r < 0.95 {
		t.Fatalf("random compresses to %.2f", r)
	}
}
