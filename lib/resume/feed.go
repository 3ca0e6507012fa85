package resume

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"cloudlet/lib/migstream"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"
)

// feedResult is what the feeder leaves behind.
type feedResult struct {
	in       *vm.Instance
	c        *qmpctl.Client
	ready    time.Time // QEMU up, QMP connected
	migrated time.Time // QEMU took the whole migration
	err      error
}

// feed starts QEMU, attaches the memory sink to it, runs its incoming
// migration from the device state spool and the sink's pages, and waits
// for it to complete. On an error it aborts the pipeline so the reader
// stops too.
func (p *pipeline) feed(ctx context.Context, start func(context.Context, vm.Config) (*vm.Instance, error), cfg vm.Config, ignoreShared bool) (res feedResult) {
	defer func() {
		if res.err != nil {
			p.abort(res.err, true)
		}
	}()
	in, err := start(ctx, cfg)
	if err != nil {
		res.err = err
		return res
	}
	res.in = in
	if res.err = p.mem.attach(in); res.err != nil {
		return res
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := qmpctl.Dial(qctx, in.QMPPath())
	cancel()
	if err != nil {
		res.err = fmt.Errorf("QMP of the resumed VM: %w", err)
		return res
	}
	res.c = c
	res.ready = time.Now()
	dev, err := p.dev.tail()
	if err != nil {
		res.err = err
		return res
	}
	defer dev.Close()
	pages, release := p.mem.pages()
	defer release()
	res.err = migrateIn(ctx, c, p.dir, ignoreShared, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := migstream.Inject(bufio.NewReaderSize(dev, 256<<10), bw, pages); err != nil {
			return err
		}
		return bw.Flush()
	})
	res.migrated = time.Now()
	return res
}

// migrateIn runs the incoming migration: QEMU listens on a unix socket in
// the run folder, feed writes the stream into it.
func migrateIn(ctx context.Context, c *qmpctl.Client, dir string, ignoreShared bool, feed func(w io.Writer) error) error {
	if err := c.SetMigrationCapabilities(ctx, map[string]bool{migstream.CapIgnoreShared: ignoreShared, "events": true}); err != nil {
		return err
	}
	sock := filepath.Join(dir, "incoming.sock")
	if err := c.MigrateIncoming(ctx, "unix:"+sock); err != nil {
		return fmt.Errorf("migrate-incoming: %w", err)
	}
	var conn net.Conn
	var err error
	for i := 0; i < 200; i++ {
		if conn, err = net.Dial("unix", sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("connecting to QEMU's incoming migration socket: %w", err)
	}
	ferr := feed(conn)
	conn.Close()
	if errors.Is(ferr, errAborted) {
		os.Remove(sock)
		return ferr
	}
	wctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	werr := c.WaitMigration(wctx)
	os.Remove(sock)
	if werr != nil {
		return fmt.Errorf("QEMU refused the device state: %w", werr)
	}
	if ferr != nil && !errors.Is(ferr, net.ErrClosed) {
		return fmt.Errorf("feeding the migration stream: %w", ferr)
	}
	return nil
}
