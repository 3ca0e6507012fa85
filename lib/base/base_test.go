package base

import (
	"bytes"
	"math/rand"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestIndex(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	mem := make([]byte, 64*PageSize)
	disk := make([]byte, 64*PageSize)
	r.Read(mem[:32*PageSize])
	r.Read(disk[:40*PageSize])
	copy(disk[10*PageSize:], mem[5*PageSize:6*PageSize]) // same page in both: memory wins
	unaligned := disk[20*PageSize+512 : 21*PageSize+512]

	x := BuildIndex(mem, disk, false)
	if x.Len() != 32+40-1 {
		t.Errorf("Len() = %d; want %d distinct non-zero pages", x.Len(), 32+40-1)
	}
	if loc, ok := x.Lookup(xxhash.Sum64(mem[5*PageSize : 6*PageSize])); !ok || loc != 5*PageSize {
		t.Errorf("Lookup(mem page 5) = %#x, %v; want memory offset %#x", loc, ok, 5*PageSize)
	}
	if loc, ok := x.Lookup(xxhash.Sum64(disk[39*PageSize : 40*PageSize])); !ok || loc != LocDisk|39*PageSize {
		t.Errorf("Lookup(disk block 39) = %#x, %v; want disk offset", loc, ok)
	}
	if _, ok := x.Lookup(xxhash.Sum64(unaligned)); ok {
		t.Errorf("unaligned disk window found without windows")
	}
	if _, ok := x.Lookup(xxhash.Sum64(make([]byte, PageSize))); ok {
		t.Errorf("zero page is indexed")
	}
	xw := BuildIndex(mem, disk, true)
	if loc, ok := xw.Lookup(xxhash.Sum64(unaligned)); !ok || loc != LocDisk|(20*PageSize+512) {
		t.Errorf("with windows, Lookup(unaligned) = %#x, %v", loc, ok)
	}
	path := filepath.Join(t.TempDir(), "index.bin")
	if err := xw.WriteFile(path); err != nil {
		t.Fatal(err)
	}
	back, err := LoadIndex(path)
	if err != nil || back.Len() != xw.Len() {
		t.Fatalf("LoadIndex = %v, %v entries; want %d", err, back, xw.Len())
	}
	if x.Bytes()/x.Len() > 16+4 {
		t.Errorf("index costs %d bytes per page", x.Bytes()/x.Len())
	}
}

func TestCatalog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "catalog.json")
	c, err := LoadCatalog(path)
	if err != nil || len(c.Entries) != 0 {
		t.Fatalf("LoadCatalog(missing) = %v, %v; want empty", c, err)
	}
	id := strings.Repeat("ab", 32)
	c.Add(Entry{Name: "deb", SHA256: id, Path: "/bases/deb"})
	c.Add(Entry{Name: "deb2", SHA256: id, Path: "/bases/deb2"}) // same ID replaces
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	c, _ = LoadCatalog(path)
	if e, ok := c.Find(id); !ok || e.Path != "/bases/deb2" || len(c.Entries) != 1 {
		t.Errorf("catalog = %+v; want one entry at /bases/deb2", c.Entries)
	}
	if n := c.Remove(id[:8]); n != 1 || len(c.Entries) != 0 {
		t.Errorf("Remove(prefix) = %d; want 1", n)
	}
	_, err = Locate("", path, strings.Repeat("cd", 32))
	if err == nil || !strings.Contains(err.Error(), "not in catalog") || !strings.Contains(err.Error(), path) {
		t.Errorf("Locate(unknown) = %v; want an error naming the catalog", err)
	}
}

func BenchmarkBuildIndex(b *testing.B) {
	mem := make([]byte, 256<<20)
	r := rand.New(rand.NewSource(3))
	for i := 0; i < len(mem); i += 2 * PageSize { // half the pages non-zero
		r.Read(mem[i : i+PageSize])
	}
	b.SetBytes(int64(len(mem)))
	for i := 0; i < b.N; i++ {
		x := BuildIndex(mem, nil, false)
		b.ReportMetric(float64(x.Bytes())/float64(len(mem)/PageSize), "index-bytes/page")
	}
}

var _ = bytes.Equal
