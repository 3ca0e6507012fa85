package resume

import (
	"fmt"
	"io"
	"os"

	"cloudlet/lib/guestmem"
	"cloudlet/lib/migstream"
	"cloudlet/lib/vm"
)

// memSink is where the stream's memory goes. The reader calls write and
// zero (and read, to resolve a COPY from memory the stream already
// wrote), then done after END verified. The feeder calls attach once QEMU
// runs, then takes pages() into the RAM section of the incoming
// migration: the pages themselves, or none, the source then ending only
// after END so that the rest of the device state reaches QEMU after the
// memory is in place.
type memSink interface {
	attach(in *vm.Instance) error
	tick() error // once per record read: a chance to hand over spooled pages
	write(off uint64, data []byte) error
	zero(off, n uint64) error
	read(off uint64, p []byte) error
	done() error
	pages() (migstream.PageSource, func())
	close()
}

// endSource yields no pages and ends when the stream has ended.
func endSource(g *gate) migstream.PageSource {
	return migstream.PageSourceFunc(func() (migstream.Page, error) {
		if err := g.waitEnd(); err != nil {
			return migstream.Page{}, err
		}
		return migstream.Page{}, io.EOF
	})
}

// fileSink writes a full stream's memory into the new RAM file QEMU maps
// with share=on (created zero, so zero pages cost nothing).
type fileSink struct {
	g *gate
	f *os.File
}

func newFileSink(g *gate, path string, size int64) (*fileSink, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, err
	}
	return &fileSink{g: g, f: f}, nil
}

func (s *fileSink) attach(*vm.Instance) error { return nil }
func (s *fileSink) tick() error               { return nil }
func (s *fileSink) write(off uint64, data []byte) error {
	_, err := s.f.WriteAt(data, int64(off))
	return err
}
func (s *fileSink) zero(off, n uint64) error { return nil }
func (s *fileSink) read(off uint64, p []byte) error {
	_, err := s.f.ReadAt(p, int64(off))
	return err
}
func (s *fileSink) done() error                           { return nil }
func (s *fileSink) pages() (migstream.PageSource, func()) { return endSource(s.g), func() {} }
func (s *fileSink) close()                                { s.f.Close() }

// directSink writes pages straight into the RAM of the QEMU that maps the
// base memory file privately (lib/guestmem), before the guest runs. Until
// the feeder attached QEMU, the reader waits. If this process may not
// write QEMU's memory, it falls back to injecting the pages into the
// migration stream (injectSink).
type directSink struct {
	g        *gate
	dir      string // run folder
	main     string // the RAM block's id, for the fallback
	memPath  string
	size     int64
	ready    chan struct{} // closed by attach
	ram      *guestmem.RAM
	fallback *injectSink
	log      io.Writer // where the fallback is reported (nil: nowhere)
}

func (s *directSink) attach(in *vm.Instance) error {
	defer close(s.ready)
	ram, err := guestmem.Find(in.Pid, s.memPath, s.size)
	if err == nil {
		s.ram = ram
		return nil
	}
	if s.log != nil {
		fmt.Fprintf(s.log, "vm-resume: %v; injecting the pages through the migration stream instead (slower)\n", err)
	}
	s.fallback, err = newInjectSink(s.g, s.dir, s.main, true)
	if err != nil {
		return err
	}
	// Nothing was spooled (the reader waited for attach): pages go
	// through the channel from the first.
	s.fallback.toChan = true
	return s.fallback.closeSpool()
}

func (s *directSink) tick() error {
	if s.fallback != nil {
		return s.fallback.tick()
	}
	return nil
}

// wait blocks until attach decided; false if the pipeline stopped first.
func (s *directSink) wait() error {
	select {
	case <-s.ready:
		return nil
	case <-s.g.quit:
		return s.g.failure()
	}
}

func (s *directSink) write(off uint64, data []byte) error {
	if err := s.wait(); err != nil {
		return err
	}
	if s.fallback != nil {
		return s.fallback.write(off, data)
	}
	_, err := s.ram.WriteAt(data, int64(off))
	return err
}

func (s *directSink) zero(off, n uint64) error {
	if err := s.wait(); err != nil {
		return err
	}
	if s.fallback != nil {
		return s.fallback.zero(off, n)
	}
	return s.ram.Zero(int64(off), int64(n))
}

func (s *directSink) read(off uint64, p []byte) error {
	if err := s.wait(); err != nil {
		return err
	}
	if s.fallback != nil {
		return s.fallback.read(off, p)
	}
	_, err := s.ram.ReadAt(p, int64(off))
	return err
}

func (s *directSink) done() error {
	if s.fallback != nil {
		return s.fallback.done()
	}
	return nil
}

func (s *directSink) pages() (migstream.PageSource, func()) {
	if s.fallback != nil {
		return s.fallback.pages()
	}
	return endSource(s.g), func() {}
}

func (s *directSink) close() {
	if s.fallback != nil {
		s.fallback.close()
	}
}
