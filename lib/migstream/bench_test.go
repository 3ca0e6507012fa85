package migstream

import (
	"bytes"
	"io"
	"testing"
)

// benchPages is 64 MiB worth of distinct non-zero pages of one block.
func benchSetup(b *testing.B) (blocks []Block, pages []Page) {
	const n = 16384
	blocks = []Block{{ID: "pc.ram", Length: n * PageSize}, {ID: "pc.bios", Length: 256 << 10}}
	data := make([]byte, PageSize)
	for i := range data {
		data[i] = byte(i*31 + 1)
	}
	pages = make([]Page, n)
	for i := range pages {
		pages[i] = Page{Block: "pc.ram", Offset: uint64(i) * PageSize, Data: data}
	}
	return blocks, pages
}

func BenchmarkSplit(b *testing.B) {
	blocks, pages := benchSetup(b)
	stream := synth(b, SynthConfig{Blocks: blocks, Pages: pages, Parts: 2, Devices: 4})
	sink := PageSinkFunc(func(Page) error { return nil })
	b.SetBytes(int64(len(stream)))
	b.ResetTimer()
	for b.Loop() {
		if _, err := Split(bytes.NewReader(stream), io.Discard, sink); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkInject(b *testing.B) {
	blocks, pages := benchSetup(b)
	dev := synth(b, SynthConfig{Blocks: blocks, Parts: 2, Devices: 4})
	b.SetBytes(int64(len(pages)) * PageSize)
	b.ResetTimer()
	for b.Loop() {
		if err := Inject(bytes.NewReader(dev), io.Discard, SlicePages(pages)); err != nil {
			b.Fatal(err)
		}
	}
}
