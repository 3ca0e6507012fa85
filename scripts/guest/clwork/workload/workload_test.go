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

func TestAppContent(t *testing.T) {
	var raw, z bytes.Buffer
	if err := Generate(&raw, App, 4*MiB, 5, 2); err != nil {
		t.Fatal(err)
	}
	w := gzip.NewWriter(&z)
	w.Write(raw.Bytes())
	w.Close()
	r := float64(z.Len()) / float64(raw.Len())
	t.Logf("app content: gzip to %.2f", r)
	if r < 0.2 || r > 0.5 { // program-like: between 2x and 5x
		t.Errorf("app content compresses to %.2f with gzip; want 0.2..0.5", r)
	}
	if Sum(App, MiB, 1, 0) != Sum(App, MiB, 1, 0) || Sum(App, MiB, 1, 0) == Sum(App, MiB, 2, 0) {
		t.Error("app content not deterministic per seed")
	}
	fs := AppMix.Files(3, 1)
	if len(fs) != 3 || fs[0].Kind != App || fs[2].Kind != App {
		t.Errorf("AppMix.Files = %+v", fs)
	}
	if m, err := ParseMix("app"); err != nil || len(m) != 1 || m[0] != App {
		t.Errorf("ParseMix(app) = %v, %v", m, err)
	}
	if _, err := ParseMix("zip"); err == nil {
		t.Error("ParseMix(zip) succeeded")
	}
}
