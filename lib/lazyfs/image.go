package lazyfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"cloudlet/lib/spanset"
)

const (
	// sectorSize is the granularity of expected and arrived ranges.
	sectorSize = 512
	// pageSize is the granularity of Accesses.
	pageSize = 4096
)

// errUnmounted is returned by Fill and Zero after the image's mount was
// unmounted (its store is gone).
var errUnmounted = errors.New("lazyfs: image unmounted")

// Image is one read-only file of the mount.
//
// Its content is, per 512-byte sector: the data that arrived (Fill, Zero)
// if any; otherwise, for an expected sector, nothing yet (a read waits);
// otherwise the base. Expect, Fill, Zero, Fail, Pending and Accesses are
// safe while the kernel reads the file through the mount, and from several
// goroutines, but Fill and Zero calls on overlapping ranges must not run
// at the same time (which one wins is undefined).
type Image struct {
	name string
	size int64
	base io.ReaderAt

	mu       sync.Mutex
	pending  spanset.Set[int64] // sectors expected and not yet arrived
	arrived  spanset.Set[int64] // sectors whose content is in the store
	wake     chan struct{}
	failed   error              // Fail's error
	closed   bool               // unmounted: reads that would wait fail, Fill fails
	mounted  bool               // handed to Mount (an image serves one mount)
	storeDir string             // where the store is made (Mount's StoreDir)
	seen     spanset.Set[int64] // pages read through the mount
	accesses []pageRun
	seq      *atomic.Int64 // the mount's access counter (Mount sets it)

	// storeMu guards store against its closing at Unmount: I/O on the
	// store holds it shared.
	storeMu sync.RWMutex
	store   *os.File // unlinked sparse scratch file of size bytes; nil until the first Fill
}

// NewImage returns a file name of size bytes whose unexpected ranges read
// from base. base may be shorter than size (the rest reads as zero) or nil
// (all zero). name must be a plain file name.
func NewImage(name string, size int64, base io.ReaderAt) *Image {
	return &Image{name: name, size: size, base: base}
}

// sectors converts the byte range [off, off+n) to sectors, checking that it
// lies inside the image and is sector-aligned (its end may instead be the
// end of the image).
func (im *Image) sectors(op string, off, n int64) (int64, int64, error) {
	if off < 0 || n < 0 || off > im.size || n > im.size-off {
		return 0, 0, fmt.Errorf("lazyfs: %s %s [%d, +%d): outside the image (%d bytes)", op, im.name, off, n, im.size)
	}
	end := off + n
	if off%sectorSize != 0 || (end%sectorSize != 0 && end != im.size) {
		return 0, 0, fmt.Errorf("lazyfs: %s %s [%d, +%d): not %d-byte aligned", op, im.name, off, n, sectorSize)
	}
	return off / sectorSize, (end + sectorSize - 1) / sectorSize, nil
}

// Expect declares [off, off+n) as arriving later: reads of it block until
// Fill or Zero covered it. Call it before the mount serves reads of that
// range (in practice: before Mount, from the overlay's manifest). Ranges
// already arrived are not expected again. off and n must be multiples of
// 512 (off+n may be the image size instead).
func (im *Image) Expect(off, n int64) error {
	a, b, err := im.sectors("expect", off, n)
	if err != nil {
		return err
	}
	im.mu.Lock()
	defer im.mu.Unlock()
	im.arrived.Gaps(a, b, func(s, e int64) { im.pending.Add(s, e) })
	return nil
}

// Fill stores data that arrived (and was verified) at off and wakes the
// reads waiting for it. The range must lie inside the image and be
// sector-aligned like Expect's. Filling a range that was not expected is
// allowed: it then overrides the base, but only for reads that reach the
// mount afterwards: pages the kernel already cached (FOPEN_KEEP_CACHE) are
// not invalidated, so Fill of an unexpected range after it was read is
// undefined. Expect every range that will arrive, before Mount.
func (im *Image) Fill(off int64, data []byte) error {
	a, b, err := im.sectors("fill", off, int64(len(data)))
	if err != nil || a == b {
		return err
	}
	st, err := im.openStore()
	if err != nil {
		return err
	}
	_, err = st.WriteAt(data, off)
	im.storeMu.RUnlock()
	if err != nil {
		return fmt.Errorf("lazyfs: fill %s: %w", im.name, err)
	}
	im.arrive(a, b)
	return nil
}

// Zero is Fill with zeros, without storing them.
func (im *Image) Zero(off, n int64) error {
	a, b, err := im.sectors("zero", off, n)
	if err != nil || a == b {
		return err
	}
	im.mu.Lock()
	overwrite := im.arrived.Overlaps(a, b)
	im.mu.Unlock()
	if overwrite {
		// Data arrived there before: punch it out of the store. A
		// never-written part of the store is a hole already.
		st, err := im.openStore()
		if err != nil {
			return err
		}
		err = punch(st, off, n)
		im.storeMu.RUnlock()
		if err != nil {
			return fmt.Errorf("lazyfs: zero %s: %w", im.name, err)
		}
	} else if err := im.checkOpen(); err != nil {
		return err
	}
	im.arrive(a, b)
	return nil
}

func (im *Image) checkOpen() error {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return errUnmounted
	}
	return nil
}

// arrive marks sectors [a, b) arrived and wakes the waiting reads.
func (im *Image) arrive(a, b int64) {
	im.mu.Lock()
	im.pending.Remove(a, b)
	im.arrived.Add(a, b)
	im.broadcast()
	im.mu.Unlock()
}

// broadcast wakes every waiting read; im.mu is held.
func (im *Image) broadcast() {
	if im.wake != nil {
		close(im.wake)
		im.wake = nil
	}
}

// openStore returns the store, creating it on first use, with storeMu held
// shared: the caller releases it after its I/O.
func (im *Image) openStore() (*os.File, error) {
	for {
		im.storeMu.RLock()
		if im.store != nil {
			return im.store, nil
		}
		im.storeMu.RUnlock()
		if err := im.createStore(); err != nil {
			return nil, err
		}
	}
}

func (im *Image) createStore() error {
	im.mu.Lock()
	closed, dir := im.closed, im.storeDir
	im.mu.Unlock()
	if closed {
		return errUnmounted
	}
	im.storeMu.Lock()
	defer im.storeMu.Unlock()
	if im.store != nil {
		return nil
	}
	im.mu.Lock()
	closed = im.closed // Unmount's closeStore waits for storeMu
	im.mu.Unlock()
	if closed {
		return errUnmounted
	}
	if dir == "" {
		dir = os.TempDir()
	}
	f, err := os.CreateTemp(dir, ".lazyfs-*")
	if err != nil {
		return fmt.Errorf("lazyfs: store for %s: %w", im.name, err)
	}
	os.Remove(f.Name())
	if err := f.Truncate(im.size); err != nil {
		f.Close()
		return fmt.Errorf("lazyfs: store for %s: %w", im.name, err)
	}
	im.store = f
	return nil
}

// closeStore drops the store (at Unmount).
func (im *Image) closeStore() {
	im.storeMu.Lock()
	defer im.storeMu.Unlock()
	if im.store != nil {
		im.store.Close()
		im.store = nil
	}
}

const (
	fallocKeepSize  = 0x1 // FALLOC_FL_KEEP_SIZE
	fallocPunchHole = 0x2 // FALLOC_FL_PUNCH_HOLE
)

// punch turns [off, off+n) of f into zeros, as a hole where the file system
// can.
func punch(f *os.File, off, n int64) error {
	err := syscall.Fallocate(int(f.Fd()), fallocPunchHole|fallocKeepSize, off, n)
	if err != syscall.EOPNOTSUPP && err != syscall.ENOSYS {
		return err
	}
	zero := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

// Fail makes every read that waits, or will wait, for an expected range
// fail with EIO; reads of arrived or unexpected ranges still work. The
// first error is kept.
func (im *Image) Fail(err error) {
	if err == nil {
		err = errors.New("lazyfs: failed")
	}
	im.mu.Lock()
	if im.failed == nil {
		im.failed = err
	}
	im.broadcast()
	im.mu.Unlock()
}

// Pending returns the bytes expected and not yet arrived.
func (im *Image) Pending() int64 {
	im.mu.Lock()
	defer im.mu.Unlock()
	n := im.pending.Total() * sectorSize
	if tail := im.size % sectorSize; tail != 0 && im.pending.Overlaps(im.size/sectorSize, im.size/sectorSize+1) {
		n -= sectorSize - tail // the last sector is partial
	}
	return n
}

// Accesses returns the offsets (in bytes, multiples of 4096) of the pages
// in the order they were first read through the mount. The kernel reads
// whole readahead windows, so the list holds the pages around each touched
// page too, in the order the kernel asked for them; pages served from the
// page cache are not seen again.
func (im *Image) Accesses() []int64 {
	im.mu.Lock()
	defer im.mu.Unlock()
	n := int64(0)
	for _, r := range im.accesses {
		n += r.n
	}
	out := make([]int64, 0, n)
	for _, r := range im.accesses {
		for p := r.first; p < r.first+r.n; p++ {
			out = append(out, p*pageSize)
		}
	}
	return out
}

// pageRun is n pages from first, first read in this order; seq orders
// runs across the images of one mount.
type pageRun struct{ first, n, seq int64 }

// noteAccess records the first reads of the pages of [off, end), as runs
// (the kernel reads whole windows, so they are long).
func (im *Image) noteAccess(off, end int64) {
	a, b := off/pageSize, (end+pageSize-1)/pageSize
	im.seen.Gaps(a, b, func(s, e int64) {
		if k := len(im.accesses) - 1; k >= 0 && im.accesses[k].first+im.accesses[k].n == s {
			im.accesses[k].n += e - s
			return
		}
		var seq int64
		if im.seq != nil {
			seq = im.seq.Add(1)
		}
		im.accesses = append(im.accesses, pageRun{s, e - s, seq})
	})
	im.seen.Add(a, b)
}

// readAt fills dest with the content at off (dest must lie inside the
// image) once none of it is pending. It fails with EIO when the image
// failed or is unmounted while it waits for pending data, and with EINTR
// when ctx is done first.
func (im *Image) readAt(ctx context.Context, dest []byte, off int64, note bool) syscall.Errno {
	end := off + int64(len(dest))
	a, b := off/sectorSize, (end+sectorSize-1)/sectorSize
	im.mu.Lock()
	if note {
		im.noteAccess(off, end)
	}
	for im.pending.Overlaps(a, b) {
		if im.failed != nil || im.closed {
			im.mu.Unlock()
			return syscall.EIO
		}
		if im.wake == nil {
			im.wake = make(chan struct{})
		}
		wake := im.wake
		im.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return syscall.EINTR
		}
		im.mu.Lock()
	}
	// Nothing of [off, end) is pending now, and arrived sectors never
	// become pending again: the parts in the store stay there.
	type part struct {
		off, end int64
		stored   bool
	}
	var parts []part
	at := off
	im.arrived.Each(a, b, func(s, e int64) {
		s, e = max(s*sectorSize, off), min(e*sectorSize, end)
		if s > at {
			parts = append(parts, part{at, s, false})
		}
		parts = append(parts, part{s, e, true})
		at = e
	})
	if at < end {
		parts = append(parts, part{at, end, false})
	}
	im.mu.Unlock()

	for _, p := range parts {
		buf := dest[p.off-off : p.end-off]
		var err error
		if p.stored {
			err = im.readStore(buf, p.off)
		} else {
			err = im.readBase(buf, p.off)
		}
		if err != nil {
			return syscall.EIO
		}
	}
	return 0
}

// ReadAt reads what the image holds at [off, off+len(p)) for the process
// that serves it (a COPY of data that arrived): the arrived data and the
// base around it. It never waits: a range still pending is an error. It
// uses pread only, so it is safe in the serving process (see the package
// comment on faults).
func (im *Image) ReadAt(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if off < 0 || end > im.size || end < off {
		return 0, fmt.Errorf("lazyfs: read %s [%d, +%d): outside the image (%d bytes)", im.name, off, len(p), im.size)
	}
	a, b := off/sectorSize, (end+sectorSize-1)/sectorSize
	im.mu.Lock()
	if im.pending.Overlaps(a, b) {
		im.mu.Unlock()
		return 0, fmt.Errorf("lazyfs: read %s [%d, +%d): not arrived yet", im.name, off, len(p))
	}
	im.mu.Unlock()
	if errno := im.readAt(context.Background(), p, off, false); errno != 0 {
		return 0, fmt.Errorf("lazyfs: read %s [%d, +%d): %w", im.name, off, len(p), errno)
	}
	return len(p), nil
}

func (im *Image) readStore(buf []byte, off int64) error {
	im.storeMu.RLock()
	defer im.storeMu.RUnlock()
	if im.store == nil {
		// Only zeros arrived so far (or the mount is going away:
		// the read fails anyway).
		clear(buf)
		return nil
	}
	return readFull(im.store, buf, off)
}

func (im *Image) readBase(buf []byte, off int64) error {
	if im.base == nil {
		clear(buf)
		return nil
	}
	return readFull(im.base, buf, off)
}

// readFull reads len(buf) bytes at off; what lies past the end of r reads
// as zero.
func readFull(r io.ReaderAt, buf []byte, off int64) error {
	n, err := r.ReadAt(buf, off)
	if n == len(buf) {
		return nil
	}
	if err == io.EOF || err == nil {
		clear(buf[n:])
		return nil
	}
	return err
}
