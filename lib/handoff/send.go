package handoff

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cloudlet/format"
	"cloudlet/lib/capture"
	"cloudlet/lib/disk"
	"cloudlet/lib/guestmem"
	"cloudlet/lib/instance"
	"cloudlet/lib/migstream"
	"cloudlet/lib/overlay"
	"cloudlet/lib/qmpctl"
)

// Options say what to hand off and how.
type Options struct {
	Instance *instance.Info
	Base     baseReader // the instance's base
	// Downtime is the pause the switchover aims at (default 500 ms): the
	// source stops when what is left, at the link's rate, fits in it.
	Downtime time.Duration
	// Bandwidth is the link's rate in Mbit/s; 0 measures it from the
	// output (bytes written per second).
	Bandwidth float64
	// MaxPasses ends the pre-copy after this many passes even if it did
	// not converge (default 30).
	MaxPasses int
	Codec     string // overlay.PackOptions.Codec (default auto)
	Log       io.Writer
}

// Defaults of Options.
const (
	DefaultDowntime  = 500 * time.Millisecond
	DefaultMaxPasses = 30
	// segmentSize keeps little in the packer: what it holds is sent only
	// when its segment is full (or at END).
	segmentSize = 256 << 10
	// inPacker is how many segments may wait in the packer (one filling,
	// its one worker's queue of Workers+2).
	inPacker = 4
	// resumeCost is what the destination adds to the downtime after the
	// last byte (applying the device state, cont), in the estimate.
	resumeCost = 150 * time.Millisecond
)

// Stats report a handoff.
type Stats struct {
	Passes    int     `json:"passes"`       // QEMU's dirty syncs (pass 1 shows every page)
	MemBytes  uint64  `json:"mem_bytes"`    // raw page bytes sent, all passes
	DiskBytes uint64  `json:"disk_bytes"`   // raw disk bytes sent
	Copied    uint64  `json:"copied_bytes"` // sent as copies of what the destination held elsewhere
	WireBytes uint64  `json:"wire_bytes"`   // bytes of the stream written
	LinkMbit  float64 `json:"link_mbit"`    // the link's rate at the switchover
	// Expected is the downtime the switchover was chosen for (seconds);
	// Converged says the passes got there (else MaxPasses or stalled
	// passes ended them).
	Expected  float64 `json:"expected_downtime"`
	Converged bool    `json:"converged"`
	// Stopped is when the source paused (Unix nanoseconds); StopToEnd the
	// seconds from then until the stream's END was written.
	Stopped   int64   `json:"stopped_unix_ns"`
	StopToEnd float64 `json:"stop_to_end"`
	// After the pause: the final disk pass, and QEMU's last pass and
	// device state (seconds).
	FinalDisk float64 `json:"final_disk"`
	FinalScan float64 `json:"final_scan"` // the paused source's RAM compared with what was sent
	FinalRAM  float64 `json:"final_ram"`
	Seconds   float64 `json:"seconds"`
}

// Send hands off the running instance: it writes a live overlay stream to
// out while the VM runs, chooses the switchover, and returns once END is
// written, the source paused (QEMU's "postmigrate"): the caller ends it
// when the destination confirmed, or lets it run again (Resume). On error
// the migration is cancelled and the source runs on; the stream then ends
// in an ERROR record.
func Send(ctx context.Context, opt Options, out io.Writer) (st *Stats, err error) {
	start := time.Now()
	st = &Stats{}
	if opt.Downtime <= 0 {
		opt.Downtime = DefaultDowntime
	}
	if opt.MaxPasses <= 0 {
		opt.MaxPasses = DefaultMaxPasses
	}
	if opt.Codec == "" {
		opt.Codec = "auto"
	}
	in := opt.Instance
	if in.BaseID == "" || in.MemShared {
		return st, fmt.Errorf("instance %s was not resumed from a base: only synthesized instances are handed off", in.RunDir)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	c, err := qmpctl.Dial(dctx, in.QMP)
	cancel()
	if err != nil {
		return st, fmt.Errorf("connecting to QMP %s: %w", in.QMP, err)
	}
	defer c.Close()
	if status, running, err := c.QueryStatus(ctx); err != nil {
		return st, err
	} else if !running {
		return st, fmt.Errorf("the VM is not running (status %s): a paused VM is moved with vm-capture | mem-diff | disk-diff | overlay-pack", status)
	}

	// The stream: records -> pipe -> overlay.Pack -> link -> out.
	l := &link{w: out, given: opt.Bandwidth * 1e6 / 8}
	ow := format.NewWriter(l)
	pr, pw := io.Pipe()
	dw := format.NewWriter(pw)
	packed := make(chan error, 1)
	waitPack := sync.OnceValue(func() error { return <-packed })
	go func() {
		err := overlay.Pack(ctx, format.NewReader(pr), ow, overlay.PackOptions{Codec: opt.Codec, NoManifest: true,
			SegmentSize: segmentSize, Bandwidth: l.rate() * 8 / 1e6, Producer: "vm-handoff", Workers: 1, Log: opt.Log, Live: true})
		pr.CloseWithError(err) // the writer side sees it
		packed <- err
	}()
	h := &format.Header{Kind: format.KindDiff, VM: in.VM, BaseID: in.BaseID, Producer: []string{"vm-handoff"}, MemRelative: true, Live: true}
	// The private base mapping goes through migration; in.VM.Forwards are
	// the forwards the instance runs with (vm-resume recorded them).
	h.VM.IgnoreShared = false
	s := &sender{opt: opt, c: c, l: l, st: st, tr: newTracker(dw, opt.Base, in.VM.MemSize), others: map[otherKey][]byte{}}
	defer func() {
		if err != nil {
			s.abort(context.WithoutCancel(ctx))
			pw.CloseWithError(err)
			waitPack()
			ow.WriteError("vm-handoff", err.Error())
		}
		st.WireBytes = l.written()
		st.Seconds = time.Since(start).Seconds()
	}()
	if err := dw.WriteHeader(h); err != nil {
		return st, err
	}
	if err := s.run(ctx, dw); err != nil {
		return st, err
	}
	pw.Close()
	if err := waitPack(); err != nil {
		return st, err
	}
	if err := ow.Close(); err != nil { // END
		return st, err
	}
	st.WireBytes = l.written()
	st.StopToEnd = time.Since(time.Unix(0, st.Stopped)).Seconds()
	return st, nil
}

type otherKey struct {
	block string
	off   uint64
}

// sender is one handoff's state.
type sender struct {
	opt    Options
	c      *qmpctl.Client
	l      *link
	st     *Stats
	mu     sync.Mutex // the tracker: the migration reader and the final disk pass
	tr     *tracker
	others map[otherKey][]byte // pages of RAM blocks other than main memory, latest
	raw    atomic.Uint64       // tr.sent, for the controller
	begun  bool                // the migration started
	// sendErr is why writing a record failed (the link broke, the
	// packer failed): the cause to report, not the migration's end.
	sendErr error
}

func (s *sender) log(format string, a ...any) {
	if s.opt.Log != nil {
		fmt.Fprintf(s.opt.Log, "vm-handoff: "+format+"\n", a...)
	}
}

// run does the steps in order: disk, migration with the controller,
// device state, END.
func (s *sender) run(ctx context.Context, dw *format.Writer) error {
	in := s.opt.Instance
	// First disk pass while the VM runs: what the top layer holds now
	// (read with force-share; the final pass corrects whatever changed).
	if in.DiskTop != "" {
		if err := s.diskPass(ctx, in.DiskTop); err != nil {
			s.log("first disk pass: %v (the final pass sends the disk)", err)
		}
	}
	if err := s.c.SetMigrationCapabilities(ctx, map[string]bool{migstream.CapIgnoreShared: false, "events": true, "pause-before-switchover": true}); err != nil {
		return err
	}
	// downtime-limit 1 ms: QEMU switches over by itself only when what is
	// dirty after a pass fits 1 ms at the rate it sees (which our reader
	// holds to the link's, give or take the packer's few segments); else
	// we raise it when we choose to. (0 would make QEMU never sync the
	// dirty bitmap: it syncs only when what remains is under the limit.)
	params := qmpctl.UnthrottledMigration()
	params["downtime-limit"] = 1
	if err := s.c.SetMigrationParameters(ctx, params); err != nil {
		return err
	}
	sock := filepath.Join(in.RunDir, "handoff.sock")
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	defer os.Remove(sock)
	defer ln.Close()
	if err := s.c.Migrate(ctx, "unix:"+sock); err != nil {
		return fmt.Errorf("starting migration: %w", err)
	}
	s.begun = true
	conn, err := capture.AcceptMigration(ctx, ln)
	if err != nil {
		return fmt.Errorf("waiting for QEMU to connect the migration socket: %w", err)
	}
	defer conn.Close()
	ln.Close()

	cctx, stop := context.WithCancel(ctx)
	ctl := make(chan error, 1)
	go func() { ctl <- s.control(cctx) }()
	var dev bytes.Buffer
	_, splitErr := migstream.Split(conn, &dev, migstream.PageSinkFunc(func(p migstream.Page) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if p.Block == "mem" {
			data := p.Data
			if p.IsZero() {
				data = zeroPage[:]
			}
			err := s.tr.page(p.Offset, data)
			s.raw.Store(s.tr.sent)
			if err != nil {
				s.sendErr = err
			}
			return err
		}
		s.others[otherKey{p.Block, p.Offset}] = bytes.Clone(p.Data) // nil: zero
		return nil
	}))
	if splitErr != nil {
		// The controller may wait for a pass that never comes.
		stop()
		<-ctl
		if s.sendErr != nil { // the link (or the packer) failed, not QEMU
			return fmt.Errorf("sending the stream: %w", s.sendErr)
		}
		return fmt.Errorf("reading QEMU's migration stream: %w", splitErr)
	}
	// The stream ended: QEMU completed, after the controller let it
	// (migrate-continue), which returns once it sees that.
	err = <-ctl
	stop()
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	err = s.c.WaitMigration(wctx)
	cancel()
	if err != nil {
		return fmt.Errorf("QEMU's migration did not complete: %w", err)
	}
	if err := s.tr.flush(); err != nil {
		return err
	}
	st := s.st
	st.FinalRAM = time.Since(time.Unix(0, st.Stopped)).Seconds() - st.FinalDisk - st.FinalScan
	st.MemBytes, st.DiskBytes, st.Copied = s.tr.memBytes, s.tr.diskBytes, s.tr.copied
	var devOut bytes.Buffer
	if err := migstream.Inject(bytes.NewReader(dev.Bytes()), &devOut, migstream.SlicePages(s.otherPages())); err != nil {
		return err
	}
	if err := dw.WriteDevState(devOut.Bytes()); err != nil {
		return err
	}
	return dw.Close()
}

var zeroPage [format.PageSize]byte

// otherPages returns the pages of the other RAM blocks, latest versions,
// in a fixed order.
func (s *sender) otherPages() []migstream.Page {
	keys := make([]otherKey, 0, len(s.others))
	for k := range s.others {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b otherKey) int {
		return cmp.Or(cmp.Compare(a.block, b.block), cmp.Compare(a.off, b.off))
	})
	pages := make([]migstream.Page, 0, len(keys))
	for _, k := range keys {
		pages = append(pages, migstream.Page{Block: k.block, Offset: k.off, Data: s.others[k]})
	}
	return pages
}

// control watches the passes and chooses the switchover: when the last
// pass's bytes, and what may still wait in the packer, fit the downtime at
// the link's rate; or after MaxPasses; or when passes stopped shrinking.
// The disk goes along: a disk pass when a memory pass ended, at most once a
// second. At the pause before the switchover it sends the disk's last
// changes, then lets QEMU complete.
func (s *sender) control(ctx context.Context) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	top := s.opt.Instance.DiskTop
	var sync0 int64 = 1
	var passStart uint64
	var passes []uint64 // bytes of each completed pass after the first
	lastDisk := time.Now()
	switched := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		info, err := s.c.QueryMigrate(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch info.Status {
		case "failed", "cancelled":
			return &qmpctl.MigrationError{Status: info.Status, Desc: info.ErrorDesc}
		case "pre-switchover":
			return s.switchover(ctx, switched)
		case "completed", "device":
			return nil
		}
		if switched || info.RAM.DirtySyncCount <= sync0 {
			continue
		}
		// One or more passes ended.
		if top != "" && time.Since(lastDisk) >= time.Second {
			if err := s.diskPass(ctx, top); err != nil {
				s.log("disk pass: %v (the final pass sends the disk)", err)
			}
			lastDisk = time.Now()
		}
		now := s.raw.Load()
		if sync0 > 1 {
			passes = append(passes, now-passStart)
		}
		sync0, passStart = info.RAM.DirtySyncCount, now
		s.st.Passes = int(sync0)
		if len(passes) == 0 {
			continue
		}
		rate := s.l.rate()
		ratio := 1.0 // compressed / raw, so far
		if now > 0 {
			ratio = min(1, max(0.01, float64(s.l.written())/float64(now)))
		}
		// What may wait in the packer: the segment it fills and those its
		// worker queue holds.
		backlog := float64(inPacker*segmentSize) * ratio
		last := float64(passes[len(passes)-1]) * ratio
		est := time.Duration((last+backlog)/rate*float64(time.Second)) + resumeCost
		minAt := 0
		for i, p := range passes {
			if p <= passes[minAt] {
				minAt = i
			}
		}
		stalled := len(passes)-1-minAt >= 3
		if est <= s.opt.Downtime || int(sync0) >= s.opt.MaxPasses || stalled {
			s.st.Converged = est <= s.opt.Downtime
			s.st.Expected, s.st.LinkMbit = est.Seconds(), rate*8/1e6
			s.log("switchover after pass %d: last pass %d bytes raw, link %.1f Mbit/s, ratio %.2f, expected pause %.2f s (converged %v)",
				sync0-1, passes[len(passes)-1], rate*8/1e6, ratio, est.Seconds(), s.st.Converged)
			if err := s.c.SetMigrationParameters(ctx, map[string]any{"downtime-limit": 2000000}); err != nil {
				return err
			}
			switched = true
		}
	}
}

// switchover runs while QEMU holds the source paused before completing:
// the disk's final pass, then migrate-continue.
func (s *sender) switchover(ctx context.Context, chosen bool) error {
	s.st.Stopped = time.Now().UnixNano()
	if !chosen {
		s.st.Converged = true // nothing was dirty: QEMU went on its own
		s.log("QEMU found nothing dirty and paused the source by itself")
	}
	if top := s.opt.Instance.DiskTop; top != "" {
		if err := s.diskPass(ctx, top); err != nil {
			return fmt.Errorf("final disk pass: %w", err)
		}
	}
	s.st.FinalDisk = time.Since(time.Unix(0, s.st.Stopped)).Seconds()
	if err := s.memScan(); err != nil {
		return fmt.Errorf("final memory pass: %w", err)
	}
	s.st.FinalScan = time.Since(time.Unix(0, s.st.Stopped)).Seconds() - s.st.FinalDisk
	return s.c.MigrateContinue(ctx)
}

// memScan shows the tracker every page of the paused source's RAM, read
// from its QEMU (lib/guestmem), so what reaches the destination does not
// rest on QEMU's dirty tracking alone: under TCG, QEMU 7.2 misses writes
// made through TLB entries it did not re-arm after a dirty-bitmap sync
// (seen here: 13-15 pages of a guest's kernel data lost by a stock
// migration with downtime-limit 1 ms, none with fewer syncs). Pages that
// QEMU's last pass then sends again are dropped as already held.
func (s *sender) memScan() error {
	in := s.opt.Instance
	ram, err := guestmem.Find(in.Pid, in.MemPath, int64(in.VM.MemSize))
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for off := int64(0); off < ram.Size(); off += int64(len(buf)) {
		b := buf[:min(int64(len(buf)), ram.Size()-off)]
		if _, err := ram.ReadAt(b, off); err != nil {
			return err
		}
		s.mu.Lock()
		for p := 0; p < len(b) && err == nil; p += format.PageSize {
			err = s.tr.page(uint64(off)+uint64(p), b[p:p+format.PageSize])
		}
		s.raw.Store(s.tr.sent)
		s.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// diskPass shows the tracker every block of the top layer's extents.
func (s *sender) diskPass(ctx context.Context, top string) error {
	exts, err := disk.Extents(ctx, top)
	if err != nil {
		return err
	}
	var srv *disk.Server
	defer func() {
		if srv != nil {
			srv.Close()
		}
	}()
	buf := make([]byte, 1<<20)
	for _, e := range exts {
		if !e.Data {
			clear(buf)
		} else if srv == nil {
			if srv, err = disk.Serve(ctx, top, disk.FormatQCOW2, true); err != nil {
				return err
			}
		}
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if e.Data {
				if _, err := srv.Client.ReadAt(buf[:n], off); err != nil {
					return fmt.Errorf("reading disk %s at %d: %w", top, off, err)
				}
			}
			s.mu.Lock()
			for b := int64(0); b < n && err == nil; b += format.PageSize {
				err = s.tr.block(uint64(off+b), buf[b:min(n, b+format.PageSize)])
			}
			if err == nil {
				err = s.tr.flush()
			}
			s.raw.Store(s.tr.sent)
			s.mu.Unlock()
			if err != nil {
				return err
			}
			off += n
		}
	}
	return nil
}

// abort leaves the source running: the migration cancelled (QEMU lets a
// guest that ran before run again) or, once complete, the VM continued.
func (s *sender) abort(ctx context.Context) {
	if !s.begun {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s.c.MigrateCancel(ctx)
	for ctx.Err() == nil {
		info, err := s.c.QueryMigrate(ctx)
		if err != nil || (info.Status != "active" && info.Status != "pre-switchover" && info.Status != "device" && info.Status != "cancelling" && info.Status != "setup") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, running, err := s.c.QueryStatus(ctx); err == nil && !running {
		s.c.Cont(ctx)
	}
}

// Resume lets a paused source run again (after a handoff that the
// destination did not confirm).
func Resume(ctx context.Context, in *instance.Info) error {
	c, err := qmpctl.Dial(ctx, in.QMP)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Cont(ctx)
}
