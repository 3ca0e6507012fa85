package resume

import (
	"io"
	"os"
	"path/filepath"
)

// devSpool keeps the DEVSTATE bytes (QEMU's migration stream without the
// pages) in a file of the run folder: the reader appends, the feeder
// tails it into QEMU as it grows.
type devSpool struct {
	g *gate
	f *os.File
	n int64 // bytes written, under g.mu
}

func devSpoolPath(dir string) string { return filepath.Join(dir, "devstate.spool") }

func openDevSpool(g *gate, dir string) (*devSpool, error) {
	f, err := os.Create(devSpoolPath(dir))
	if err != nil {
		return nil, err
	}
	return &devSpool{g: g, f: f}, nil
}

// add appends migration stream bytes.
func (d *devSpool) add(b []byte) error {
	if _, err := d.f.Write(b); err != nil {
		return err
	}
	d.g.mu.Lock()
	d.n += int64(len(b))
	d.g.cond.Broadcast()
	d.g.mu.Unlock()
	return nil
}

func (d *devSpool) close() { d.f.Close() }

// tail reads the spool as add appends to it. At the end of what has
// arrived it waits; it reports io.EOF only after the gate's end (or, for
// early start, the end of the device state).
func (d *devSpool) tail() (io.ReadCloser, error) {
	f, err := os.Open(d.f.Name())
	if err != nil {
		return nil, err
	}
	return &devTail{d: d, f: f}, nil
}

type devTail struct {
	d   *devSpool
	f   *os.File
	pos int64
}

func (t *devTail) Read(p []byte) (int, error) {
	g := t.d.g
	g.mu.Lock()
	for t.pos >= t.d.n && !g.ended && !g.devEnded && g.err == nil {
		g.cond.Wait()
	}
	avail, ended, err := t.d.n-t.pos, g.ended || g.devEnded, g.err
	g.mu.Unlock()
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

func (t *devTail) Close() error { return t.f.Close() }
