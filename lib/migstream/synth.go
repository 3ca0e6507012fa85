package migstream

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
)

// StreamWriter writes a synthetic migration stream piece by piece, for
// tests. It makes no attempt to be consistent: tests use it to build
// broken streams too. The first write error is kept and reported by Err.
type StreamWriter struct {
	w         io.Writer
	err       error
	lastBlock string
}

// NewStreamWriter returns a StreamWriter writing to w.
func NewStreamWriter(w io.Writer) *StreamWriter { return &StreamWriter{w: w} }

// Err returns the first write error.
func (s *StreamWriter) Err() error { return s.err }

// Raw writes b as is.
func (s *StreamWriter) Raw(b ...byte) {
	if s.err == nil {
		_, s.err = s.w.Write(b)
	}
}

// U8 writes one byte.
func (s *StreamWriter) U8(v byte) { s.Raw(v) }

// Be16 writes a big-endian uint16.
func (s *StreamWriter) Be16(v uint16) { s.Raw(binary.BigEndian.AppendUint16(nil, v)...) }

// Be32 writes a big-endian uint32.
func (s *StreamWriter) Be32(v uint32) { s.Raw(binary.BigEndian.AppendUint32(nil, v)...) }

// Be64 writes a big-endian uint64.
func (s *StreamWriter) Be64(v uint64) { s.Raw(binary.BigEndian.AppendUint64(nil, v)...) }

// Str writes a u8-length-prefixed string.
func (s *StreamWriter) Str(v string) {
	s.U8(byte(len(v)))
	s.Raw([]byte(v)...)
}

// Header writes "QEVM" and version 3.
func (s *StreamWriter) Header() {
	s.Be32(fileMagic)
	s.Be32(fileVersion)
}

// Configuration writes a configuration section with the machine name and,
// when caps is not empty, a configuration/capabilities subsection.
func (s *StreamWriter) Configuration(machine string, caps ...string) {
	s.U8(secConfiguration)
	s.Be32(uint32(len(machine)))
	s.Raw([]byte(machine)...)
	if len(caps) > 0 {
		s.U8(secSubsection)
		s.Str("configuration/capabilities")
		s.Be32(1)
		s.Be32(uint32(len(caps)))
		for _, c := range caps {
			s.Str(c)
		}
	}
}

// SectionStart writes a QEMU_VM_SECTION_START header.
func (s *StreamWriter) SectionStart(id uint32, name string, instance, version uint32) {
	s.U8(secStart)
	s.Be32(id)
	s.Str(name)
	s.Be32(instance)
	s.Be32(version)
}

// SectionPart writes a QEMU_VM_SECTION_PART header.
func (s *StreamWriter) SectionPart(id uint32) { s.U8(secPart); s.Be32(id) }

// SectionEnd writes a QEMU_VM_SECTION_END header.
func (s *StreamWriter) SectionEnd(id uint32) { s.U8(secEnd); s.Be32(id) }

// Footer writes a section footer.
func (s *StreamWriter) Footer(id uint32) { s.U8(secFooter); s.Be32(id) }

// MemSize writes the MEM_SIZE record and block list; guest addresses are
// written when withAddr is set (x-ignore-shared).
func (s *StreamWriter) MemSize(blocks []Block, withAddr bool) {
	var total uint64
	for _, b := range blocks {
		total += b.Length
	}
	s.Be64(total | flagMemSize)
	for _, b := range blocks {
		s.Str(b.ID)
		s.Be64(b.Length)
		if withAddr {
			s.Be64(b.Addr)
		}
	}
}

// Page writes a PAGE record (data nil: a ZERO record with fill), using
// CONTINUE when the block is the same as the previous page record's.
func (s *StreamWriter) Page(p Page) {
	flags := uint64(flagPage)
	if p.Data == nil {
		flags = flagZero
	}
	if p.Block == s.lastBlock {
		s.Be64(p.Offset | flags | flagContinue)
	} else {
		s.Be64(p.Offset | flags)
		s.Str(p.Block)
		s.lastBlock = p.Block
	}
	if p.Data == nil {
		s.U8(p.Fill)
	} else {
		s.Raw(p.Data...)
	}
}

// EOS writes the RAM end-of-section record.
func (s *StreamWriter) EOS() { s.Be64(flagEOS) }

// Full writes a QEMU_VM_SECTION_FULL device section with an opaque payload
// and its footer.
func (s *StreamWriter) Full(id uint32, name string, instance, version uint32, payload []byte) {
	s.U8(secFull)
	s.Be32(id)
	s.Str(name)
	s.Be32(instance)
	s.Be32(version)
	s.Raw(payload...)
	s.Footer(id)
}

// EOF writes QEMU_VM_EOF.
func (s *StreamWriter) EOF() { s.U8(secEOF) }

// VMDescription writes the trailing VM description.
func (s *StreamWriter) VMDescription(json string) {
	s.U8(secVMDescription)
	s.Be32(uint32(len(json)))
	s.Raw([]byte(json)...)
}

// SynthConfig describes a synthetic stream for Synth.
type SynthConfig struct {
	// Blocks is the block list; nil means DefaultSynthBlocks.
	Blocks []Block
	// IgnoreShared announces x-ignore-shared and writes guest addresses.
	IgnoreShared bool
	// Pages are written in order, spread over Parts PART sections and the
	// END section (QEMU sends none in the START section).
	Pages []Page
	// Parts is the number of PART sections (0 is allowed).
	Parts int
	// Devices is the number of device (FULL) sections after the RAM.
	Devices int
}

// DefaultSynthBlocks is a small block list like a pc machine's.
var DefaultSynthBlocks = []Block{
	{ID: "pc.ram", Length: 1 << 20},
	{ID: "/rom@etc/acpi/tables", Length: 128 << 10, Addr: 0},
	{ID: "pc.bios", Length: 256 << 10, Addr: 0xfffc0000},
}

// Synth builds a synthetic stream shaped like QEMU 7.2's: header,
// configuration, RAM start (block list, EOS), parts, end, device sections
// (whose payload contains a decoy end marker), EOF and a VM description.
func Synth(w io.Writer, cfg SynthConfig) error {
	blocks := cfg.Blocks
	if blocks == nil {
		blocks = DefaultSynthBlocks
	}
	s := NewStreamWriter(w)
	s.Header()
	if cfg.IgnoreShared {
		s.Configuration("pc-i440fx-7.2", CapIgnoreShared)
	} else {
		s.Configuration("pc-i440fx-7.2")
	}
	const ramID = 2
	s.SectionStart(ramID, ramSectionName, 0, ramSectionVersion)
	s.MemSize(blocks, cfg.IgnoreShared)
	s.EOS()
	s.Footer(ramID)
	pages := cfg.Pages
	for i := 0; i <= cfg.Parts; i++ {
		n := len(pages) / (cfg.Parts + 1 - i)
		if i == cfg.Parts {
			s.SectionEnd(ramID)
		} else {
			s.SectionPart(ramID)
		}
		for _, p := range pages[:n] {
			s.Page(p)
		}
		pages = pages[n:]
		s.EOS()
		s.Footer(ramID)
	}
	for i := range cfg.Devices {
		// A decoy end marker: 00 06 be32(3) '{' followed by non-'}'.
		payload := []byte{1, 2, 3, 0, 6, 0, 0, 0, 3, '{', 'x', 'y', 0, 0x7e}
		for j := range 40 {
			payload = append(payload, byte(i*7+j+1))
		}
		s.Full(uint32(3+i), "dev", uint32(i), 1, payload)
	}
	s.EOF()
	s.VMDescription(`{"page_size": 4096, "devices": []}`)
	return s.Err()
}

// SynthPages returns n pages at random places of blocks (deterministic for
// a seed); about one in four is a zero page.
func SynthPages(seed uint64, blocks []Block, n int) []Page {
	if blocks == nil {
		blocks = DefaultSynthBlocks
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	pages := make([]Page, n)
	for i := range pages {
		b := blocks[r.IntN(len(blocks))]
		p := Page{Block: b.ID, Offset: uint64(r.IntN(int(b.Length/PageSize))) * PageSize}
		if r.IntN(4) != 0 {
			p.Data = make([]byte, PageSize)
			for j := 0; j < PageSize; j += 8 {
				binary.LittleEndian.PutUint64(p.Data[j:], r.Uint64())
			}
		}
		pages[i] = p
	}
	return pages
}
