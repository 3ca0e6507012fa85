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
	disk   *diskSink // nil when the VM has no disk
}

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
		return p.disk.done()
	}
	return nil
}

func (p *pipeline) record(ctx context.Context, rec *format.Record) error {
	switch rec.Type {
	case format.TypeDevState:
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
	case format.TypeCopy, format.TypeDelta:
		return fmt.Errorf("%s record: this stream still refers to its base; pipe it through overlay-apply, which resolves copies and deltas", rec.Type)
	}
	return fmt.Errorf("unexpected %s record for vm-resume", rec.Type)
}

// finish tells the feeder that END verified and everything is written:
// the rest of the device state may go to QEMU.
func (p *pipeline) finish() { p.end() }
