package workload

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
)

// MiB is one mebibyte.
const MiB = 1 << 20

// Kind is the flavour of generated content.
type Kind int

const (
	// Text is compressible, text-like content (words and newlines).
	Text Kind = iota
	// Random is incompressible, random-looking content.
	Random
	// App is program-like content: literals from a skewed byte alphabet
	// (zero and common x86 opcode bytes) mixed with copies of earlier runs
	// within 32 KiB, as in machine code and data sections. It compresses
	// about 3x, like installed binaries (16 MiB of it: 2.9x with zstd -3,
	// 3.1x with xz -9; Debian's /usr/bin/qemu-img: 2.4x and 3.1x).
	App
)

func (k Kind) String() string {
	switch k {
	case Text:
		return "text"
	case App:
		return "app"
	}
	return "random"
}

func (k Kind) ext() string {
	switch k {
	case Text:
		return "txt"
	case App:
		return "so"
	}
	return "bin"
}

// Mix is the sequence of kinds a writefiles or fillmem run cycles
// through, file by file or MiB by MiB.
type Mix []Kind

var (
	// Mixed alternates Text and Random: half the bytes incompressible. The
	// default.
	Mixed = Mix{Text, Random}
	// AppMix is all App content.
	AppMix = Mix{App}
)

// ParseMix returns the mix named "mixed" or "app".
func ParseMix(name string) (Mix, error) {
	switch name {
	case "mixed", "":
		return Mixed, nil
	case "app":
		return AppMix, nil
	}
	return nil, fmt.Errorf("unknown content %q (want mixed or app)", name)
}

// FileSpec describes one file written by WriteFiles.
type FileSpec struct {
	Name  string // base name inside the target folder
	Size  int64  // bytes
	Kind  Kind
	Index int // position, part of the content seed
}

// MaxFiles is the most files one writefiles run spreads its data over.
const MaxFiles = 8

// Files returns the files that "clwork writefiles --mib mib --seed seed"
// writes: min(mib, MaxFiles) files (at least one), alternating Text and
// Random content, sizes adding up to exactly mib MiB.
func Files(mib int, seed uint64) []FileSpec { return Mixed.Files(mib, seed) }

// Files returns the files of writefiles with this content mix: kinds
// cycle through m file by file.
func (m Mix) Files(mib int, seed uint64) []FileSpec {
	if mib <= 0 {
		return nil
	}
	n := mib
	if n > MaxFiles {
		n = MaxFiles
	}
	total := int64(mib) * MiB
	each := total / int64(n)
	var out []FileSpec
	for i := 0; i < n; i++ {
		size := each
		if i == n-1 {
			size = total - each*int64(n-1)
		}
		k := m[i%len(m)]
		out = append(out, FileSpec{
			Name:  fmt.Sprintf("cl-%d-%03d.%s", seed, i, k.ext()),
			Size:  size,
			Kind:  k,
			Index: i,
		})
	}
	return out
}

var words = []string{
	"cloudlet", "overlay", "synthesis", "virtual", "machine", "memory", "disk",
	"page", "block", "resume", "launch", "edge", "mobile", "offload", "latency",
	"bandwidth", "compress", "delta", "base", "image", "kernel", "guest",
	"host", "network", "serial", "console", "snapshot", "migrate", "stream",
	"chunk", "hash", "index", "the", "a", "of", "and", "to", "in", "is", "it",
	"for", "on", "with", "as", "at", "by", "from", "this", "that", "data",
	"file", "system", "process", "server", "client", "request", "reply",
	"state", "device", "buffer", "queue", "write", "read", "sync",
}

func newRNG(seed uint64, index int) *rand.ChaCha8 {
	var key [32]byte
	copy(key[:], "cloudlet-workload")
	binary.LittleEndian.PutUint64(key[16:], seed)
	binary.LittleEndian.PutUint64(key[24:], uint64(index))
	return rand.NewChaCha8(key)
}

// Generate writes size bytes of kind content for (seed, index) to w.
func Generate(w io.Writer, kind Kind, size int64, seed uint64, index int) error {
	rng := newRNG(seed, index)
	bw := bufio.NewWriterSize(w, 256<<10)
	buf := make([]byte, 64<<10)
	for size > 0 {
		n := int64(len(buf))
		if n > size {
			n = size
		}
		chunk := buf[:n]
		switch kind {
		case Random:
			_, _ = rng.Read(chunk)
		case App:
			fillApp(rng, chunk)
		default:
			fillText(rng, chunk)
		}
		if _, err := bw.Write(chunk); err != nil {
			return err
		}
		size -= n
	}
	return bw.Flush()
}

// appAlphabet is App's literal alphabet: 64 slots, a quarter of them zero,
// the rest common x86-64 opcode, ModRM and prefix bytes and a few ASCII
// letters (6 bits of entropy at most per literal).
var appAlphabet = [64]byte{
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0xff, 0xff, 0xff, 0xff, 0x48, 0x48, 0x48, 0x89, 0x89, 0x8b, 0x8b, 0xe8, 0x0f, 0x85, 0x84, 0x24,
	0x45, 0x31, 0xc0, 0xc3, 0x5d, 0x41, 0x54, 0x55, 0x53, 0x83, 0xec, 0x08, 0x10, 0x20, 0x01, 0x02,
	0x74, 0x75, 0xeb, 0x8d, 0x44, 0x4c, 0xf8, 0xc7, 'e', 't', 'a', 'o', 'n', 's', '_', '.',
}

// fillApp writes App content: runs of 8-71 literals from appAlphabet and,
// three times in eight once 256 bytes exist, copies of 8-135 bytes from up to
// 32 KiB back in b.
func fillApp(rng *rand.ChaCha8, b []byte) {
	i := 0
	for i < len(b) {
		r := rng.Uint64()
		if i >= 256 && r&7 < 3 {
			n := 8 + int(r>>1&127)
			src := i - 1 - int((r>>8)%uint64(min(i, 32<<10)))
			for k := 0; k < n && i < len(b); k++ {
				b[i] = b[src+k]
				i++
			}
			continue
		}
		n := 8 + int(r>>1&63)
		bits := rng.Uint64()
		for k := 0; k < n && i < len(b); k++ {
			if k%10 == 9 {
				bits = rng.Uint64()
			}
			b[i] = appAlphabet[bits&63]
			bits >>= 6
			i++
		}
	}
}

func fillText(rng *rand.ChaCha8, b []byte) {
	i := 0
	col := 0
	for i < len(b) {
		r := rng.Uint64()
		for j := 0; j < 8 && i < len(b); j++ {
			w := words[int(r&63)]
			r >>= 8
			i += copy(b[i:], w)
			col++
			if i < len(b) {
				if col%12 == 0 {
					b[i] = '\n'
				} else {
					b[i] = ' '
				}
				i++
			}
		}
	}
}

// Sum returns the hex sha256 of the content Generate produces.
func Sum(kind Kind, size int64, seed uint64, index int) string {
	h := sha256.New()
	_ = Generate(h, kind, size, seed, index)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// FillName is the file "clwork fillmem --seed seed" writes in its folder.
func FillName(seed uint64) string { return fmt.Sprintf("fill-%d", seed) }

// FillIndex is the content index fillmem uses; fill content is half text,
// half random, in 1 MiB stripes.
const FillIndex = 1 << 20

// GenerateFill writes mib MiB of fillmem content for seed to w: 1 MiB
// stripes alternating Text and Random.
func GenerateFill(w io.Writer, mib int, seed uint64) error { return Mixed.GenerateFill(w, mib, seed) }

// GenerateFill writes mib MiB of fillmem content with this mix: 1 MiB
// stripes cycling through m.
func (m Mix) GenerateFill(w io.Writer, mib int, seed uint64) error {
	for i := 0; i < mib; i++ {
		if err := Generate(w, m[i%len(m)], MiB, seed, FillIndex+i); err != nil {
			return err
		}
	}
	return nil
}

// FillSum returns the hex sha256 of GenerateFill(mib, seed).
func FillSum(mib int, seed uint64) string { return Mixed.FillSum(mib, seed) }

// FillSum returns the hex sha256 of m.GenerateFill(mib, seed).
func (m Mix) FillSum(mib int, seed uint64) string {
	h := sha256.New()
	_ = m.GenerateFill(h, mib, seed)
	return fmt.Sprintf("%x", h.Sum(nil))
}
