package migstream

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

type pageKey struct {
	block string
	off   uint64
}

// collector is a PageSink that keeps copies of all pages.
type collector struct{ pages []Page }

func (c *collector) WritePage(p Page) error {
	if p.Data != nil {
		p.Data = bytes.Clone(p.Data)
	}
	c.pages = append(c.pages, p)
	return nil
}

// final maps each page place to its last content (nil data: fill byte).
func final(pages []Page) map[pageKey]Page {
	m := map[pageKey]Page{}
	for _, p := range pages {
		m[pageKey{p.Block, p.Offset}] = p
	}
	return m
}

func samePages(t *testing.T, got, want []Page) {
	t.Helper()
	g, w := final(got), final(want)
	if len(g) != len(w) {
		t.Fatalf("got %d distinct pages, want %d", len(g), len(w))
	}
	for k, wp := range w {
		gp, ok := g[k]
		if !ok {
			t.Fatalf("page %v missing", k)
		}
		if !bytes.Equal(gp.Data, wp.Data) || (gp.Data == nil) != (wp.Data == nil) || gp.Fill != wp.Fill {
			t.Fatalf("page %v differs", k)
		}
	}
}

func synth(t testing.TB, cfg SynthConfig) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Synth(&b, cfg); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRoundTrip(t *testing.T) {
	for _, ign := range []bool{false, true} {
		for _, parts := range []int{0, 1, 3} {
			t.Run(fmt.Sprintf("ignoreShared=%v/parts=%d", ign, parts), func(t *testing.T) {
				pages := SynthPages(uint64(parts)+1, nil, 200)
				pages = append(pages, Page{Block: "pc.ram", Offset: 0, Fill: 0xab})
				stream := synth(t, SynthConfig{IgnoreShared: ign, Pages: pages, Parts: parts, Devices: 3})
				wantDev := synth(t, SynthConfig{IgnoreShared: ign, Parts: parts, Devices: 3})

				var dev bytes.Buffer
				var c collector
				info, err := Split(bytes.NewReader(stream), &dev, &c)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dev.Bytes(), wantDev) {
					t.Fatalf("devstate (%d bytes) differs from the page-less stream (%d bytes)", dev.Len(), len(wantDev))
				}
				if len(c.pages) != len(pages) {
					t.Fatalf("got %d page records, want %d", len(c.pages), len(pages))
				}
				for i := range pages {
					if c.pages[i].Block != pages[i].Block || c.pages[i].Offset != pages[i].Offset || !bytes.Equal(c.pages[i].Data, pages[i].Data) || c.pages[i].Fill != pages[i].Fill {
						t.Fatalf("page record %d differs", i)
					}
				}
				if info.IgnoreShared != ign || len(info.Blocks) != len(DefaultSynthBlocks) {
					t.Fatalf("info %+v", info)
				}
				for i, b := range info.Blocks {
					want := DefaultSynthBlocks[i]
					if b.ID != want.ID || b.Length != want.Length || b.HasAddr != ign || (ign && b.Addr != want.Addr) {
						t.Fatalf("block %d: got %+v want %+v", i, b, want)
					}
				}
				if info.Pages+info.ZeroPages != uint64(len(pages)) || info.Machine != "pc-i440fx-7.2" {
					t.Fatalf("info %+v", info)
				}

				var out bytes.Buffer
				if err := Inject(bytes.NewReader(dev.Bytes()), &out, SlicePages(c.pages)); err != nil {
					t.Fatal(err)
				}
				var dev2 bytes.Buffer
				var c2 collector
				if _, err := Split(bytes.NewReader(out.Bytes()), &dev2, &c2); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(dev2.Bytes(), dev.Bytes()) {
					t.Fatal("devstate changed over Inject+Split")
				}
				samePages(t, c2.pages, pages)

				ri, err := ReadInfo(bytes.NewReader(out.Bytes()))
				if err != nil || len(ri.Blocks) != 3 || ri.TotalBytes != info.TotalBytes {
					t.Fatalf("ReadInfo: %+v %v", ri, err)
				}
			})
		}
	}
}

func TestTruncated(t *testing.T) {
	pages := SynthPages(7, nil, 4)
	stream := synth(t, SynthConfig{Pages: pages, Parts: 1, Devices: 2})
	var dev bytes.Buffer
	if _, err := Split(bytes.NewReader(stream), &dev, nil); err != nil {
		t.Fatal(err)
	}
	for i := range len(stream) {
		_, err := Split(bytes.NewReader(stream[:i]), io.Discard, nil)
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Split of the first %d of %d bytes: %v", i, len(stream), err)
		}
		var fe *FormatError
		if !errors.As(err, &fe) || fe.Offset > int64(i) {
			t.Fatalf("cut %d: error %v has no sane offset", i, err)
		}
	}
	ds := dev.Bytes()
	for i := range len(ds) {
		err := Inject(bytes.NewReader(ds[:i]), io.Discard, SlicePages(pages))
		if !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("Inject into the first %d of %d bytes: %v", i, len(ds), err)
		}
	}
}

// mutate builds a stream with the standard prefix and then custom bytes.
func prefixed(f func(s *StreamWriter)) []byte {
	var b bytes.Buffer
	s := NewStreamWriter(&b)
	s.Header()
	s.Configuration("pc-i440fx-7.2")
	f(s)
	return b.Bytes()
}

func ramStart(s *StreamWriter) {
	s.SectionStart(2, "ram", 0, 4)
	s.MemSize(DefaultSynthBlocks, false)
}

func TestBadStreams(t *testing.T) {
	page := make([]byte, PageSize)
	cases := []struct {
		name   string
		stream []byte
		want   string
	}{
		{"magic", []byte("QEVN\x00\x00\x00\x03"), "offset 0: bad magic 0x5145564e"},
		{"version", []byte("QEVM\x00\x00\x00\x02"), "offset 4: unsupported stream version 2"},
		{"empty", nil, "offset 0: reading file magic: unexpected EOF"},
		{"machine name", []byte("QEVM\x00\x00\x00\x03\x07\x7f\xff\xff\xff"), "offset 9: machine name length 2147483647 exceeds 256"},
		{"unknown section", prefixed(func(s *StreamWriter) { s.U8(0x42) }), "unknown section type 0x42"},
		{"eof before ram", prefixed(func(s *StreamWriter) { s.EOF() }), "QEMU_VM_EOF before any RAM section"},
		{"full before ram end", prefixed(func(s *StreamWriter) { ramStart(s); s.EOS(); s.Full(3, "dev", 0, 1, nil) }), "QEMU_VM_SECTION_FULL) before the end of the RAM section"},
		{"other iterable", prefixed(func(s *StreamWriter) { s.SectionStart(1, "block", 0, 1) }), `iterable section "block" (id 1) before the end of the RAM section is not supported`},
		{"other part", prefixed(func(s *StreamWriter) { ramStart(s); s.EOS(); s.SectionPart(9) }), "for section id 9, not the RAM section (id 2)"},
		{"ram version", prefixed(func(s *StreamWriter) { s.SectionStart(2, "ram", 0, 3) }), "RAM section version 3, want 4"},
		{"huge ram", prefixed(func(s *StreamWriter) { s.SectionStart(2, "ram", 0, 4); s.Be64(1<<41 | flagMemSize) }), "total RAM size 2199023255552 exceeds 1099511627776"},
		{"block too long", prefixed(func(s *StreamWriter) {
			s.SectionStart(2, "ram", 0, 4)
			s.Be64(1<<20 | flagMemSize)
			s.Str("pc.ram")
			s.Be64(2 << 20)
		}), `RAM block "pc.ram" length 0x200000 exceeds the 0x100000 bytes left`},
		{"unaligned block", prefixed(func(s *StreamWriter) {
			s.SectionStart(2, "ram", 0, 4)
			s.Be64(1<<20 | flagMemSize)
			s.Str("pc.ram")
			s.Be64(100)
		}), `RAM block "pc.ram" length 0x64 is not a positive multiple of 4096`},
		{"too many blocks", prefixed(func(s *StreamWriter) {
			s.SectionStart(2, "ram", 0, 4)
			s.Be64(1<<30 | flagMemSize)
			for i := range MaxBlocks + 1 {
				s.Str(fmt.Sprint("b", i))
				s.Be64(PageSize)
			}
		}), "more than 4096 RAM blocks"},
		{"unknown flag", prefixed(func(s *StreamWriter) {
			ramStart(s)
			s.Page(Page{Block: "pc.ram", Data: page})
			s.Be64(0x1000 | 0x400)
		}), `unknown RAM flags 0x400 (after a page of block "pc.ram")`},
		{"xbzrle", prefixed(func(s *StreamWriter) { ramStart(s); s.Be64(flagXBZRLE) }), "XBZRLE page record (flags 0x40) is not supported"},
		{"compress", prefixed(func(s *StreamWriter) { ramStart(s); s.Be64(flagCompressPage | flagContinue) }), "compressed page record (flags 0x120) is not supported"},
		{"hook", prefixed(func(s *StreamWriter) { ramStart(s); s.Be64(flagHook) }), "RDMA hook record"},
		{"unknown block", prefixed(func(s *StreamWriter) { ramStart(s); s.Page(Page{Block: "vga.vram", Data: page}) }), `page record for unknown RAM block "vga.vram"`},
		{"continue first", prefixed(func(s *StreamWriter) { ramStart(s); s.Be64(flagPage | flagContinue) }), "CONTINUE page record without a previous block"},
		{"page beyond", prefixed(func(s *StreamWriter) { ramStart(s); s.Page(Page{Block: "pc.bios", Offset: 256 << 10, Data: page}) }), `page offset 0x40000 beyond RAM block "pc.bios" of length 0x40000`},
		{"page before memsize", prefixed(func(s *StreamWriter) { s.SectionStart(2, "ram", 0, 4); s.Page(Page{Block: "pc.ram", Data: page}) }), "page record before the MEM_SIZE block list"},
		{"postcopy", prefixed(func(s *StreamWriter) {
			s.U8(secCommand)
			s.Be16(cmdPostcopyAdvise)
			s.Be16(16)
			s.Be64(4096)
			s.Be64(4096)
		}), "postcopy-ram stream"},
		{"footer", prefixed(func(s *StreamWriter) { ramStart(s); s.EOS(); s.Footer(5) }), "section footer for id 5, want 2"},
		{"config subsection", []byte("QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x01x\x05\x03abc\x00\x00\x00\x01"), `unknown configuration subsection "abc"`},
		{"no trailer", prefixed(func(s *StreamWriter) {
			ramStart(s)
			s.EOS()
			s.SectionEnd(2)
			s.EOS()
			s.Full(3, "dev", 0, 1, []byte{1})
			s.EOF()
		}), "stream does not end with QEMU_VM_EOF and a VM description"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Split(bytes.NewReader(c.stream), io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "migstream: offset ") {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestInjectValidation(t *testing.T) {
	dev := synth(t, SynthConfig{Parts: 1, Devices: 1})
	page := make([]byte, PageSize)
	cases := []struct {
		p    Page
		want string
	}{
		{Page{Block: "nope", Data: page}, `RAM block "nope" is not in the stream's block list`},
		{Page{Block: "pc.bios", Offset: 256 << 10, Data: page}, "offset 0x40000 is not a page inside"},
		{Page{Block: "pc.ram", Offset: 100, Data: page}, "offset 0x64 is not a page inside"},
		{Page{Block: "pc.ram", Offset: ^uint64(0) &^ flagMask}, "is not a page inside"},
		{Page{Block: "pc.ram", Data: page[:10]}, "10 bytes of data, want 4096"},
	}
	for _, c := range cases {
		err := Inject(bytes.NewReader(dev), io.Discard, SlicePages([]Page{{Block: "pc.ram", Data: page}, c.p}))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("page %+v: got %v, want %q", c.p.Offset, err, c.want)
		}
	}
	srcErr := errors.New("boom")
	err := Inject(bytes.NewReader(dev), io.Discard, PageSourceFunc(func() (Page, error) { return Page{}, srcErr }))
	if !errors.Is(err, srcErr) {
		t.Errorf("source error: %v", err)
	}
	sinkErr := errors.New("full")
	stream := synth(t, SynthConfig{Pages: SynthPages(1, nil, 3)})
	_, err = Split(bytes.NewReader(stream), io.Discard, PageSinkFunc(func(Page) error { return sinkErr }))
	if !errors.Is(err, sinkErr) {
		t.Errorf("sink error: %v", err)
	}
}

// An x-ignore-shared stream straight from QEMU keeps its own (ROM) page
// records; injected pages come before them.
func TestInjectKeepsExistingPages(t *testing.T) {
	own := []Page{{Block: "pc.bios", Offset: 0, Data: bytes.Repeat([]byte{7}, PageSize)}}
	stream := synth(t, SynthConfig{IgnoreShared: true, Pages: own, Devices: 1})
	inj := []Page{
		{Block: "pc.bios", Offset: 0, Data: bytes.Repeat([]byte{1}, PageSize)},
		{Block: "pc.ram", Offset: 4096, Data: bytes.Repeat([]byte{2}, PageSize)},
	}
	var out bytes.Buffer
	if err := Inject(bytes.NewReader(stream), &out, SlicePages(inj)); err != nil {
		t.Fatal(err)
	}
	var c collector
	if _, err := Split(bytes.NewReader(out.Bytes()), io.Discard, &c); err != nil {
		t.Fatal(err)
	}
	samePages(t, c.pages, append(inj, own...))
}
