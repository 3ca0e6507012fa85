package format_test

import (
	"bytes"
	"fmt"
	"io"
	"log"

	"cloudlet/format"
)

// A stage writes a header, records, and Close writes the END record.
func Example() {
	var stream bytes.Buffer
	w := format.NewWriter(&stream)
	h := &format.Header{Kind: format.KindFull, VM: format.VMDesc{
		Machine: "pc-i440fx-7.2", CPU: "qemu64", MemSize: 1 << 20, DiskSize: 1 << 20}}
	if err := w.WriteHeader(h); err != nil {
		log.Fatal(err)
	}
	w.WriteMem(0, bytes.Repeat([]byte{7}, format.PageSize))
	w.WriteDiskZero(0, 4096)
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r := format.NewReader(&stream)
	hdr, _ := r.Header()
	fmt.Println("kind:", hdr.Kind)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(rec.Type, len(rec.Payload))
	}
	fmt.Println("frames:", r.End().Frames)
	// Output:
	// kind: full
	// MEM 4104
	// DISK_ZERO 16
	// frames: 3
}

// A pass-through stage forwards every record it does not own.
func Example_passThrough() {
	var in, out bytes.Buffer
	w := format.NewWriter(&in)
	w.WriteHeader(&format.Header{Kind: format.KindFull, VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 4096}})
	w.WriteMem(0, make([]byte, 4096))
	w.Close()

	r := format.NewReader(&in)
	h, _ := r.Header()
	h.Producer = append(h.Producer, "example")
	pw := format.NewWriter(&out)
	pw.WriteHeader(h)
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			pw.WriteError("example", err.Error())
			log.Fatal(err)
		}
		pw.WriteRecord(rec)
	}
	fmt.Println(pw.Close())
	// Output: <nil>
}
