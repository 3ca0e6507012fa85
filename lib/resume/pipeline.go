package resume

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"cloudlet/format"
	"cloudlet/lib/disk"
	"cloudlet/lib/migstream"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"
)

const (
	// chunkSize is the most page bytes one in-flight memory chunk holds.
	chunkSize = 1 << 20
	// chunksInFlight bounds the memory read from the stream but not yet
	// handed to QEMU: chunksInFlight*chunkSize bytes (32 MiB).
	chunksInFlight = 32
)

// errAborted is what the feeder sees when the stream turned out bad.
var errAborted = errors.New("resume aborted")

// memChunk is a run of memory records on its way to QEMU: data pages at off,
// or (data nil) zero pages covering zeroLen bytes at off.
type memChunk struct {
	off     uint64
	data    []byte
	zeroLen uint64
}

var chunkPool = sync.Pool{New: func() any { return make([]byte, chunkSize) }}

// spool takes a stream's records while QEMU takes the incoming migration.
//
// The reading side (read) appends DEVSTATE to a file in the run folder,
// sends memory pages to the feeder through a bounded channel (or, in a full
// stream with a memory file, writes them into the new RAM file), and writes
// disk extents into the qcow2 top layer through qemu-nbd. The feeding side
// (feed) starts QEMU, reads the device state as the file grows, and injects
// the pages after the RAM section's block list. The feeder's page source
// ends only after END verified and the disk is written and closed: only
// then does the rest of the device state reach QEMU, so the migration (and
// the disk's activation) completes no earlier, and the guest runs later
// still, after `cont`.
type spool struct {
	dir     string
	main    string
	header  *format.Header
	fileMem bool // memory goes straight into the new share=on RAM file
	top     string

	dev    *os.File // devstate spool, written by read
	mem    *os.File // RAM file (fileMem) or the spool of pages read before the feeder wanted any
	memW   *bufio.Writer
	nbd    *disk.Server
	toChan bool // read sends pages through the channel now (the page spool is complete)

	pages       chan memChunk // closed by finish
	quit        chan struct{} // closed by abort
	pagesOnce   sync.Once
	quitOnce    sync.Once
	mu          sync.Mutex // guards the fields below
	cond        *sync.Cond // signalled when they change
	devN        int64      // bytes in the devstate spool
	injecting   bool       // the feeder asked for its first page
	spoolDone   bool       // the page spool is flushed and complete
	ended       bool       // END verified and everything written
	err         error      // why the stream was abandoned (the first cause)
	errFromFeed bool       // err came from the feeder
}

func (s *spool) devPath() string  { return filepath.Join(s.dir, "devstate.spool") }
func (s *spool) memPath() string  { return filepath.Join(s.dir, vm.MemFileName) }
func (s *spool) pagePath() string { return filepath.Join(s.dir, "pages.spool") }
func (s *spool) removeSpool()     { os.Remove(s.devPath()); os.Remove(s.pagePath()) }

// open creates the spool files, and the RAM file QEMU maps when the stream
// is a full one with a memory file, before QEMU starts.
func (s *spool) open() error {
	s.cond = sync.NewCond(&s.mu)
	s.pages = make(chan memChunk, chunksInFlight)
	s.quit = make(chan struct{})
	var err error
	if s.dev, err = os.Create(s.devPath()); err != nil {
		return err
	}
	if s.fileMem {
		if s.mem, err = os.Create(s.memPath()); err != nil {
			return err
		}
		return s.mem.Truncate(int64(s.header.VM.MemSize))
	}
	if s.mem, err = os.Create(s.pagePath()); err != nil {
		return err
	}
	s.memW = bufio.NewWriterSize(s.mem, 1<<20)
	return nil
}

func (s *spool) close() {
	if s.dev != nil {
		s.dev.Close()
	}
	if s.mem != nil {
		s.mem.Close()
	}
	if s.nbd != nil {
		s.nbd.Close()
	}
}

// abort stops both sides: read at its next record, the feeder at its next
// step. The first cause is kept; fromFeed says which side it came from.
func (s *spool) abort(err error, fromFeed bool) {
	s.mu.Lock()
	if s.err == nil {
		s.err, s.errFromFeed = err, fromFeed
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	s.quitOnce.Do(func() { close(s.quit) })
}

// cause is the first error either side hit, and whether the feeder (QEMU's
// side) hit it.
func (s *spool) cause() (error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err, s.errFromFeed
}

// finish tells the feeder that END verified and the disk is written: the
// page source ends and the rest of the device state may go to QEMU.
func (s *spool) finish() {
	s.mu.Lock()
	s.ended = true
	s.cond.Broadcast()
	s.mu.Unlock()
	s.pagesOnce.Do(func() { close(s.pages) })
}

// page spool entry: be64 (offset | zero flag) then 4096 bytes unless zero.
const spoolZero = 1

// read consumes the stream up to its verified END. Disk writes are complete
// and flushed when it returns nil.
func (s *spool) read(ctx context.Context, r *format.Reader) error {
	var hb [8]byte
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		select {
		case <-s.quit:
			return s.failure() // the feeder failed: stop reading
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
		if err := s.switchToChan(); err != nil {
			return err
		}
		switch rec.Type {
		case format.TypeDevState:
			err = s.addDevState(rec.Payload)
		case format.TypeMem:
			off, data, _ := rec.DataRecord()
			switch {
			case s.fileMem:
				_, err = s.mem.WriteAt(data, int64(off))
			case s.toChan:
				err = s.send(off, data, 0)
			default:
				for p := 0; p < len(data) && err == nil; p += format.PageSize {
					binary.BigEndian.PutUint64(hb[:], off+uint64(p))
					s.memW.Write(hb[:])
					_, err = s.memW.Write(data[p : p+format.PageSize])
				}
			}
		case format.TypeMemZero:
			off, n, _ := rec.ZeroRecord()
			switch {
			case s.fileMem:
				// the new RAM file is zero there already
			case s.toChan:
				err = s.send(off, nil, n)
			default:
				for p := uint64(0); p < n && err == nil; p += format.PageSize {
					binary.BigEndian.PutUint64(hb[:], (off+p)|spoolZero)
					_, err = s.memW.Write(hb[:])
				}
			}
		case format.TypeDisk, format.TypeDiskZero:
			err = s.writeDisk(ctx, rec)
		case format.TypeCopy, format.TypeDelta:
			err = fmt.Errorf("%s record: this stream still refers to its base; pipe it through overlay-apply, which resolves copies and deltas", rec.Type)
		default:
			err = fmt.Errorf("unexpected %s record for vm-resume", rec.Type)
		}
		if err != nil {
			return err
		}
	}
	if err := s.closePageSpool(); err != nil {
		return err
	}
	if s.nbd != nil {
		if err := s.nbd.Client.Flush(); err != nil {
			return err
		}
		if err := s.nbd.Close(); err != nil {
			return err
		}
		s.nbd = nil
	}
	return nil
}

// switchToChan closes the page spool once the feeder wants pages: from
// then on read sends them through the channel. Until then pages go to the
// spool file, so a stream whose device state comes late (after memory)
// cannot fill the channel while the feeder still waits for device state.
func (s *spool) switchToChan() error {
	if s.toChan || s.fileMem {
		return nil
	}
	s.mu.Lock()
	inj := s.injecting
	s.mu.Unlock()
	if !inj {
		return nil
	}
	s.toChan = true
	return s.closePageSpool()
}

// closePageSpool flushes the page spool and tells the feeder it is complete.
func (s *spool) closePageSpool() error {
	if s.memW != nil {
		if err := s.memW.Flush(); err != nil {
			return err
		}
		s.memW = nil
	}
	s.mu.Lock()
	s.spoolDone = true
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// addDevState appends migration stream bytes to the devstate spool.
func (s *spool) addDevState(b []byte) error {
	if _, err := s.dev.Write(b); err != nil {
		return err
	}
	s.mu.Lock()
	s.devN += int64(len(b))
	s.cond.Broadcast()
	s.mu.Unlock()
	return nil
}

// send hands memory to the feeder in chunks of at most chunkSize bytes.
func (s *spool) send(off uint64, data []byte, zeroLen uint64) error {
	if data == nil {
		return s.put(memChunk{off: off, zeroLen: zeroLen})
	}
	for len(data) > 0 {
		n := min(len(data), chunkSize)
		buf := chunkPool.Get().([]byte)[:n]
		copy(buf, data[:n])
		if err := s.put(memChunk{off: off, data: buf}); err != nil {
			return err
		}
		off += uint64(n)
		data = data[n:]
	}
	return nil
}

func (s *spool) put(c memChunk) error {
	select {
	case s.pages <- c:
		return nil
	case <-s.quit:
		return s.failure()
	}
}

// failure is why the pipeline stopped, for the side that did not stop it.
func (s *spool) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	return errAborted
}

func (s *spool) writeDisk(ctx context.Context, rec *format.Record) error {
	if s.top == "" {
		return fmt.Errorf("%s record but the VM has no disk", rec.Type)
	}
	if s.nbd == nil {
		var err error
		if s.nbd, err = disk.Serve(ctx, s.top, "qcow2", false); err != nil {
			return err
		}
	}
	if rec.Type == format.TypeDisk {
		off, data, _ := rec.DataRecord()
		_, err := s.nbd.Client.WriteAt(data, int64(off))
		return err
	}
	off, n, _ := rec.ZeroRecord()
	return s.nbd.Client.WriteZeroes(int64(off), int64(n))
}

// devTail reads the devstate spool as read appends to it. At the end of
// what has arrived it waits; it reports io.EOF only after finish.
type devTail struct {
	s   *spool
	f   *os.File
	pos int64
}

func (t *devTail) Read(p []byte) (int, error) {
	s := t.s
	s.mu.Lock()
	for t.pos >= s.devN && !s.ended && s.err == nil {
		s.cond.Wait()
	}
	avail, ended, err := s.devN-t.pos, s.ended, s.err
	s.mu.Unlock()
	if err != nil {
		return 0, errAborted
	}
	if avail <= 0 && ended {
		return 0, io.EOF
	}
	n, rerr := t.f.ReadAt(p[:min(int64(len(p)), avail)], t.pos)
	t.pos += int64(n)
	if rerr == io.EOF && n > 0 {
		rerr = nil
	}
	return n, rerr
}

// pageSource yields the pages spooled before the feeder asked for pages,
// then the chunks arriving through the channel, until finish (io.EOF) or
// abort.
func (s *spool) pageSource() (migstream.PageSource, func()) {
	var (
		spooled *bufio.Reader
		sf      *os.File
		opened  bool
		cur     memChunk
		pos     uint64
		page    = make([]byte, format.PageSize)
		hb      [8]byte
	)
	done := func() {
		if sf != nil {
			sf.Close()
		}
		if cur.data != nil {
			chunkPool.Put(cur.data[:cap(cur.data)])
			cur.data = nil
		}
	}
	next := func() (migstream.Page, error) {
		if s.fileMem {
			// memory went into the RAM file; wait for the END all the same
			select {
			case _, ok := <-s.pages:
				if !ok {
					return migstream.Page{}, io.EOF
				}
				return migstream.Page{}, errors.New("memory chunk for a RAM file")
			case <-s.quit:
				return migstream.Page{}, errAborted
			}
		}
		if !opened {
			opened = true
			s.mu.Lock()
			s.injecting = true
			for !s.spoolDone && s.err == nil {
				s.cond.Wait()
			}
			aborted := s.err != nil
			s.mu.Unlock()
			if aborted {
				return migstream.Page{}, errAborted
			}
			f, err := os.Open(s.pagePath())
			if err != nil {
				return migstream.Page{}, err
			}
			sf, spooled = f, bufio.NewReaderSize(f, 1<<20)
		}
		if spooled != nil {
			_, err := io.ReadFull(spooled, hb[:])
			if err == nil {
				v := binary.BigEndian.Uint64(hb[:])
				if v&spoolZero != 0 {
					return migstream.Page{Block: s.main, Offset: v &^ spoolZero}, nil
				}
				if _, err := io.ReadFull(spooled, page); err != nil {
					return migstream.Page{}, err
				}
				return migstream.Page{Block: s.main, Offset: v, Data: page}, nil
			}
			if err != io.EOF {
				return migstream.Page{}, err
			}
			spooled = nil
		}
		for {
			if cur.data != nil && pos < uint64(len(cur.data)) {
				p := migstream.Page{Block: s.main, Offset: cur.off + pos, Data: cur.data[pos : pos+format.PageSize]}
				pos += format.PageSize
				return p, nil
			}
			if cur.data == nil && pos < cur.zeroLen {
				p := migstream.Page{Block: s.main, Offset: cur.off + pos}
				pos += format.PageSize
				return p, nil
			}
			if cur.data != nil {
				chunkPool.Put(cur.data[:cap(cur.data)])
			}
			cur, pos = memChunk{}, 0
			select {
			case c, ok := <-s.pages:
				if !ok {
					return migstream.Page{}, io.EOF
				}
				cur = c
			case <-s.quit:
				return migstream.Page{}, errAborted
			}
		}
	}
	return migstream.PageSourceFunc(next), done
}

// feedResult is what the feeder leaves behind.
type feedResult struct {
	in       *vm.Instance
	c        *qmpctl.Client
	ready    time.Time // QEMU up, QMP connected
	migrated time.Time // QEMU took the whole migration
	err      error
}

// feed starts QEMU, runs its incoming migration from the spool and waits
// for it to complete. On an error it aborts the spool so read stops too.
func (s *spool) feed(ctx context.Context, cfg vm.Config, ignoreShared bool) (res feedResult) {
	defer func() {
		if res.err != nil {
			s.abort(res.err, true)
		}
	}()
	in, err := vm.Start(ctx, cfg)
	if err != nil {
		res.err = err
		return res
	}
	res.in = in
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := qmpctl.Dial(qctx, in.QMPPath())
	cancel()
	if err != nil {
		res.err = fmt.Errorf("QMP of the resumed VM: %w", err)
		return res
	}
	res.c = c
	res.ready = time.Now()
	f, err := os.Open(s.devPath())
	if err != nil {
		res.err = err
		return res
	}
	defer f.Close()
	pages, done := s.pageSource()
	defer done()
	res.err = migrateIn(ctx, c, s.dir, ignoreShared, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := migstream.Inject(bufio.NewReaderSize(&devTail{s: s, f: f}, 256<<10), bw, pages); err != nil {
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
