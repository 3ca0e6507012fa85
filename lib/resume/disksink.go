package resume

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"

	"cloudlet/lib/disk"
	"cloudlet/lib/qcow2"
)

// diskSink writes the stream's disk records straight into the instance's
// qcow2 top layer (lib/qcow2: one pwrite per extent, metadata at done),
// which QEMU opened at start while its disk is inactive and reads again
// when the migration completes.
type diskSink struct {
	w    *qcow2.Writer
	base io.Closer // the backing image's reader
	done bool
}

// newDiskSink creates the top layer at top over image (raw or qcow2) for a
// disk of size bytes.
func newDiskSink(ctx context.Context, top, image, format string, size int64) (*diskSink, error) {
	var base interface {
		io.ReaderAt
		io.Closer
	}
	switch format {
	case disk.FormatRaw:
		f, err := os.Open(image)
		if err != nil {
			return nil, err
		}
		base = f
	case disk.FormatQCOW2:
		base = &imageReader{ctx: ctx, image: image}
	default:
		return nil, fmt.Errorf("disk image %s: format %q, want raw or qcow2", image, format)
	}
	w, err := qcow2.Create(top, size, image, format, base)
	if err != nil {
		base.Close()
		return nil, err
	}
	return &diskSink{w: w, base: base}, nil
}

func (d *diskSink) write(_ context.Context, off uint64, data []byte) error {
	_, err := d.w.WriteAt(data, int64(off))
	return err
}

func (d *diskSink) zero(_ context.Context, off, n uint64) error {
	return d.w.WriteZeroes(int64(off), int64(n))
}

// read reads the disk as written so far (for a COPY from it).
func (d *diskSink) read(_ context.Context, off uint64, p []byte) error {
	n, err := d.w.ReadAt(p, int64(off))
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// finish writes the top layer's metadata and closes it: QEMU may activate
// the disk now.
func (d *diskSink) finish() error {
	d.done = true
	return d.w.Close()
}

func (d *diskSink) close() {
	if !d.done {
		d.w.Abort()
	}
	d.base.Close()
}

// imageReader reads a qcow2 image's guest view through a read-only
// qemu-nbd, started at the first read: the top layer needs it only to
// complete a subcluster the stream wrote in part (records not 2 KiB
// aligned), which our diff stages never write.
type imageReader struct {
	ctx   context.Context
	image string
	once  sync.Once
	srv   *disk.Server
	err   error
}

func (r *imageReader) ReadAt(p []byte, off int64) (int, error) {
	r.once.Do(func() { r.srv, r.err = disk.Serve(r.ctx, r.image, disk.FormatQCOW2, true) })
	if r.err != nil {
		return 0, r.err
	}
	return r.srv.Client.ReadAt(p, off)
}

func (r *imageReader) Close() error {
	if r.srv != nil {
		return r.srv.Close()
	}
	return nil
}
