package resume

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/disk"
	"cloudlet/lib/instance"
	"cloudlet/lib/migstream"
	"cloudlet/lib/qmpctl"
	"cloudlet/lib/vm"
)

// StreamOptions say where FromStream finds what a stream only names.
type StreamOptions struct {
	Options
	BaseDir string   // base folder for diff streams (else the catalog)
	Catalog string   // catalog file
	Images  []string // candidate disk images for full streams, matched by sha256
	KitDirs []string // folders with vmlinuz and initrd.img, matched by sha256
}

// FromStream reads a full stream or a resolved diff stream and resumes the
// VM it describes. The guest runs only after the stream's END verified.
func FromStream(ctx context.Context, r *format.Reader, so StreamOptions) (*instance.Info, error) {
	start := time.Now()
	h, err := r.Header()
	if err != nil {
		return nil, err
	}
	var b *base.Base
	switch h.Kind {
	case format.KindOverlay:
		return nil, fmt.Errorf("input is a packed overlay: pipe it through overlay-apply first (overlay-apply --base B < app.overlay | vm-resume --base B)")
	case format.KindDiff:
		if !h.MemRelative {
			return nil, fmt.Errorf("the stream's memory is not relative to the base: pipe it through mem-diff")
		}
		if b, err = base.Locate(so.BaseDir, so.Catalog, h.BaseID); err != nil {
			return nil, err
		}
		defer b.Close()
		if b.Meta.VM.MemSize != h.VM.MemSize || b.Meta.DiskSHA != h.VM.DiskBase {
			return nil, fmt.Errorf("base %s does not match the stream's VM (RAM %d vs %d bytes, disk %s vs %s)",
				b.ID(), b.Meta.VM.MemSize, h.VM.MemSize, b.Meta.DiskSHA, h.VM.DiskBase)
		}
	}
	main := mainBlock(h.VM)
	dir, err := newRunDir(&so.Options)
	if err != nil {
		return nil, err
	}
	cl := &cleanup{dir: dir}
	defer cl.run()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}

	// Where the pieces come from.
	var kernel, initrd, image string
	searchDirs := so.KitDirs
	if b != nil {
		searchDirs = append([]string{b.Dir}, searchDirs...)
	}
	if kernel, err = findBySHA(h.VM.Kernel, base.KernelFile, searchDirs); err != nil {
		return nil, err
	}
	if initrd, err = findBySHA(h.VM.Initrd, base.InitrdFile, searchDirs); err != nil {
		return nil, err
	}
	if h.VM.DiskSize > 0 {
		if b != nil {
			image = b.Path(base.DiskFile)
		} else if image, err = findImage(h.VM.DiskBase, so.Images); err != nil {
			return nil, err
		}
	}

	// Read and spool the whole stream; nothing runs until END verifies.
	sp := &spool{dir: dir, main: main, header: h, fileMem: h.Kind == format.KindFull && main == vm.MemBackendID}
	defer sp.close()
	top := ""
	if image != "" {
		top = filepath.Join(dir, "disk.qcow2")
		if err := disk.CreateTop(ctx, image, top); err != nil {
			return nil, err
		}
		sp.top = top
	}
	if err := sp.read(ctx, r); err != nil {
		return nil, err
	}
	readDone := time.Now()

	forwards := so.Forwards
	if forwards == nil {
		forwards = fromFormatForwards(h.VM.Forwards)
	}
	cfg := vm.Config{
		Name: so.Name, RunDir: dir, MemMiB: int(h.VM.MemSize >> 20), Machine: h.VM.Machine, CPU: h.VM.CPU,
		Kernel: kernel, Initrd: initrd, Append: h.VM.Append, Disk: top,
		Forwards: forwards, Net: true, Incoming: true, VNC: so.VNC, Accel: so.Accel, ExtraArgs: so.ExtraArgs,
	}
	switch {
	case b != nil:
		cfg.MemPath, cfg.MemShare = b.Path(base.MemFile), false
	case sp.fileMem:
		cfg.MemPath, cfg.MemShare = sp.memPath(), true
	case main == "pc.ram":
		cfg.MemPlain = true // a VM started by hand: plain RAM, pages injected
	default:
		return nil, fmt.Errorf("the stream's main RAM block is %q; vm-resume knows %q (memory file) and \"pc.ram\" (plain RAM)", main, vm.MemBackendID)
	}
	in, err := vm.Start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	cl.inst = in
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := qmpctl.Dial(qctx, in.QMPPath())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("QMP of the resumed VM: %w (%s)", err, in.LogTail(500))
	}
	defer c.Close()
	started := time.Now()
	err = migrateIn(ctx, c, dir, h.VM.IgnoreShared, func(w io.Writer) error {
		dev, err := os.Open(sp.devPath())
		if err != nil {
			return err
		}
		defer dev.Close()
		bw := bufio.NewWriterSize(w, 1<<20)
		if err := migstream.Inject(bufio.NewReaderSize(dev, 1<<20), bw, sp.pages()); err != nil {
			return err
		}
		return bw.Flush()
	})
	if err != nil {
		return nil, fmt.Errorf("%w (QEMU log: %s)", err, in.LogTail(500))
	}
	migrated := time.Now()
	if err := c.Cont(ctx); err != nil {
		return nil, err
	}
	sp.removeSpool()
	info := infoFor(in, cfg)
	info.Resumed, info.DiskImage = "full", image
	info.VM = h.VM
	if b != nil {
		info.BaseID, info.Resumed = b.ID(), "base"
		info.VM.IgnoreShared = false // a private mapping is captured through migration
	}
	info.VM.Forwards = toFormatForwards(in.Config.Forwards)
	info.Timings = map[string]float64{
		"read_stream": readDone.Sub(start).Seconds(),
		"qemu_start":  started.Sub(readDone).Seconds(),
		"migrate_in":  migrated.Sub(started).Seconds(),
		"total":       time.Since(start).Seconds(),
	}
	if err := instance.Write(dir, info); err != nil {
		return nil, err
	}
	cl.done = true
	return info, nil
}

func mainBlock(d format.VMDesc) string {
	for _, b := range d.RAMBlocks {
		if b.ID == vm.MemBackendID || b.ID == "pc.ram" {
			return b.ID
		}
	}
	return vm.MemBackendID
}

func findBySHA(sum, name string, dirs []string) (string, error) {
	if sum == "" {
		return "", nil
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if s, err := base.FileSHA256(p); err == nil && s == sum {
			return p, nil
		}
	}
	return "", fmt.Errorf("the stream's VM booted a %s with sha256 %s; none in %v: give the guest kit folder with --kit", name, sum, dirs)
}

func findImage(sum string, images []string) (string, error) {
	if sum == "" {
		return "", fmt.Errorf("the stream's disk names no base image")
	}
	for _, p := range images {
		if s, err := base.FileSHA256(p); err == nil && s == sum {
			return filepath.Abs(p)
		}
	}
	return "", fmt.Errorf("the stream's disk is relative to an image with sha256 %s; none of %v matches: give it with --image", sum, images)
}

// spool holds a stream's records in the run folder until END verified.
type spool struct {
	dir     string
	main    string
	header  *format.Header
	fileMem bool // memory goes straight into the new share=on RAM file
	top     string

	dev   *os.File
	mem   *os.File // RAM file (fileMem) or page spool
	memW  *bufio.Writer
	nbd   *disk.Server
	npage int64
}

func (s *spool) devPath() string  { return filepath.Join(s.dir, "devstate.spool") }
func (s *spool) memPath() string  { return filepath.Join(s.dir, vm.MemFileName) }
func (s *spool) pagePath() string { return filepath.Join(s.dir, "pages.spool") }
func (s *spool) removeSpool()     { os.Remove(s.devPath()); os.Remove(s.pagePath()) }

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

// page spool entry: be64 (offset | zero flag) then 4096 bytes unless zero.
const spoolZero = 1

func (s *spool) read(ctx context.Context, r *format.Reader) error {
	var err error
	if s.dev, err = os.Create(s.devPath()); err != nil {
		return err
	}
	if s.fileMem {
		if s.mem, err = os.Create(s.memPath()); err != nil {
			return err
		}
		if err := s.mem.Truncate(int64(s.header.VM.MemSize)); err != nil {
			return err
		}
	} else {
		if s.mem, err = os.Create(s.pagePath()); err != nil {
			return err
		}
		s.memW = bufio.NewWriterSize(s.mem, 1<<20)
	}
	var hb [8]byte
	for {
		if err := ctx.Err(); err != nil {
			return err
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
		switch rec.Type {
		case format.TypeDevState:
			_, err = s.dev.Write(rec.Payload)
		case format.TypeMem:
			off, data, _ := rec.DataRecord()
			if s.fileMem {
				_, err = s.mem.WriteAt(data, int64(off))
				break
			}
			for p := 0; p < len(data) && err == nil; p += format.PageSize {
				binary.BigEndian.PutUint64(hb[:], off+uint64(p))
				s.memW.Write(hb[:])
				_, err = s.memW.Write(data[p : p+format.PageSize])
				s.npage++
			}
		case format.TypeMemZero:
			if s.fileMem {
				break // the new RAM file is zero there already
			}
			off, n, _ := rec.ZeroRecord()
			for p := uint64(0); p < n && err == nil; p += format.PageSize {
				binary.BigEndian.PutUint64(hb[:], (off+p)|spoolZero)
				_, err = s.memW.Write(hb[:])
				s.npage++
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
	if s.memW != nil {
		if err := s.memW.Flush(); err != nil {
			return err
		}
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
	if err := s.dev.Sync(); err != nil {
		return err
	}
	return nil
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

// pages returns the spooled pages as a migstream.PageSource.
func (s *spool) pages() migstream.PageSource {
	if s.fileMem {
		return nil
	}
	f, err := os.Open(s.pagePath())
	if err != nil {
		return migstream.PageSourceFunc(func() (migstream.Page, error) { return migstream.Page{}, err })
	}
	br := bufio.NewReaderSize(f, 1<<20)
	buf := make([]byte, format.PageSize)
	var hb [8]byte
	return migstream.PageSourceFunc(func() (migstream.Page, error) {
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			f.Close()
			if err == io.EOF {
				return migstream.Page{}, io.EOF
			}
			return migstream.Page{}, err
		}
		v := binary.BigEndian.Uint64(hb[:])
		if v&spoolZero != 0 {
			return migstream.Page{Block: s.main, Offset: v &^ spoolZero}, nil
		}
		if _, err := io.ReadFull(br, buf); err != nil {
			return migstream.Page{}, err
		}
		return migstream.Page{Block: s.main, Offset: v, Data: buf}, nil
	})
}
