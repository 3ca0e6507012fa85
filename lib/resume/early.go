package resume

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/instance"
	"cloudlet/lib/lazyfs"
	"cloudlet/lib/migstream"
	"cloudlet/lib/qcow2"
	"cloudlet/lib/vm"
)

// Early start (vm-resume --early-start): the guest runs before the stream
// has arrived. This process serves the instance's memory and disk images
// from a FUSE mount in the run folder (lib/lazyfs): the base's bytes, plus
// the records that arrived; a read of a range the stream's MANIFEST
// promised and that has not arrived blocks until it does. QEMU maps the
// memory image privately (share=off) and reads the disk through a fresh
// qcow2 top layer whose backing file is the disk image. The device state
// goes in through the incoming migration as soon as it arrived (it comes
// first), then `cont`; the records after it go into the images as they
// arrive.
//
// A record is served only after its frame's check verified (format.Reader)
// and the validator found it inside the MANIFEST; overlay-apply checked the
// segment it came from against the overlay's manifest (and, for a signed
// head, against the signature). If the stream turns out bad after the guest
// started (a corrupt or missing tail, a record outside the manifest, a
// promised range never written), the images fail (waiting reads get EIO),
// QEMU is killed, the mount and run folder removed, and FromStreamEarly
// returns the error.

const (
	// LazyDir is the mount point of the served images in the run folder.
	LazyDir = "lazy"
	// ServerFile holds the pid of the process serving an early-started
	// instance; the instance is stale once that process is gone.
	ServerFile = "server.pid"

	lazyMemName  = "mem.ram"
	lazyDiskName = "disk.img"
)

// ErrNoManifest is returned by FromStreamEarly for a stream without a
// MANIFEST at its head.
var ErrNoManifest = errors.New("early start needs a MANIFEST at the head of the stream: overlay-apply writes one when the overlay has one (overlay-pack writes it unless --no-manifest; with --require-signature only when the overlay's head is signed); resume without --early-start, or pack the overlay again")

// Served is an early-started instance whose stream arrived in full: this
// process still serves its memory and disk, until QEMU exits (Wait).
type Served struct {
	Info  *instance.Info
	in    *vm.Instance
	srv   *lazyfs.Server
	dir   string
	files []*os.File // the base's images the mount reads
}

// FromStreamEarly resumes a diff stream's VM before the stream has arrived
// (see the comment above). running is called once the guest runs, with
// its description (as FromStream returns it); FromStreamEarly returns when
// the stream has arrived and verified, or failed. On success the caller
// must keep this process alive and call Wait: QEMU reads the images
// through it for the VM's whole life, and dies with this process.
func FromStreamEarly(ctx context.Context, r *format.Reader, so StreamOptions, running func(*instance.Info)) (*Served, error) {
	if so.Libvirt != "" {
		// QEMU must die with the process serving its memory; libvirtd's
		// QEMU does not.
		return nil, fmt.Errorf("early start does not run under libvirt yet: leave out --early-start or --libvirt")
	}
	if h, err := r.Header(); err != nil {
		return nil, err
	} else if h.Kind != format.KindDiff {
		return nil, fmt.Errorf("early start needs a stream relative to a base (overlay-apply's output), not a %s stream", h.Kind)
	}
	s, err := prepareStream(r, &so)
	if err != nil {
		return nil, err
	}
	defer s.close()
	h, b, dir, cfg := s.h, s.b, s.dir, s.cfg

	rec, err := r.Next()
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if rec.Type != format.TypeManifest {
		return nil, ErrNoManifest
	}
	m, err := rec.ManifestRecord(h)
	if err != nil {
		return nil, err
	}
	srv, images, files, err := mountImages(dir, b, h, m)
	if err != nil {
		return nil, err
	}
	s.cl.srv = srv
	defer func() {
		if !s.cl.done {
			s.cl.run() // unmount before the files close
			s.cl.done = true
			closeAll(files)
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, ServerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return nil, err
	}
	mount := filepath.Join(dir, LazyDir)
	cfg.MemPath, cfg.MemShare, cfg.DieWithParent = filepath.Join(mount, lazyMemName), false, true

	p := &pipeline{dir: dir, header: h, base: b, early: true}
	if err := p.open(); err != nil {
		return nil, err
	}
	defer p.close()
	p.mem = &lazyMem{im: images[0]}
	if s.image != "" {
		// An empty top layer over the served disk image: QEMU writes it,
		// the stream's disk records go into the image.
		cfg.Disk = filepath.Join(dir, "disk.qcow2")
		w, err := qcow2.Create(cfg.Disk, int64(h.VM.DiskSize), filepath.Join(mount, lazyDiskName), "raw", images[1]) // nothing written: the reader stays unused
		if err != nil {
			return nil, err
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		p.disk = &lazyDisk{im: images[1]}
	}

	// QEMU advises huge pages on its RAM, and a page fault there would
	// then read (and wait for) the whole 2 MiB around the page.
	if err := vm.DisableHugePageAdvice(); err != nil && so.Log != nil {
		fmt.Fprintf(so.Log, "vm-resume: %v; a page fault will wait for the 2 MiB around it\n", err)
	}
	fed := make(chan feedResult, 1)
	go func() { fed <- p.feed(ctx, so.start, cfg, h.VM.IgnoreShared) }()
	read := make(chan error, 1)
	go func() {
		err := p.read(ctx, r)
		if err == nil {
			err = r.Validator().CheckPromised()
		}
		if err == nil {
			p.endDev() // a stream of device state only ends it here
		}
		for _, im := range images {
			if err == nil && im.Pending() != 0 {
				err = fmt.Errorf("the stream ended with %d bytes its MANIFEST promised still missing", im.Pending())
			}
		}
		if err != nil {
			for _, im := range images {
				im.Fail(err) // reads waiting for what will never come fail now
			}
			p.abort(err, false)
		}
		read <- err
	}()

	// A cancelled ctx (a signal, or the caller gone) stops both sides at
	// once, even while the reader waits for input.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			for _, im := range images {
				im.Fail(ctx.Err())
			}
			p.abort(ctx.Err(), false)
		case <-stop:
		}
	}()
	res := <-fed
	s.cl.inst = res.in
	if res.c != nil {
		defer res.c.Close()
	}
	if res.err != nil {
		err, fromFeed := p.cause()
		if !fromFeed {
			return nil, err // the stream failed first, or ctx ended
		}
		if res.in != nil {
			return nil, fmt.Errorf("%w (QEMU log: %s)", err, res.in.LogTail(500))
		}
		return nil, err
	}
	if err := res.c.Cont(ctx); err != nil {
		p.abort(err, true)
		return nil, err
	}
	in := res.in
	info := infoFor(in, cfg)
	info.Resumed, info.DiskImage, info.BaseID = "base", s.image, b.ID()
	info.VM = h.VM
	info.VM.Devices = in.Config.Devices
	info.VM.IgnoreShared = false // a private mapping is captured through migration
	info.VM.Forwards = toFormatForwards(in.Config.Forwards)
	info.Server, info.Mount = os.Getpid(), mount
	so.describe(info)
	info.Timings = map[string]float64{
		"qemu_ready": res.ready.Sub(s.start).Seconds(),
		"running":    time.Since(s.start).Seconds(),
	}
	if err := instance.Write(dir, info); err != nil {
		p.abort(err, true)
		return nil, err
	}
	if running != nil {
		running(info)
	}

	select {
	case err = <-read:
	case <-p.quit:
		err = p.failure()
	}
	if err != nil && ctx.Err() != nil {
		return nil, fmt.Errorf("stopped before the stream had arrived (%w); the instance was removed", ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("the stream turned out bad after the guest started, so the instance was stopped and removed: %w", err)
	}
	p.finish()
	info.Timings["read_stream"] = time.Since(s.start).Seconds()
	if err := instance.Write(dir, info); err != nil {
		return nil, err
	}
	releaseRunDir(dir)
	s.cl.done = true
	return &Served{Info: info, in: in, srv: srv, dir: dir, files: files}, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// mountImages serves the base's memory and disk, with the manifest's
// ranges expected, at dir/LazyDir (the memory image first, then the disk
// image when the VM has a disk). The base files are read with pread (never
// mapped: see lazyfs on faults in the serving process) and must stay open
// as long as the mount.
func mountImages(dir string, b *base.Base, h *format.Header, m *format.Manifest) (_ *lazyfs.Server, _ []*lazyfs.Image, files []*os.File, err error) {
	defer func() {
		if err != nil {
			closeAll(files)
		}
	}()
	memRanges, diskRanges := m.Ranges()
	if h.VM.DiskSize == 0 && len(diskRanges) > 0 {
		return nil, nil, nil, fmt.Errorf("the MANIFEST promises disk ranges but the VM has no disk")
	}
	var images []*lazyfs.Image
	for _, x := range []struct {
		name, file string
		size       uint64
		ranges     [][2]uint64
	}{{lazyMemName, base.MemFile, h.VM.MemSize, memRanges}, {lazyDiskName, base.DiskFile, h.VM.DiskSize, diskRanges}} {
		if x.size == 0 {
			continue
		}
		f, err := os.Open(b.Path(x.file))
		if err != nil {
			return nil, nil, files, err
		}
		files = append(files, f)
		im := lazyfs.NewImage(x.name, int64(x.size), f)
		for _, r := range x.ranges {
			if err := im.Expect(int64(r[0]), int64(r[1])); err != nil {
				return nil, nil, files, err
			}
		}
		images = append(images, im)
	}
	mount := filepath.Join(dir, LazyDir)
	if err := os.Mkdir(mount, 0o700); err != nil {
		return nil, nil, files, err
	}
	srv, err := lazyfs.Mount(mount, images, lazyfs.Options{StoreDir: dir, MaxReadAhead: earlyReadAhead})
	if err != nil {
		return nil, nil, files, fmt.Errorf("serving the VM's memory and disk for early start: %w (FUSE needs /dev/fuse and the fuse3 package)", err)
	}
	return srv, images, files, nil
}

// AccessLog returns the order in which the guest first read its memory and
// disk through the mount so far (for overlay-pack --order access).
func (s *Served) AccessLog() *format.AccessLog {
	l := &format.AccessLog{Version: format.AccessLogVersion, Accesses: []format.Access{}}
	for _, a := range s.srv.Accesses() {
		sp := format.AccessMem
		if a.Image == lazyDiskName {
			sp = format.AccessDisk
		}
		n := (a.Length + format.PageSize - 1) / format.PageSize * format.PageSize
		l.Accesses = append(l.Accesses, format.Access{Space: sp, Offset: uint64(a.Offset), Length: uint64(n)})
	}
	return l
}

// Wait serves the images until QEMU exits (or ctx ends: then QEMU is
// killed), then unmounts them and removes the run folder.
func (s *Served) Wait(ctx context.Context) error {
	select {
	case <-s.in.Done():
	case <-ctx.Done():
		s.in.Kill()
		<-s.in.Done()
	}
	err := s.srv.Unmount()
	closeAll(s.files)
	if rerr := RemoveRunDir(s.dir); err == nil {
		err = rerr
	}
	return err
}

// Kill ends QEMU now (Wait then cleans up).
func (s *Served) Kill() error { return s.in.Kill() }

// lazyMem puts memory records into the memory image QEMU maps.
type lazyMem struct{ im *lazyfs.Image }

func (s *lazyMem) attach(*vm.Instance) error           { return nil }
func (s *lazyMem) tick() error                         { return nil }
func (s *lazyMem) write(off uint64, data []byte) error { return s.im.Fill(int64(off), data) }
func (s *lazyMem) zero(off, n uint64) error            { return s.im.Zero(int64(off), int64(n)) }
func (s *lazyMem) read(off uint64, p []byte) error {
	_, err := s.im.ReadAt(p, int64(off))
	return err
}
func (s *lazyMem) done() error { return nil }

// pages: none go through the migration, which may end as soon as the
// device state did.
func (s *lazyMem) pages() (migstream.PageSource, func()) {
	return migstream.PageSourceFunc(func() (migstream.Page, error) { return migstream.Page{}, io.EOF }), func() {}
}
func (s *lazyMem) close() {}

// lazyDisk puts disk records into the disk image behind QEMU's top layer.
type lazyDisk struct{ im *lazyfs.Image }

func (d *lazyDisk) write(_ context.Context, off uint64, data []byte) error {
	return d.im.Fill(int64(off), data)
}
func (d *lazyDisk) zero(_ context.Context, off, n uint64) error {
	return d.im.Zero(int64(off), int64(n))
}
func (d *lazyDisk) read(_ context.Context, off uint64, p []byte) error {
	_, err := d.im.ReadAt(p, int64(off))
	return err
}
func (d *lazyDisk) finish() error { return nil }
func (d *lazyDisk) close()        {}

// earlyReadAhead bounds the kernel's reads of the served images to the
// page touched: a fault then waits only for that page's record, never for
// its neighbours still in flight, and the access log lists the pages the
// guest touched, not the windows around them (which would bring most of
// the overlay forward). It costs one request to this process per page the
// guest touches first (a few microseconds each).
const earlyReadAhead = 4096
