package capture

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/instance"
	"cloudlet/lib/migstream"
	"cloudlet/lib/qmpctl"

	"github.com/digitalocean/go-qemu/qmp"
)

// After says what happens to the VM once captured.
type After int

// What to do with the VM after the capture.
const (
	StayPaused After = iota
	Resume
	Quit
)

// Options say which VM to capture.
type Options struct {
	// Instance is a VM that vm-resume started (its instance.json).
	Instance *instance.Info
	// QMP is the monitor socket of any other QEMU VM (Instance == nil).
	QMP string
	// Monitor, instead of QMP, reaches another QEMU's monitor some other
	// way (lib/virt: through libvirt); MonitorName names it in errors.
	Monitor     qmp.Monitor
	MonitorName string
	// Disk is that VM's qcow2 top layer, if its disk is wanted.
	Disk string
	// Forwards to record in the header for a VM without instance.json.
	Forwards []format.Forward
	After    After
	// End, if set, ends the VM for After == Quit instead of QMP quit (a
	// libvirt domain is destroyed through libvirt, which then knows at
	// once that it ended).
	End   func(context.Context) error
	Stage string // name in ERROR records, "vm-capture"
	Log   io.Writer
}

// Stats reports a capture.
type Stats struct {
	MemBytes      uint64  `json:"mem_bytes"`      // non-zero RAM written
	DiskBytes     uint64  `json:"disk_bytes"`     // disk data written
	DevStateBytes uint64  `json:"devstate_bytes"` // device state
	Seconds       float64 `json:"seconds"`
	MigrateSecs   float64 `json:"migrate_seconds"`
}

// Capture writes the VM's state to w as a full stream (w is closed with END
// on success; on failure the caller writes an ERROR record).
func Capture(ctx context.Context, opt Options, w *format.Writer) (*Stats, error) {
	start := time.Now()
	qmpPath := opt.QMP
	if opt.Instance != nil {
		qmpPath = opt.Instance.QMP
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	var c *qmpctl.Client
	var err error
	if opt.Monitor != nil {
		qmpPath = "of " + opt.MonitorName
		c, err = qmpctl.New(dctx, opt.Monitor)
	} else {
		c, err = qmpctl.Dial(dctx, qmpPath)
	}
	cancel()
	if err != nil {
		return nil, fmt.Errorf("connecting to QMP %s: %w", qmpPath, err)
	}
	defer c.Close()

	vm, main, memFile, err := describe(ctx, c, opt)
	if err != nil {
		return nil, err
	}
	h := &format.Header{Kind: format.KindFull, VM: vm, Producer: []string{"vm-capture"}}
	if opt.Instance != nil {
		h.BaseID = opt.Instance.BaseID
	}
	if err := w.WriteHeader(h); err != nil {
		return nil, err
	}
	st := &Stats{}
	status, running, err := c.QueryStatus(ctx)
	if err != nil {
		return nil, err
	}
	if running {
		if err := c.Stop(ctx); err != nil {
			return nil, err
		}
	} else if status == "inmigrate" {
		return nil, fmt.Errorf("the VM is still waiting for an incoming migration (status %s)", status)
	}
	// Leave the VM as asked: paused, running, or (only after a complete
	// capture, so nothing is lost) gone.
	ok := false
	defer func() {
		switch {
		case opt.After == Resume || (opt.After == Quit && !ok && running):
			c.Cont(context.WithoutCancel(ctx))
		case opt.After == Quit && ok && opt.End != nil:
			opt.End(context.WithoutCancel(ctx))
		case opt.After == Quit && ok:
			c.Quit(context.WithoutCancel(ctx))
		}
	}()

	// Device state (and, without a shared memory file, all of RAM).
	mstart := time.Now()
	if err := c.SetMigrationCapabilities(ctx, map[string]bool{migstream.CapIgnoreShared: memFile != "", "events": true}); err != nil {
		return nil, err
	}
	if err := c.SetMigrationParameters(ctx, qmpctl.UnthrottledMigration()); err != nil {
		return nil, err
	}
	// QEMU connects to a socket of ours: in the instance's run folder, or
	// in a temporary folder removed as soon as QEMU is connected (so a
	// killed capture leaves at most an empty folder behind for a moment).
	var dir string
	if opt.Instance != nil {
		dir = opt.Instance.RunDir
	} else if dir, err = os.MkdirTemp("", "vm-capture-"); err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "capture.sock")
	cleanupSock := func() {
		os.Remove(sock)
		if opt.Instance == nil {
			os.Remove(dir)
		}
	}
	defer cleanupSock()
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	if opt.Monitor != nil {
		// A QEMU that libvirt runs as its own user connects to it: the
		// folder's name is random and cannot be listed.
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
		if err := os.Chmod(sock, 0o666); err != nil {
			return nil, err
		}
	}
	defer ln.Close()
	if err := c.Migrate(ctx, "unix:"+sock); err != nil {
		return nil, fmt.Errorf("starting migration: %w", err)
	}
	conn, err := AcceptMigration(ctx, ln)
	if err != nil {
		return nil, fmt.Errorf("waiting for QEMU to connect the migration socket: %w", err)
	}
	ln.Close()
	cleanupSock()
	mem := newMemWriter(w, vm.MemSize)
	var dev bytes.Buffer
	var others []migstream.Page
	var othersBytes int
	info, splitErr := migstream.Split(conn, &dev, migstream.PageSinkFunc(func(p migstream.Page) error {
		if p.Block == main {
			if p.IsZero() {
				return mem.flush()
			}
			return mem.page(p.Offset, p.Data)
		}
		q := migstream.Page{Block: p.Block, Offset: p.Offset, Fill: p.Fill}
		if p.Data != nil {
			q.Data = bytes.Clone(p.Data)
			othersBytes += len(p.Data)
			if othersBytes > maxOtherRAM {
				return fmt.Errorf("more than %d MiB of RAM outside the main block %q; capture a VM with its RAM in one block", maxOtherRAM>>20, main)
			}
		}
		others = append(others, q)
		return nil
	}))
	conn.Close()
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	migErr := c.WaitMigration(wctx)
	cancel()
	if migErr != nil {
		return nil, fmt.Errorf("QEMU's migration did not complete (no stream is emitted from an incomplete migration): %w", migErr)
	}
	if splitErr != nil {
		return nil, fmt.Errorf("reading QEMU's migration stream: %w", splitErr)
	}
	if err := mem.flush(); err != nil {
		return nil, err
	}
	if memFile == "" {
		if _, ok := info.Block(main); !ok {
			return nil, fmt.Errorf("QEMU's migration stream has no RAM block %q", main)
		}
	}
	var devOut bytes.Buffer
	if err := migstream.Inject(bytes.NewReader(dev.Bytes()), &devOut, migstream.SlicePages(others)); err != nil {
		return nil, err
	}
	st.DevStateBytes = uint64(devOut.Len())
	if err := w.WriteDevState(devOut.Bytes()); err != nil {
		return nil, err
	}
	st.MigrateSecs = time.Since(mstart).Seconds()

	// Memory from the shared file.
	if memFile != "" {
		if err := readMemFile(memFile, vm.MemSize, mem); err != nil {
			return nil, err
		}
	}
	st.MemBytes = mem.bytes

	// Disk: what the top layer holds.
	top := opt.Disk
	if opt.Instance != nil {
		top = opt.Instance.DiskTop
	}
	if top != "" {
		if st.DiskBytes, err = captureDisk(ctx, top, w); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	ok = true
	st.Seconds = time.Since(start).Seconds()
	return st, nil
}

// maxOtherRAM caps the pages kept in memory for blocks other than the main
// one (ROMs and tables: a few MiB).
const maxOtherRAM = 256 << 20

// AcceptMigration waits (at most 30 s, or until ctx ends) for QEMU to connect
// the migration socket ln listens on.
func AcceptMigration(ctx context.Context, ln net.Listener) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { c, err := ln.Accept(); ch <- res{c, err} }()
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case r := <-ch:
		return r.c, r.err
	case <-ctx.Done():
		ln.Close()
		return nil, ctx.Err()
	case <-t.C:
		ln.Close()
		return nil, errors.New("timed out after 30s")
	}
}

// describe builds the VM description and says which RAM block is main
// memory and which file holds it (empty: RAM comes through migration).
func describe(ctx context.Context, c *qmpctl.Client, opt Options) (vm format.VMDesc, main, memFile string, err error) {
	if in := opt.Instance; in != nil {
		vm = in.VM
		if in.MemShared {
			memFile = in.MemPath
		}
		return vm, "mem", memFile, nil
	}
	// Any other QEMU: its devices first, so that one vm-resume cannot
	// recreate is refused before the VM stops.
	if vm.Devices, err = listDevices(ctx, c, opt.Disk); err != nil {
		return
	}
	vm.VMGenID = format.HasDriver(vm.Devices, format.DriverVMGenID)
	if vm.Machine, err = c.QueryMachine(ctx); err != nil {
		return
	}
	if vm.CPU, err = c.QueryCPUModel(ctx); err != nil {
		return
	}
	v, err := c.QueryVersion(ctx)
	if err != nil {
		return
	}
	vm.QEMUVersion = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	blocks, err := ramBlocks(ctx, c)
	if err != nil {
		return
	}
	vm.RAMBlocks = blocks
	for _, b := range blocks {
		if b.ID == "mem" || b.ID == "pc.ram" {
			main, vm.MemSize = b.ID, b.Size
			break
		}
	}
	if main == "" {
		err = fmt.Errorf("no main RAM block (pc.ram or mem) in %v", blocks)
		return
	}
	vm.Forwards = opt.Forwards
	if opt.Disk != "" {
		vm.DiskSize, vm.DiskBase, err = topInfo(ctx, opt.Disk)
		vm.DiskFormat = "raw"
	}
	return vm, main, "", err
}

var reBlockLine = regexp.MustCompile(`^\s*(\S+)\s+([0-9]+ [KMG]iB)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)`)

// ramBlocks reads QEMU's RAM blocks from HMP "info ramblock" (no QMP
// command lists them). Columns: Block Name, PSize, Offset, Used, Total.
func ramBlocks(ctx context.Context, c *qmpctl.Client) ([]format.RAMBlock, error) {
	out, err := c.HumanMonitorCommand(ctx, "info ramblock")
	if err != nil {
		return nil, err
	}
	var blocks []format.RAMBlock
	for _, line := range strings.Split(out, "\n") {
		m := reBlockLine.FindStringSubmatch(strings.TrimRight(line, "\r"))
		if m == nil {
			continue
		}
		used, err := strconv.ParseUint(m[4], 16, 64)
		if err != nil {
			continue
		}
		blocks = append(blocks, format.RAMBlock{ID: m[1], Size: used})
	}
	if len(blocks) == 0 {
		return nil, fmt.Errorf("no RAM blocks in QEMU's 'info ramblock' output: %q", out)
	}
	return blocks, nil
}

// TopInfo returns a qcow2 top layer's virtual size and its backing image's
// sha256 (the image its extents are relative to).
func topInfo(ctx context.Context, top string) (size uint64, backingSHA string, err error) {
	sz, backing, err := imageInfo(ctx, top)
	if err != nil {
		return 0, "", err
	}
	if backing != "" {
		if backingSHA, err = base.FileSHA256(backing); err != nil {
			return 0, "", err
		}
	}
	return uint64(sz), backingSHA, nil
}
