package resume

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/disk"
	"cloudlet/lib/instance"
	"cloudlet/lib/vm"
)

// StreamOptions say where FromStream finds what a stream only names.
type StreamOptions struct {
	Options
	BaseDir string   // base folder for diff streams (else the catalog)
	Catalog string   // catalog file
	Images  []string // candidate disk images for full streams, matched by sha256
	KitDirs []string // folders with vmlinuz and initrd.img, matched by sha256
	// MemWrite is how a diff stream's pages reach the guest's RAM:
	// MemWriteDirect (default: written into QEMU's RAM, lib/guestmem; the
	// migration stream when this process may not) or MemWriteMigration.
	MemWrite string
}

// Values of StreamOptions.MemWrite.
const (
	MemWriteDirect    = "direct"
	MemWriteMigration = "migration"
)

// streamSetup is what both engines (FromStream, FromStreamEarly) need
// before QEMU starts: the header, the base, the run folder and the VM's
// configuration.
type streamSetup struct {
	start              time.Time
	h                  *format.Header
	b                  *base.Base // nil for a full stream
	dir                string
	cl                 *cleanup
	cfg                vm.Config
	main               string // the main RAM block's id
	image, imageFormat string // what the disk is relative to ("" without a disk)
}

// close releases the base and undoes the run folder unless the caller
// marked it done.
func (s *streamSetup) close() {
	if s.cl != nil {
		s.cl.run()
	}
	if s.b != nil {
		s.b.Close()
	}
}

// prepareStream reads the header, finds the base and the boot files,
// claims a run folder and fills in the VM's configuration (memory and disk
// are the engine's).
func prepareStream(r *format.Reader, so *StreamOptions) (_ *streamSetup, err error) {
	s := &streamSetup{start: time.Now()}
	defer func() {
		if err != nil {
			s.close() // (the named result is nil by now)
		}
	}()
	h, err := r.Header()
	if err != nil {
		return nil, err
	}
	s.h = h
	switch h.Kind {
	case format.KindOverlay:
		return nil, fmt.Errorf("input is a packed overlay: pipe it through overlay-apply first (overlay-apply --base B < app.overlay | vm-resume --base B)")
	case format.KindDiff:
		if !h.MemRelative {
			return nil, fmt.Errorf("the stream's memory is not relative to the base: pipe it through mem-diff")
		}
		if s.b, err = base.Locate(so.BaseDir, so.Catalog, h.BaseID); err != nil {
			return nil, err
		}
		if s.b.Meta.VM.MemSize != h.VM.MemSize || s.b.Meta.DiskSHA != h.VM.DiskBase {
			return nil, fmt.Errorf("base %s does not match the stream's VM (RAM %d vs %d bytes, disk %s vs %s)",
				s.b.ID(), s.b.Meta.VM.MemSize, h.VM.MemSize, s.b.Meta.DiskSHA, h.VM.DiskBase)
		}
		if err := base.SameBoot(s.b.Meta.VM, h.VM); err != nil {
			return nil, fmt.Errorf("base %s: %w", s.b.ID(), err)
		}
	}
	b := s.b
	s.main = mainBlock(h.VM)
	dir, err := newRunDir(&so.Options)
	if err != nil {
		return nil, err
	}
	s.dir, s.cl = dir, &cleanup{dir: dir}

	// Where the pieces come from.
	searchDirs := so.KitDirs
	if b != nil {
		searchDirs = append([]string{b.Dir}, searchDirs...)
	}
	bootDirs := append(slices.Clone(searchDirs), vm.FirmwareDir)
	files := base.BootFiles(h.VM)
	for _, name := range base.BootFileNames {
		if sum, ok := files[name]; ok {
			if files[name], err = base.FindBootFile(sum, name, bootDirs); err != nil {
				return nil, err
			}
		}
	}
	if h.VM.DiskSize > 0 {
		if b != nil {
			s.image, s.imageFormat = b.Path(base.DiskFile), disk.FormatRaw // a base's disk is raw
		} else if s.image, err = findImage(h.VM.DiskBase, so.Images); err != nil {
			return nil, err
		} else {
			s.imageFormat = h.VM.DiskFormat
		}
	}

	// A stream with a device list gets exactly those devices (a NIC only
	// if it had one); one from before, the fixed layout.
	devs := h.VM.Devices
	hasNIC := devs == nil || format.HasDriver(devs, format.DriverVirtioNet)
	forwards, recorded := so.Forwards, false
	if forwards == nil {
		forwards, recorded = fromFormatForwards(h.VM.Forwards), true
	}
	if !hasNIC {
		if !recorded && len(forwards) > 0 {
			return nil, fmt.Errorf("the VM has no network device (it was captured without one): port forwards need one")
		}
		forwards = nil
	}
	if devs != nil && so.VNC && !hasDisplay(devs) && so.Log != nil {
		fmt.Fprintf(so.Log, "vm-resume: warning: this VM has no display device (it was captured without one): its VNC display stays blank\n")
	}
	if forwards, err = placeForwards(forwards, recorded, so.Ports, so.Log); err != nil {
		return nil, err
	}
	s.cfg = vm.Config{
		Name: so.Name, RunDir: dir, MemMiB: int(h.VM.MemSize >> 20), Machine: h.VM.Machine, CPU: h.VM.CPU,
		Kernel: files[base.KernelFile], Initrd: files[base.InitrdFile], Append: h.VM.Append,
		Forwards: forwards, Net: hasNIC, Incoming: true, VNC: so.VNC, Accel: so.Accel, ExtraArgs: so.ExtraArgs,
		VMGenID: h.VM.VMGenID, Devices: devs,
	}
	if !h.VM.VMGenID && so.Log != nil {
		fmt.Fprintf(so.Log, "vm-resume: warning: this VM has no VM generation ID device (its base was made before vm-resume launch added one, or QEMU was started by hand): every instance resumed from it starts with the same RNG state; make the base again with cloudlet base to fix that\n")
	}
	if h.VM.Firmware == format.FirmwareUEFI {
		fw := firmware{code: files[base.FirmwareCodeFile], varsTemplate: files[base.FirmwareVarsFile]}
		if err := fw.configure(&s.cfg); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// FromStream reads a full stream or a resolved diff stream and resumes the
// VM it describes. The guest runs only after the stream's END verified.
func FromStream(ctx context.Context, r *format.Reader, so StreamOptions) (*instance.Info, error) {
	s, err := prepareStream(r, &so)
	if err != nil {
		return nil, err
	}
	defer s.close()
	start, h, b, dir, cl, main, image := s.start, s.h, s.b, s.dir, s.cl, s.main, s.image
	cfg := s.cfg
	sp := &pipeline{dir: dir, header: h}
	if b != nil {
		sp.base = b
	}
	if err := sp.open(); err != nil {
		return nil, err
	}
	defer sp.close()
	switch {
	case b != nil && so.MemWrite == MemWriteMigration:
		cfg.MemPath, cfg.MemShare = b.Path(base.MemFile), false
		if sp.mem, err = newInjectSink(&sp.gate, dir, main, true); err != nil {
			return nil, err
		}
	case b != nil:
		cfg.MemPath, cfg.MemShare = b.Path(base.MemFile), false
		sp.mem = &directSink{g: &sp.gate, dir: dir, main: main, memPath: cfg.MemPath,
			size: int64(h.VM.MemSize), ready: make(chan struct{}), log: so.Log}
	case h.Kind == format.KindFull && main == vm.MemBackendID:
		cfg.MemPath, cfg.MemShare = filepath.Join(dir, vm.MemFileName), true
		if sp.mem, err = newFileSink(&sp.gate, cfg.MemPath, int64(h.VM.MemSize)); err != nil {
			return nil, err
		}
	case main == "pc.ram":
		cfg.MemPlain = true // a VM started by hand: plain RAM, pages injected
		if sp.mem, err = newInjectSink(&sp.gate, dir, main, h.Kind != format.KindFull); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("the stream's main RAM block is %q; vm-resume knows %q (memory file) and \"pc.ram\" (plain RAM)", main, vm.MemBackendID)
	}
	if image != "" {
		cfg.Disk = filepath.Join(dir, "disk.qcow2")
		d, err := newDiskSink(ctx, cfg.Disk, image, s.imageFormat, int64(h.VM.DiskSize))
		if err != nil {
			return nil, err
		}
		if h.Live {
			d.w.AllowRewrite() // a handoff's later passes write ranges again
		}
		sp.disk = d
	}

	// QEMU starts and takes the incoming migration while the stream is
	// still being read; the guest runs only after END verified (pipeline
	// in the package comment).
	fed := make(chan feedResult, 1)
	go func() { fed <- sp.feed(ctx, so.start, cfg, h.VM.IgnoreShared) }()
	if err := sp.read(ctx, r); err != nil {
		sp.abort(err, false)
	} else {
		sp.finish()
	}
	readDone := time.Now()
	res := <-fed
	cl.inst = res.in
	if res.c != nil {
		defer res.c.Close()
	}
	if err, fromFeed := sp.cause(); err != nil {
		if fromFeed && res.in != nil {
			return nil, fmt.Errorf("%w (QEMU log: %s)", err, res.in.LogTail(500))
		}
		return nil, err
	}
	if err := res.c.Cont(ctx); err != nil {
		return nil, err
	}
	in := res.in
	info := infoFor(in, cfg)
	info.Resumed, info.DiskImage = "full", image
	info.VM = h.VM
	info.VM.Devices = in.Config.Devices // what it runs with, for its next capture
	if b != nil {
		info.BaseID, info.Resumed = b.ID(), "base"
		info.VM.IgnoreShared = false // a private mapping is captured through migration
	}
	info.VM.Forwards = toFormatForwards(in.Config.Forwards)
	so.describe(info)
	info.Timings = map[string]float64{
		"qemu_ready":  res.ready.Sub(start).Seconds(),
		"read_stream": readDone.Sub(start).Seconds(),
		"migrate_end": res.migrated.Sub(readDone).Seconds(),
		"total":       time.Since(start).Seconds(),
	}
	if err := instance.Write(dir, info); err != nil {
		return nil, err
	}
	releaseRunDir(dir)
	cl.done = true
	return info, nil
}

// hasDisplay reports whether a device list has a display device.
func hasDisplay(devs []format.Device) bool {
	for _, d := range devs {
		if info, _ := format.Driver(d.Driver); info.Display {
			return true
		}
	}
	return false
}

func mainBlock(d format.VMDesc) string {
	for _, b := range d.RAMBlocks {
		if b.ID == vm.MemBackendID || b.ID == "pc.ram" {
			return b.ID
		}
	}
	return vm.MemBackendID
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
