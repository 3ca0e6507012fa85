package capture

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/disk"
)

// memWriter coalesces consecutive non-zero pages into MEM records.
type memWriter struct {
	w     *format.Writer
	size  uint64
	off   uint64
	buf   []byte
	bytes uint64
}

func newMemWriter(w *format.Writer, size uint64) *memWriter {
	return &memWriter{w: w, size: size, buf: make([]byte, 0, format.MaxRecordData)}
}

func (m *memWriter) page(off uint64, p []byte) error {
	if off+uint64(len(p)) > m.size {
		return fmt.Errorf("page at %d is beyond the VM's %d bytes of RAM", off, m.size)
	}
	if len(m.buf) > 0 && (m.off+uint64(len(m.buf)) != off || len(m.buf)+len(p) > cap(m.buf)) {
		if err := m.flush(); err != nil {
			return err
		}
	}
	if len(m.buf) == 0 {
		m.off = off
	}
	m.buf = append(m.buf, p...)
	m.bytes += uint64(len(p))
	return nil
}

func (m *memWriter) flush() error {
	if len(m.buf) == 0 {
		return nil
	}
	err := m.w.WriteMem(m.off, m.buf)
	m.buf = m.buf[:0]
	return err
}

// readMemFile writes the non-zero pages of a RAM file, skipping holes.
func readMemFile(path string, size uint64, m *memWriter) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	exts, err := disk.RawDataExtents(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	for _, e := range exts {
		for off := uint64(e.Offset) &^ (format.PageSize - 1); off < uint64(e.End()) && off < size; {
			n := min(uint64(len(buf)), uint64(e.End())-off, size-off)
			n = (n + format.PageSize - 1) &^ (format.PageSize - 1)
			got, err := f.ReadAt(buf[:n], int64(off))
			if err != nil && err != io.EOF {
				return err
			}
			clear(buf[got:n])
			for p := uint64(0); p < n; p += format.PageSize {
				pg := buf[p : p+format.PageSize]
				if base.IsZero(pg) {
					if err := m.flush(); err != nil {
						return err
					}
					continue
				}
				if err := m.page(off+p, pg); err != nil {
					return err
				}
			}
			off += n
		}
	}
	return m.flush()
}

// captureDisk writes the extents held by the qcow2 top layer: data as DISK
// records (all-zero chunks as DISK_ZERO), zero clusters as DISK_ZERO.
func captureDisk(ctx context.Context, top string, w *format.Writer) (uint64, error) {
	exts, err := disk.Extents(ctx, top)
	if err != nil {
		return 0, err
	}
	var written uint64
	var srv *disk.Server
	defer func() {
		if srv != nil {
			srv.Close()
		}
	}()
	buf := make([]byte, format.MaxRecordData)
	for _, e := range exts {
		if !e.Data {
			if err := w.WriteDiskZero(uint64(e.Offset), uint64(e.Length)); err != nil {
				return written, err
			}
			continue
		}
		if srv == nil {
			if srv, err = disk.Serve(ctx, top, "qcow2", true); err != nil {
				return written, err
			}
		}
		for off := e.Offset; off < e.End(); {
			n := min(int64(len(buf)), e.End()-off)
			if _, err := srv.Client.ReadAt(buf[:n], off); err != nil {
				return written, fmt.Errorf("reading disk %s at %d: %w", top, off, err)
			}
			if base.IsZero(buf[:n]) {
				err = w.WriteDiskZero(uint64(off), uint64(n))
			} else {
				err = w.WriteDisk(uint64(off), buf[:n])
				written += uint64(n)
			}
			if err != nil {
				return written, err
			}
			off += n
		}
	}
	return written, nil
}

// imageInfo runs qemu-img info on an image a running QEMU may hold open.
func imageInfo(ctx context.Context, path string) (size int64, backing string, err error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return 0, "", fmt.Errorf("qemu-img info %s: %s", path, ee.Stderr)
		}
		return 0, "", err
	}
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Backing     string `json:"full-backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, "", err
	}
	return info.VirtualSize, info.Backing, nil
}
