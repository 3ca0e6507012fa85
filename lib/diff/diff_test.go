package diff

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/delta"
)

const (
	memSize  = 1 << 20
	diskSize = 1<<20 + 1536 // the last disk block is partial
)

func vmDesc() format.VMDesc {
	return format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: memSize, DiskSize: diskSize, DiskFormat: "raw"}
}

func randPage(r *rand.Rand) []byte {
	p := make([]byte, Page)
	r.Read(p)
	return p
}

// fullStream writes a full stream of mem (absent zero pages omitted) and
// the disk ranges in diskRanges.
func fullStream(t *testing.T, vm format.VMDesc, mem, disk []byte, diskRanges [][2]uint64, baseID string) []byte {
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	if err := w.WriteHeader(&format.Header{Kind: format.KindFull, VM: vm, BaseID: baseID}); err != nil {
		t.Fatal(err)
	}
	w.WriteDevState([]byte("QEVM device state"))
	for off := 0; off < len(mem); off += Page {
		if !base.IsZero(mem[off : off+Page]) {
			w.WriteMem(uint64(off), mem[off:off+Page])
		}
	}
	for _, r := range diskRanges {
		if base.IsZero(disk[r[0]:r[1]]) {
			w.WriteDiskZero(r[0], r[1]-r[0])
		} else {
			w.WriteDisk(r[0], disk[r[0]:r[1]])
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func makeBase(t *testing.T, mem, disk []byte) *base.Base {
	dir := t.TempDir()
	img := filepath.Join(dir, "image.raw")
	if err := os.WriteFile(img, disk, 0o644); err != nil {
		t.Fatal(err)
	}
	vm := vmDesc()
	vm.DiskBase = base.SHA256Hex(disk)
	s := fullStream(t, vm, mem, disk, nil, "")
	bdir := filepath.Join(dir, "base")
	if _, err := base.Create(bdir, format.NewReader(bytes.NewReader(s)), base.CreateOptions{Name: "t", Image: img}); err != nil {
		t.Fatal(err)
	}
	b, err := base.Open(bdir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if err := b.Verify(); err != nil {
		t.Fatal(err)
	}
	return b
}

// apply reconstructs memory and disk from the base and a diff stream.
func apply(t *testing.T, b *base.Base, stream []byte) (mem, disk []byte, counts map[format.Type]int) {
	r := format.NewReader(bytes.NewReader(stream))
	h, err := r.Header()
	if err != nil {
		t.Fatal(err)
	}
	if !h.MemRelative || h.Kind != format.KindDiff || h.BaseID != b.ID() {
		t.Fatalf("header = %+v; want a mem_relative diff against %s", h, b.ID())
	}
	mem, disk = bytes.Clone(b.Mem), bytes.Clone(b.Disk)
	counts = map[format.Type]int{}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return mem, disk, counts
		}
		if err != nil {
			t.Fatal(err)
		}
		counts[rec.Type]++
		sp := map[uint8][]byte{format.SpaceMem: mem, format.SpaceDisk: disk}
		switch rec.Type {
		case format.TypeMem, format.TypeDisk:
			off, data, _ := rec.DataRecord()
			dst := mem
			if rec.Type == format.TypeDisk {
				dst = disk
			}
			copy(dst[off:], data)
		case format.TypeMemZero, format.TypeDiskZero:
			off, n, _ := rec.ZeroRecord()
			dst := mem
			if rec.Type == format.TypeDiskZero {
				dst = disk
			}
			clear(dst[off : off+n])
		case format.TypeCopy:
			c, _ := rec.CopyRecord()
			src := map[uint8][]byte{format.SourceBaseMem: b.Mem, format.SourceBaseDisk: b.Disk, format.SourceStreamMem: mem, format.SourceStreamDisk: disk}[c.Source]
			copy(sp[c.Space][c.Offset:c.Offset+c.Length], src[c.SourceOffset:c.SourceOffset+c.Length])
		case format.TypeDelta:
			d, _ := rec.DeltaRecord()
			bb := map[uint8][]byte{format.SpaceMem: b.Mem, format.SpaceDisk: b.Disk}[d.Space]
			if err := delta.Decode(d.Method, bb[d.Offset:d.Offset+d.Length], d.Delta, sp[d.Space][d.Offset:d.Offset+d.Length]); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func runStage(t *testing.T, in []byte, b *base.Base, space uint8, opt Options) ([]byte, *Stats) {
	var out bytes.Buffer
	w := format.NewWriter(&out)
	st, err := Run(format.NewReader(bytes.NewReader(in)), w, Config{Stage: "test", Space: space, Options: opt,
		Open: func(string) (*base.Base, error) { return base.Open(b.Dir) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), st
}

func TestDiffReconstructs(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	baseMem := make([]byte, memSize)
	baseDisk := make([]byte, diskSize)
	for i := 0; i < 128; i++ { // half of memory has content
		copy(baseMem[i*Page:], randPage(r))
	}
	for i := 0; i < 200; i++ {
		copy(baseDisk[i*Page:], randPage(r))
	}
	copy(baseDisk[diskSize-1536:], bytes.Repeat([]byte{7}, 1536))
	b := makeBase(t, baseMem, baseDisk)

	mem, disk := bytes.Clone(baseMem), bytes.Clone(baseDisk)
	clear(mem[3*Page : 5*Page])                     // pages that became zero
	copy(mem[200*Page:], baseMem[10*Page:11*Page])  // a page moved to another address
	copy(mem[201*Page:], baseDisk[50*Page:51*Page]) // page cache holding a disk block
	fresh := randPage(r)
	copy(mem[202*Page:], fresh)                               // new content...
	copy(mem[203*Page:], fresh)                               // ...and its duplicate
	mem[20*Page+100] ^= 1                                     // one byte changed
	copy(mem[230*Page:], fresh)                               // new data that disk will write too
	copy(disk[240*Page:], fresh)                              // disk block equal to a new memory page
	copy(disk[241*Page:], baseMem[30*Page:31*Page])           // disk block equal to base memory
	clear(disk[5*Page : 6*Page])                              // deleted file
	copy(disk[diskSize-1536:], bytes.Repeat([]byte{8}, 1536)) // partial last block
	disk[7*Page+4095] ^= 0xff
	ranges := [][2]uint64{{5 * Page, 6 * Page}, {7 * Page, 8 * Page}, {240 * Page, 242 * Page}, {diskSize - 1536, diskSize}, {100 * Page, 101 * Page}}

	vm := vmDesc()
	vm.DiskBase = b.Meta.DiskSHA
	full := fullStream(t, vm, mem, disk, ranges, b.ID())
	for _, mode := range []string{DeltaNone, DeltaXOR, DeltaOps, DeltaBest} {
		t.Run(mode, func(t *testing.T) {
			opt := Options{Delta: mode}
			d1, ms := runStage(t, full, b, format.SpaceMem, opt)
			d2, ds := runStage(t, d1, b, format.SpaceDisk, opt)
			gotMem, gotDisk, counts := apply(t, b, d2)
			if !bytes.Equal(gotMem, mem) {
				t.Errorf("memory differs after mem-diff + apply")
			}
			if !bytes.Equal(gotDisk, disk) {
				t.Errorf("disk differs after disk-diff + apply")
			}
			if ms.Zero != 2*Page || ms.CopyMem != Page || ms.CopyDisk != Page || ms.CopySelf != 2*Page {
				t.Errorf("mem stats = %+v; want 2 zero pages, 1 copy each from base mem and disk, 2 self copies", ms)
			}
			if ds.CopySelf != Page || ds.CopyMem != Page || ds.Zero != Page || ds.Unchanged != Page {
				t.Errorf("disk stats = %+v; want 1 self copy (from new memory), 1 base-memory copy, 1 zero, 1 unchanged", ds)
			}
			if mode != DeltaNone && counts[format.TypeDelta] == 0 {
				t.Errorf("delta mode %s wrote no DELTA (one-byte change should be one)", mode)
			}
			if mode == DeltaNone && counts[format.TypeDelta] != 0 {
				t.Errorf("delta mode none wrote DELTA records")
			}
		})
	}
	// disk-diff before mem-diff gives the same VM
	d1, _ := runStage(t, full, b, format.SpaceDisk, Options{})
	d2, _ := runStage(t, d1, b, format.SpaceMem, Options{})
	gotMem, gotDisk, _ := apply(t, b, d2)
	if !bytes.Equal(gotMem, mem) || !bytes.Equal(gotDisk, disk) {
		t.Errorf("disk-diff | mem-diff does not reconstruct the VM")
	}
}

func TestWrongBase(t *testing.T) {
	mem := make([]byte, memSize)
	disk := make([]byte, diskSize)
	b := makeBase(t, mem, disk)
	vm := vmDesc()
	vm.DiskBase = b.Meta.DiskSHA
	vm.MemSize = 2 * memSize
	full := fullStream(t, vm, make([]byte, 2*memSize), disk, nil, "")
	var out bytes.Buffer
	_, err := Run(format.NewReader(bytes.NewReader(full)), format.NewWriter(&out), Config{Stage: "t", Space: format.SpaceMem,
		Open: func(string) (*base.Base, error) { return base.Open(b.Dir) }})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte(fmt.Sprint(2*memSize))) {
		t.Errorf("Run with a 2 MiB VM on a 1 MiB base = %v; want an error naming the sizes", err)
	}
}
