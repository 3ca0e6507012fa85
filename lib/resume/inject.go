package resume

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"cloudlet/format"
	"cloudlet/lib/migstream"
	"cloudlet/lib/vm"
)

const (
	// chunkSize is the most page bytes one in-flight memory chunk holds.
	chunkSize = 1 << 20
	// chunksInFlight bounds the memory read from the stream but not yet
	// handed to QEMU: chunksInFlight*chunkSize bytes (32 MiB).
	chunksInFlight = 32
)

// memChunk is a run of memory records on its way to QEMU: data pages at off,
// or (data nil) zero pages covering zeroLen bytes at off.
type memChunk struct {
	off     uint64
	data    []byte
	zeroLen uint64
}

var chunkPool = sync.Pool{New: func() any { return make([]byte, chunkSize) }}

// page spool entry: be64 (offset | zero flag) then 4096 bytes unless zero.
const spoolZero = 1

// injectSink puts the pages into the RAM section of the incoming migration
// stream, which QEMU copies into the guest's RAM: the way for a VM whose
// RAM this process cannot write (plain RAM of a QEMU started by hand, or
// no ptrace access to QEMU). Pages read before the feeder wants any go to
// a spool file, so a stream whose device state comes late (after memory)
// cannot fill the channel while the feeder still waits for device state;
// after that they go through a bounded channel. For a diff stream (keep),
// every page also goes to a sparse scratch file, from which read serves
// COPY records; a full stream has none, so its pages are not copied twice.
type injectSink struct {
	g       *gate
	dir     string // run folder; "" for a temporary spool
	main    string // the RAM block's id
	spool   *os.File
	spoolW  *bufio.Writer
	scratch *os.File

	toChan    bool          // the page spool is complete: pages go through the channel
	ch        chan memChunk // closed by done
	chOnce    sync.Once
	injecting bool // the feeder asked for its first page (under g.mu)
	spoolDone bool // the page spool is flushed and complete (under g.mu)
}

func newInjectSink(g *gate, dir, main string, keep bool) (*injectSink, error) {
	s := &injectSink{g: g, dir: dir, main: main, ch: make(chan memChunk, chunksInFlight)}
	var err error
	if dir == "" {
		s.spool, err = os.CreateTemp("", "cloudlet-pages-")
	} else {
		s.spool, err = os.Create(filepath.Join(dir, "pages.spool"))
	}
	if err != nil {
		return nil, err
	}
	if keep {
		if s.scratch, err = os.CreateTemp(dir, "cloudlet-mem-scratch-"); err != nil {
			s.close()
			return nil, err
		}
		os.Remove(s.scratch.Name()) // open until close, gone after
	}
	s.spoolW = bufio.NewWriterSize(s.spool, 1<<20)
	return s, nil
}

func (s *injectSink) attach(*vm.Instance) error { return nil }

// tick closes the page spool once the feeder wants pages: from then on
// pages go through the channel.
func (s *injectSink) tick() error {
	if s.toChan {
		return nil
	}
	s.g.mu.Lock()
	inj := s.injecting
	s.g.mu.Unlock()
	if !inj {
		return nil
	}
	s.toChan = true
	return s.closeSpool()
}

// closeSpool flushes the page spool and tells the feeder it is complete.
func (s *injectSink) closeSpool() error {
	if s.spoolW != nil {
		if err := s.spoolW.Flush(); err != nil {
			return err
		}
		s.spoolW = nil
	}
	s.g.mu.Lock()
	s.spoolDone = true
	s.g.cond.Broadcast()
	s.g.mu.Unlock()
	return nil
}

func (s *injectSink) write(off uint64, data []byte) error {
	if s.scratch != nil {
		if _, err := s.scratch.WriteAt(data, int64(off)); err != nil {
			return err
		}
	}
	if s.toChan {
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
	var hb [8]byte
	for p := 0; p < len(data); p += format.PageSize {
		binary.BigEndian.PutUint64(hb[:], off+uint64(p))
		s.spoolW.Write(hb[:])
		if _, err := s.spoolW.Write(data[p : p+format.PageSize]); err != nil {
			return err
		}
	}
	return nil
}

func (s *injectSink) zero(off, n uint64) error {
	// The scratch file reads as zero where nothing was written, and each
	// page is written at most once in a stream.
	if s.toChan {
		return s.put(memChunk{off: off, zeroLen: n})
	}
	var hb [8]byte
	for p := uint64(0); p < n; p += format.PageSize {
		binary.BigEndian.PutUint64(hb[:], (off+p)|spoolZero)
		if _, err := s.spoolW.Write(hb[:]); err != nil {
			return err
		}
	}
	return nil
}

func (s *injectSink) read(off uint64, p []byte) error {
	if s.scratch == nil {
		return fmt.Errorf("COPY from the stream's memory in a full stream, which vm-resume does not keep; make the stream with mem-diff")
	}
	_, err := s.scratch.ReadAt(p, int64(off))
	if err == io.EOF {
		clear(p) // past the scratch file's end: never written
		return nil
	}
	return err
}

func (s *injectSink) put(c memChunk) error {
	select {
	case s.ch <- c:
		return nil
	case <-s.g.quit:
		return s.g.failure()
	}
}

// done ends the page source: the spool is complete and the channel closed.
func (s *injectSink) done() error {
	if err := s.closeSpool(); err != nil {
		return err
	}
	s.chOnce.Do(func() { close(s.ch) })
	return nil
}

func (s *injectSink) close() {
	if s.spool != nil {
		s.spool.Close()
		os.Remove(s.spool.Name())
	}
	if s.scratch != nil {
		s.scratch.Close()
	}
}

// pages yields the pages spooled before the feeder asked for pages, then
// the chunks arriving through the channel, until done (io.EOF) or abort.
func (s *injectSink) pages() (migstream.PageSource, func()) {
	var (
		spooled *bufio.Reader
		sf      *os.File
		opened  bool
		cur     memChunk
		pos     uint64
		page    = make([]byte, format.PageSize)
		hb      [8]byte
	)
	release := func() {
		if sf != nil {
			sf.Close()
		}
		if cur.data != nil {
			chunkPool.Put(cur.data[:cap(cur.data)])
			cur.data = nil
		}
	}
	next := func() (migstream.Page, error) {
		if !opened {
			opened = true
			g := s.g
			g.mu.Lock()
			s.injecting = true
			for !s.spoolDone && g.err == nil {
				g.cond.Wait()
			}
			aborted := g.err != nil
			g.mu.Unlock()
			if aborted {
				return migstream.Page{}, errAborted
			}
			f, err := os.Open(s.spool.Name())
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
			case c, ok := <-s.ch:
				if !ok {
					return migstream.Page{}, io.EOF
				}
				cur = c
			case <-s.g.quit:
				return migstream.Page{}, errAborted
			}
		}
	}
	return migstream.PageSourceFunc(next), release
}
