package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Extent is a byte range of a disk image.
type Extent struct {
	Offset int64
	Length int64
	Data   bool // the range holds data
	Zero   bool // the range reads as zeroes (a qcow2 zero cluster when !Data)
}

// End returns Offset + Length.
func (e Extent) End() int64 { return e.Offset + e.Length }

// runTool runs a QEMU tool and returns its stdout; a failure names the
// command and carries its stderr.
func runTool(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[:2000] + "..."
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// CreateTop creates TOP as a qcow2 copy-on-write layer over the image BASE
// of format baseFormat ("raw" when empty; "qcow2" keeps its own backing
// chain): qemu-img create -f qcow2 -b BASE -F FORMAT TOP. BASE must be an
// absolute path, since it is recorded in TOP; it is never written.
func CreateTop(ctx context.Context, base, baseFormat, top string) error {
	if !filepath.IsAbs(base) {
		return fmt.Errorf("disk: base image %q is not an absolute path", base)
	}
	if _, err := os.Stat(base); err != nil {
		return fmt.Errorf("disk: base image: %w", err)
	}
	switch baseFormat {
	case "":
		baseFormat = FormatRaw
	case FormatRaw, FormatQCOW2:
	default:
		return fmt.Errorf("disk: base image format %q: want raw or qcow2", baseFormat)
	}
	top, err := filepath.Abs(top)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if _, err := runTool(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", baseFormat, top); err != nil {
		return fmt.Errorf("disk: creating top layer: %w", err)
	}
	return nil
}

// mapEntry is one element of `qemu-img map --output=json`.
type mapEntry struct {
	Start  int64 `json:"start"`
	Length int64 `json:"length"`
	Depth  int   `json:"depth"`
	Zero   bool  `json:"zero"`
	Data   bool  `json:"data"`
}

// Extents lists the ranges allocated in the top layer of the qcow2 image
// TOP (depth 0 of `qemu-img map -U --output=json`), adjacent ranges with the
// same flags merged. Ranges come at qcow2 cluster granularity; a range
// zeroed in TOP over base data is reported with Zero set and Data clear.
// -U lets it read an image that a running QEMU holds open.
func Extents(ctx context.Context, top string) ([]Extent, error) {
	top, err := filepath.Abs(top)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	out, err := runTool(ctx, "qemu-img", "map", "-U", "-f", "qcow2", "--output=json", top)
	if err != nil {
		return nil, fmt.Errorf("disk: mapping top layer: %w", err)
	}
	return parseMap(out)
}

func parseMap(out []byte) ([]Extent, error) {
	var entries []mapEntry
	if err := json.Unmarshal(out, &entries); err != nil {
		return nil, fmt.Errorf("disk: parsing qemu-img map output: %w", err)
	}
	var exts []Extent
	var prevEnd int64
	for i, e := range entries {
		if e.Start < prevEnd || e.Length <= 0 {
			return nil, fmt.Errorf("disk: qemu-img map entry %d (start %d, length %d) out of order", i, e.Start, e.Length)
		}
		prevEnd = e.Start + e.Length
		if e.Depth != 0 {
			continue
		}
		exts = appendMerged(exts, Extent{Offset: e.Start, Length: e.Length, Data: e.Data, Zero: e.Zero})
	}
	return exts, nil
}

// appendMerged appends e, merging it into the last extent when they touch
// and carry the same flags.
func appendMerged(exts []Extent, e Extent) []Extent {
	if n := len(exts); n > 0 {
		last := &exts[n-1]
		if last.End() == e.Offset && last.Data == e.Data && last.Zero == e.Zero {
			last.Length += e.Length
			return exts
		}
	}
	return append(exts, e)
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// RawDataExtents lists the data extents (Data set) of a raw image file with
// SEEK_DATA/SEEK_HOLE; holes are left out. The granularity is the file
// system's; a file system without hole support reports the whole file as
// data.
func RawDataExtents(path string) ([]Extent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	size := fi.Size()
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	var exts []Extent
	var serr error
	cerr := rc.Control(func(fd uintptr) {
		for off := int64(0); off < size; {
			start, err := syscall.Seek(int(fd), off, seekData)
			if errors.Is(err, syscall.ENXIO) {
				return // no data after off
			}
			if errors.Is(err, syscall.EINVAL) && off == 0 {
				exts = []Extent{{Offset: 0, Length: size, Data: true}}
				return
			}
			if err != nil {
				serr = fmt.Errorf("disk: SEEK_DATA %s at %d: %w", path, off, err)
				return
			}
			end, err := syscall.Seek(int(fd), start, seekHole)
			if err != nil {
				serr = fmt.Errorf("disk: SEEK_HOLE %s at %d: %w", path, start, err)
				return
			}
			end = min(end, size)
			if end <= start {
				serr = fmt.Errorf("disk: SEEK_HOLE %s at %d returned %d", path, start, end)
				return
			}
			exts = appendMerged(exts, Extent{Offset: start, Length: end - start, Data: true})
			off = end
		}
	})
	if cerr != nil {
		return nil, fmt.Errorf("disk: %w", cerr)
	}
	if serr != nil {
		return nil, serr
	}
	return exts, nil
}

// limitedBuffer keeps the first max bytes written to it; safe for
// concurrent use.
type limitedBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
}

func newLimitedBuffer(max int) *limitedBuffer { return &limitedBuffer{max: max} }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - len(b.buf); room > 0 {
		b.buf = append(b.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(string(b.buf))
}

var _ io.Writer = (*limitedBuffer)(nil)
