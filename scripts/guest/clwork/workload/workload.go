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
)

func (k Kind) String() string {
	if k == Text {
		return "text"
	}
	return "random"
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
func Files(mib int, seed uint64) []FileSpec {
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
		k := Text
		ext := "txt"
		if i%2 == 1 {
			k, ext = Random, "bin"
		}
		out = append(out, FileSpec{
			Name:  fmt.Sprintf("cl-%d-%03d.%s", seed, i, ext),
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
		if kind == Random {
			_, _ = rng.Read(chunk)
		} else {
			fillText(rng, chunk)
		}
		if _, err := bw.Write(chunk); err != nil {
			return err
		}
		size -= n
	}
	return bw.Flush()
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
func GenerateFill(w io.Writer, mib int, seed uint64) error {
	for i := 0; i < mib; i++ {
		k := Text
		if i%2 == 1 {
			k = Random
		}
		if err := Generate(w, k, MiB, seed, FillIndex+i); err != nil {
			return err
		}
	}
	return nil
}

// FillSum returns the hex sha256 of GenerateFill(mib, seed).
func FillSum(mib int, seed uint64) string {
	h := sha256.New()
	_ = GenerateFill(h, mib, seed)
	return fmt.Sprintf("%x", h.Sum(nil))
}
