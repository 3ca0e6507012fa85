package migstream

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// FuzzSplit feeds arbitrary bytes to Split (and, when that succeeds, the
// devstate to Inject); neither may panic, and Split must be able to split
// its own Inject output again.
func FuzzSplit(f *testing.F) {
	page := bytes.Repeat([]byte{0x5a}, PageSize)
	f.Add(synth(f, SynthConfig{Pages: []Page{{Block: "pc.ram", Data: page}, {Block: "pc.ram", Offset: PageSize}}, Parts: 1, Devices: 1}))
	f.Add(synth(f, SynthConfig{IgnoreShared: true, Pages: []Page{{Block: "pc.bios", Data: page}}, Devices: 2}))
	f.Add(synth(f, SynthConfig{}))
	f.Fuzz(func(t *testing.T, data []byte) {
		var dev bytes.Buffer
		var pages []Page
		sink := PageSinkFunc(func(p Page) error {
			if len(pages) < 64 {
				if p.Data != nil {
					p.Data = bytes.Clone(p.Data)
				}
				pages = append(pages, p)
			}
			return nil
		})
		info, err := Split(bytes.NewReader(data), &dev, sink)
		if err != nil {
			return
		}
		if dev.Len() > len(data) {
			t.Fatalf("devstate %d bytes from a %d-byte stream", dev.Len(), len(data))
		}
		var out bytes.Buffer
		if err := Inject(bytes.NewReader(dev.Bytes()), &out, SlicePages(pages)); err != nil {
			t.Fatalf("Inject into Split's devstate: %v", err)
		}
		info2, err := Split(bytes.NewReader(out.Bytes()), io.Discard, nil)
		if err != nil {
			t.Fatalf("Split of Inject's output: %v", err)
		}
		if len(info2.Blocks) != len(info.Blocks) || info2.Pages+info2.ZeroPages != uint64(len(pages)) {
			t.Fatalf("info changed: %+v vs %+v", info, info2)
		}
	})
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzSplit when
// MIGSTREAM_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("MIGSTREAM_WRITE_CORPUS") != "1" {
		t.Skip("set MIGSTREAM_WRITE_CORPUS=1 to regenerate the seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzSplit")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte{0xa5}, 64) // short pages keep seeds small
	page = append(page, make([]byte, PageSize-len(page))...)
	small := []Block{{ID: "pc.ram", Length: 4 * PageSize}, {ID: "pc.bios", Length: PageSize, Addr: 0xfffff000}}
	seeds := map[string][]byte{
		"plain":         synth(t, SynthConfig{Blocks: small, Pages: []Page{{Block: "pc.ram", Offset: PageSize, Data: page}, {Block: "pc.ram"}, {Block: "pc.bios", Fill: 1}}, Parts: 1, Devices: 1}),
		"ignore-shared": synth(t, SynthConfig{Blocks: small, IgnoreShared: true, Pages: []Page{{Block: "pc.bios", Data: page}}, Devices: 1}),
		"no-pages":      synth(t, SynthConfig{Blocks: small, Parts: 2}),
		"xbzrle": prefixed(func(s *StreamWriter) {
			s.SectionStart(2, "ram", 0, 4)
			s.MemSize(small, false)
			s.Be64(flagXBZRLE)
		}),
		"command": prefixed(func(s *StreamWriter) {
			s.U8(secCommand)
			s.Be16(1)
			s.Be16(0)
			s.SectionStart(2, "ram", 0, 4)
			s.MemSize(small, false)
			s.EOS()
		}),
	}
	for name, data := range seeds {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
