package resume

import (
	"context"
	"fmt"

	"cloudlet/lib/disk"
)

// diskSink writes the stream's disk records into the instance's qcow2 top
// layer, through qemu-nbd, which it starts at the first disk record.
type diskSink struct {
	top string
	nbd *disk.Server
}

func (d *diskSink) serve(ctx context.Context) error {
	if d.nbd != nil {
		return nil
	}
	var err error
	d.nbd, err = disk.Serve(ctx, d.top, "qcow2", false)
	return err
}

func (d *diskSink) write(ctx context.Context, off uint64, data []byte) error {
	if err := d.serve(ctx); err != nil {
		return err
	}
	_, err := d.nbd.Client.WriteAt(data, int64(off))
	return err
}

func (d *diskSink) zero(ctx context.Context, off, n uint64) error {
	if err := d.serve(ctx); err != nil {
		return err
	}
	return d.nbd.Client.WriteZeroes(int64(off), int64(n))
}

// read reads the disk as written so far (for a COPY from it).
func (d *diskSink) read(ctx context.Context, off uint64, p []byte) error {
	if err := d.serve(ctx); err != nil {
		return err
	}
	n, err := d.nbd.Client.ReadAt(p, int64(off))
	if err == nil && n != len(p) {
		err = fmt.Errorf("disk read of %d bytes at %d returned %d", len(p), off, n)
	}
	return err
}

// done flushes and closes the top layer: QEMU may open it now.
func (d *diskSink) done() error {
	if d.nbd == nil {
		return nil
	}
	if err := d.nbd.Client.Flush(); err != nil {
		return err
	}
	err := d.nbd.Close()
	d.nbd = nil
	return err
}

func (d *diskSink) close() {
	if d.nbd != nil {
		d.nbd.Close()
	}
}
