package resume

import (
	"context"
	"fmt"
	"io"
	"os"

	"cloudlet/format"
)

// pipeline takes a stream's records while QEMU takes the incoming
// migration. Each job is a room of its own:
//
//   - this file: the reader, which dispatches each record;
//   - devstate.go: the DEVSTATE spool, which the feeder tails into QEMU;
//   - memsink.go, inject.go: where memory goes (straight into QEMU's RAM,
//     into a new RAM file, or into the migration stream);
//   - disksink.go: the disk's qcow2 top layer;
//   - feed.go: the feeder, which starts QEMU and runs its incoming
//     migration;
//   - gate.go: what both sides share (abort, end).
//
// The feeder's page source ends only after END verified and the memory and
// disk are written and closed: only then does the rest of the device state
// reach QEMU, so the migration (and the disk's activation) completes no
// earlier, and the guest runs later still, after `cont`.
type pipeline struct {
	gate
	dir    string
	header *format.Header
	dev    *devSpool
	mem    memSink
	disk   diskWriter // nil when the VM has no disk
	base   baseReader // nil for a full stream
	buf    []byte     // for COPY
	// early: the guest runs before the stream ends, so the device state
	// ends at the first other record after it (early.go).
	early     bool
	sawDev    bool        // a DEVSTATE was read
	data      bool        // a record other than DEVSTATE was read after one
	firstData format.Type // its type
}

// diskWriter is where the stream's disk records go: the qcow2 top layer
// (diskSink), or the image served on demand (lazyDisk, early start).
type diskWriter interface {
	write(ctx context.Context, off uint64, data []byte) error
	zero(ctx context.Context, off, n uint64) error
	read(ctx context.Context, off uint64, p []byte) error // what was written (for a COPY)
	finish() error                                        // after END verified
	close()
}

// baseReader reads a base's memory and disk images (lib/base.Base).
type baseReader interface {
	ReadMemAt(p []byte, off int64) (int, error)
	ReadDiskAt(p []byte, off int64) (int, error)
}

// copyChunk is the most a COPY moves at once.
const copyChunk = 1 << 20

// open creates the device state spool; mem (and disk) are set by the
// caller.
func (p *pipeline) open() error {
	p.init()
	var err error
	p.dev, err = openDevSpool(&p.gate, p.dir)
	return err
}

func (p *pipeline) close() {
	if p.dev != nil {
		p.dev.close()
		os.Remove(devSpoolPath(p.dir))
	}
	if p.mem != nil {
		p.mem.close()
	}
	if p.disk != nil {
		p.disk.close()
	}
}

// read consumes the stream up to its verified END. Memory and disk writes
// are complete and the top layer closed when it returns nil.
func (p *pipeline) read(ctx context.Context, r *format.Reader) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		select {
		case <-p.quit:
			return p.failure() // the feeder failed: stop reading
		default:
		}
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		if skip, err := format.CheckKnown(rec); err != nil {
			return err
		} else if skip {
			continue
		}
		if err := p.mem.tick(); err != nil {
			return err
		}
		if err := p.record(ctx, rec); err != nil {
			return err
		}
	}
	if err := p.mem.done(); err != nil {
		return err
	}
	if p.disk != nil {
		return p.disk.finish()
	}
	return nil
}

func (p *pipeline) record(ctx context.Context, rec *format.Record) error {
	if p.early && p.sawDev && rec.Type != format.TypeDevState && !p.data {
		p.data, p.firstData = true, rec.Type
		p.endDev()
	}
	switch rec.Type {
	case format.TypeDevState:
		if p.data && p.early {
			return fmt.Errorf("DEVSTATE after a %s record: early start needs the whole device state first (as vm-capture writes it)", p.firstData)
		}
		p.sawDev = true
		return p.dev.add(rec.Payload)
	case format.TypeMem:
		off, data, _ := rec.DataRecord()
		return p.mem.write(off, data)
	case format.TypeMemZero:
		off, n, _ := rec.ZeroRecord()
		return p.mem.zero(off, n)
	case format.TypeDisk, format.TypeDiskZero:
		if p.disk == nil {
			return fmt.Errorf("%s record but the VM has no disk", rec.Type)
		}
		if rec.Type == format.TypeDisk {
			off, data, _ := rec.DataRecord()
			return p.disk.write(ctx, off, data)
		}
		off, n, _ := rec.ZeroRecord()
		return p.disk.zero(ctx, off, n)
	case format.TypeCopy:
		return p.copy(ctx, rec)
	case format.TypeManifest:
		return nil // the validator holds the stream to it; early start reads it first
	case format.TypeDelta:
		return fmt.Errorf("%s record: this stream still refers to its base; pipe it through overlay-apply, which resolves deltas", rec.Type)
	}
	return fmt.Errorf("unexpected %s record for vm-resume", rec.Type)
}

// copy resolves a COPY record (the validator checked its ranges): its
// bytes come from the base or from what the stream already wrote, and go
// where any other record's would.
func (p *pipeline) copy(ctx context.Context, rec *format.Record) error {
	c, err := rec.CopyRecord()
	if err != nil {
		return err
	}
	if (c.Source == format.SourceBaseMem || c.Source == format.SourceBaseDisk) && p.base == nil {
		return fmt.Errorf("COPY from the base in a stream that has none")
	}
	if (c.Space == format.SpaceDisk || c.Source == format.SourceStreamDisk) && p.disk == nil {
		return fmt.Errorf("COPY to or from the disk but the VM has no disk")
	}
	if p.buf == nil {
		p.buf = make([]byte, copyChunk)
	}
	for done := uint64(0); done < c.Length; {
		b := p.buf[:min(c.Length-done, copyChunk)]
		from, to := c.SourceOffset+done, c.Offset+done
		switch c.Source {
		case format.SourceBaseMem:
			err = readFull(p.base.ReadMemAt, b, from, "base memory")
		case format.SourceBaseDisk:
			err = readFull(p.base.ReadDiskAt, b, from, "base disk")
		case format.SourceStreamMem:
			err = p.mem.read(from, b)
		case format.SourceStreamDisk:
			err = p.disk.read(ctx, from, b)
		default:
			err = fmt.Errorf("COPY source %d", c.Source)
		}
		if err == nil {
			if c.Space == format.SpaceMem {
				err = p.mem.write(to, b)
			} else {
				err = p.disk.write(ctx, to, b)
			}
		}
		if err != nil {
			return fmt.Errorf("COPY of %d bytes from source %d at %d to space %d at %d: %w", len(b), c.Source, from, c.Space, to, err)
		}
		done += uint64(len(b))
	}
	return nil
}

func readFull(read func([]byte, int64) (int, error), b []byte, off uint64, what string) error {
	n, err := read(b, int64(off))
	if n == len(b) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("reading %d bytes of the %s at %d: %w", len(b), what, off, err)
}

// finish tells the feeder that END verified and everything is written:
// the rest of the device state may go to QEMU.
func (p *pipeline) finish() { p.end() }
