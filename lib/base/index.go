package base

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync"

	"github.com/cespare/xxhash/v2"
)

// PageSize is the dedup granularity.
const PageSize = 4096

// WindowStep is the step of the optional extra disk windows.
const WindowStep = 512

// LocDisk marks a Loc in the base disk; otherwise it is in base memory.
const LocDisk = uint64(1) << 63

var zeroPage = make([]byte, PageSize)

// IsZero reports whether p is all zero bytes.
func IsZero(p []byte) bool {
	for len(p) >= PageSize {
		if !bytes.Equal(p[:PageSize], zeroPage) {
			return false
		}
		p = p[PageSize:]
	}
	return bytes.Equal(p, zeroPage[:len(p)])
}

type entry struct{ hash, loc uint64 }

// Index maps the xxhash64 of every non-zero 4 KiB page of base memory and
// 4 KiB block of the base disk to one location holding it (memory first,
// as the canonical copy). It costs 16 bytes per distinct page. A match is a
// candidate only: callers compare the bytes.
type Index struct {
	e       []entry
	buckets []uint32 // first entry whose hash has top bits >= i
	shift   uint
}

// BuildIndex hashes mem and disk at 4 KiB steps (disk also at 512-byte steps
// when windows is set, so content that is sector- but not 4 KiB-aligned on
// disk still matches) on all cores.
func BuildIndex(mem, disk []byte, windows bool) *Index {
	type job struct {
		buf        []byte
		flag       uint64
		start, end int // window start positions [start, end)
		step       int
	}
	var jobs []job
	const chunk = 64 << 20
	add := func(b []byte, flag uint64, step int) {
		for off := 0; off+PageSize <= len(b); off += chunk {
			jobs = append(jobs, job{b, flag, off, min(off+chunk, len(b)-PageSize+1), step})
		}
	}
	add(mem, 0, PageSize)
	diskStep := PageSize
	if windows {
		diskStep = WindowStep
	}
	add(disk, LocDisk, diskStep)

	parts := make([][]entry, len(jobs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	for i, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			var es []entry
			for o := j.start; o < j.end; o += j.step {
				p := j.buf[o : o+PageSize]
				if o%PageSize == 0 && IsZero(p) {
					o += PageSize - j.step // skip the windows that start inside an all-zero page
					continue
				}
				es = append(es, entry{xxhash.Sum64(p), j.flag | uint64(o)})
			}
			parts[i] = es
		}()
	}
	wg.Wait()
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	all := make([]entry, 0, n)
	for _, p := range parts {
		all = append(all, p...)
	}
	return newIndex(all)
}

func newIndex(all []entry) *Index {
	// Stable by location so that memory (no LocDisk bit, listed first) and
	// lower offsets win among equal hashes; then keep one entry per hash.
	slices.SortStableFunc(all, func(a, b entry) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
	all = slices.CompactFunc(all, func(a, b entry) bool { return a.hash == b.hash })
	x := &Index{e: all}
	bits := uint(0)
	for (1<<bits)*8 < len(all) && bits < 24 {
		bits++
	}
	x.shift = 64 - bits // a shift by 64 yields 0: one bucket
	nb := 1 << bits
	x.buckets = make([]uint32, nb+1)
	j := 0
	for b := 0; b < nb; b++ {
		for j < len(all) && all[j].hash>>x.shift < uint64(b) {
			j++
		}
		x.buckets[b] = uint32(j)
	}
	x.buckets[nb] = uint32(len(all))
	return x
}

// Lookup returns the location recorded for hash h.
func (x *Index) Lookup(h uint64) (loc uint64, ok bool) {
	if len(x.e) == 0 {
		return 0, false
	}
	b := h >> x.shift
	lo, hi := int(x.buckets[b]), int(x.buckets[b+1])
	es := x.e[lo:hi]
	i, found := slices.BinarySearchFunc(es, h, func(e entry, h uint64) int {
		switch {
		case e.hash < h:
			return -1
		case e.hash > h:
			return 1
		}
		return 0
	})
	if !found {
		return 0, false
	}
	return es[i].loc, true
}

// Len returns the number of distinct pages indexed.
func (x *Index) Len() int { return len(x.e) }

// Bytes returns the in-memory size of the index.
func (x *Index) Bytes() int { return len(x.e)*16 + len(x.buckets)*4 }

var indexMagic = [8]byte{'C', 'L', 'I', 'D', 'X', '0', '0', '1'}

// WriteFile stores the index (magic, count, then hash/loc pairs, little
// endian).
func (x *Index) WriteFile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.Write(indexMagic[:])
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:], uint64(len(x.e)))
	w.Write(b[:8])
	for _, e := range x.e {
		binary.LittleEndian.PutUint64(b[:], e.hash)
		binary.LittleEndian.PutUint64(b[8:], e.loc)
		w.Write(b[:])
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LoadIndex reads an index file written by WriteFile.
func LoadIndex(path string) (*Index, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	r := bufio.NewReaderSize(f, 1<<20)
	var head [16]byte
	if _, err := io.ReadFull(r, head[:]); err != nil || !bytes.Equal(head[:8], indexMagic[:]) {
		return nil, fmt.Errorf("%s: not an index file", path)
	}
	n := binary.LittleEndian.Uint64(head[8:])
	if n > uint64(st.Size()-16)/16 || (st.Size()-16)%16 != 0 {
		return nil, fmt.Errorf("%s: says %d entries but holds %d bytes", path, n, st.Size())
	}
	es := make([]entry, n)
	var b [16]byte
	for i := range es {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		es[i] = entry{binary.LittleEndian.Uint64(b[:]), binary.LittleEndian.Uint64(b[8:])}
	}
	return newIndex(es), nil
}
