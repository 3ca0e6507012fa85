package handoff

import (
	"bytes"
	"io"
	"strconv"
	"testing"

	"cloudlet/format"
)

type memBase struct{ mem, disk []byte }

func (b memBase) ReadMemAt(p []byte, off int64) (int, error)  { return copy(p, b.mem[off:]), nil }
func (b memBase) ReadDiskAt(p []byte, off int64) (int, error) { return copy(p, b.disk[off:]), nil }

func fill(c byte) []byte { return bytes.Repeat([]byte{c}, format.PageSize) }

// TestTracker: a page or block goes out only when it differs from what the
// destination holds: the base at first, then the latest version sent; back
// to the base's content it goes out as a COPY from the base, and as a COPY
// from the stream when the destination holds it elsewhere; zero as a zero
// record. Records are coalesced while contiguous.
func TestTracker(t *testing.T) {
	const pages = 8
	b := memBase{mem: make([]byte, pages*format.PageSize), disk: make([]byte, pages*format.PageSize)}
	for i := range pages {
		copy(b.mem[i*format.PageSize:], fill(byte(10+i)))
		copy(b.disk[i*format.PageSize:], fill(byte(20+i)))
	}
	var buf bytes.Buffer
	w := format.NewWriter(&buf)
	h := &format.Header{Kind: format.KindDiff, BaseID: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", Producer: []string{"test"}, MemRelative: true, Live: true,
		VM: format.VMDesc{Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: pages * format.PageSize, RAMBlocks: []format.RAMBlock{{ID: "mem", Size: pages * format.PageSize}},
			DiskSize: pages * format.PageSize, DiskFormat: "raw", QEMUVersion: "7.2.0"}}
	if err := w.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
	tr := newTracker(w, b, pages*format.PageSize)
	P := uint64(format.PageSize)
	steps := []func() error{
		// Pass 1: every page shown; 0, 1 as the base, 2 and 3 changed (a
		// run), 4 zero.
		func() error { return tr.page(0, b.mem[:P]) },
		func() error { return tr.page(P, b.mem[P:2*P]) },
		func() error { return tr.page(2*P, fill(1)) },
		func() error { return tr.page(3*P, fill(2)) },
		func() error { return tr.page(4*P, make([]byte, P)) },
		func() error { return tr.block(0, fill(3)) },
		// Pass 2: 2 unchanged since sent, 3 back to the base, 0 changed.
		func() error { return tr.page(2*P, fill(1)) },
		func() error { return tr.page(3*P, b.mem[3*P:4*P]) },
		func() error { return tr.page(0, fill(4)) },
		func() error { return tr.block(0, b.disk[:P]) },
		// Content the destination holds elsewhere: copied from there.
		func() error { return tr.page(5*P, fill(1)) }, // as page 2
		func() error { return tr.block(P, fill(4)) },  // as page 0
		tr.flush,
	}
	for i, s := range steps {
		if err := s(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	w.Close()
	r := format.NewReader(&buf)
	if _, err := r.Header(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch rec.Type {
		case format.TypeMem, format.TypeDisk:
			off, data, _ := rec.DataRecord()
			got = append(got, rec.Type.String()+" "+itoa(off/P)+"+"+itoa(uint64(len(data))/P))
		case format.TypeMemZero, format.TypeDiskZero:
			off, n, _ := rec.ZeroRecord()
			got = append(got, rec.Type.String()+" "+itoa(off/P)+"+"+itoa(n/P))
		case format.TypeCopy:
			c, _ := rec.CopyRecord()
			cp := "COPY " + itoa(uint64(c.Space)) + "<-" + itoa(uint64(c.Source)) + " " + itoa(c.Offset/P) + "+" + itoa(c.Length/P)
			if c.Source >= format.SourceStreamMem {
				cp += " from " + itoa(c.SourceOffset/P)
			}
			got = append(got, cp)
		}
	}
	want := []string{"MEM 2+2", "MEM_ZERO 4+1", "DISK 0+1", "COPY 1<-1 3+1", "MEM 0+1", "COPY 2<-2 0+1", "COPY 1<-3 5+1 from 2", "COPY 2<-3 1+1 from 0"}
	if len(got) != len(want) {
		t.Fatalf("records %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("record %d: %q, want %q (all: %q)", i, got[i], want[i], got)
		}
	}
	if tr.memBytes != 3*P || tr.diskBytes != P {
		t.Errorf("bytes counted: mem %d, disk %d; want %d, %d", tr.memBytes, tr.diskBytes, 3*P, P)
	}
	if err := tr.page(pages*P, fill(1)); err == nil {
		t.Error("a page beyond the RAM: no error")
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }
