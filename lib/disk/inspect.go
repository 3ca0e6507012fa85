package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"unicode/utf8"
)

// Formats the tools take as a base image, as qemu-img names them.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// Image is a disk image checked by Inspect.
type Image struct {
	Path        string   // absolute
	Format      string   // FormatRaw or FormatQCOW2
	VirtualSize int64    // what the guest sees, in bytes
	Backing     []string // a qcow2's backing chain, nearest first (absolute paths)
}

// ImageError says what is wrong with a disk image a user gave.
type ImageError struct {
	Path string
	Msg  string
}

func (e *ImageError) Error() string { return fmt.Sprintf("image %s: %s", e.Path, e.Msg) }

func imageErr(path, f string, args ...any) error {
	return &ImageError{Path: path, Msg: fmt.Sprintf(f, args...)}
}

// infoEntry is one element of `qemu-img info --output=json --backing-chain`.
type infoEntry struct {
	Filename       string `json:"filename"`
	Format         string `json:"format"`
	VirtualSize    int64  `json:"virtual-size"`
	FullBacking    string `json:"full-backing-filename"`
	Backing        string `json:"backing-filename"`
	BackingFormat  string `json:"backing-filename-format"`
	Encrypted      bool   `json:"encrypted"`
	FormatSpecific struct {
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

var reMissing = regexp.MustCompile(`Could not open '([^']+)': (?:Could not open '[^']+': )?(.*)`)

// Inspect checks that path is a disk image the tools can use as a
// read-only base: a regular file in raw or qcow2 format (detected with
// qemu-img info; a given format must match what was detected), every file of a
// qcow2's backing chain present, and no running QEMU holding any of them
// for writing. Each refusal is an *ImageError naming the file and what was
// found.
func Inspect(ctx context.Context, path, format string) (*Image, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, imageErr(path, "%v", err)
	}
	st, err := os.Stat(abs)
	switch {
	case os.IsNotExist(err):
		return nil, imageErr(path, "no such file")
	case err != nil:
		return nil, imageErr(path, "%v", err)
	case st.IsDir():
		return nil, imageErr(path, "is a folder, not a disk image (give the image file itself)")
	case !st.Mode().IsRegular():
		return nil, imageErr(path, "is not a regular file (%s)", st.Mode().Type())
	case st.Size() == 0:
		return nil, imageErr(path, "is empty")
	}
	switch format {
	case "", FormatRaw, FormatQCOW2:
	default:
		return nil, imageErr(path, "format %q is not supported: give raw or qcow2", format)
	}
	out, err := runTool(ctx, "qemu-img", "info", "--output=json", "--backing-chain", "-U", abs)
	if err != nil {
		if m := reMissing.FindStringSubmatch(err.Error()); m != nil && m[1] != abs {
			return nil, imageErr(path, "its backing file %s cannot be opened (%s): restore it, or give an image whose backing chain is complete", m[1], strings.TrimSpace(m[2]))
		}
		return nil, imageErr(path, "qemu-img cannot read it as a disk image: %v", err)
	}
	var chain []infoEntry
	if err := json.Unmarshal(out, &chain); err != nil || len(chain) == 0 {
		return nil, imageErr(path, "unexpected qemu-img info output: %.200q", out)
	}
	top := chain[0]
	if format != "" && format != top.Format {
		return nil, imageErr(path, "is a %s image (qemu-img info), not %s as the given format says: a %s file used as %s shows the guest the wrong disk", top.Format, format, top.Format, format)
	}
	img := &Image{Path: abs, Format: top.Format, VirtualSize: top.VirtualSize}
	switch top.Format {
	case FormatRaw:
		if err := checkRaw(abs, st.Size()); err != nil {
			return nil, err
		}
	case FormatQCOW2:
	default:
		return nil, imageErr(path, "is a %s image; the tools take raw and qcow2: convert it first (qemu-img convert -O qcow2 %s %s.qcow2)", top.Format, path, strings.TrimSuffix(path, filepath.Ext(path)))
	}
	if top.VirtualSize <= 0 || top.VirtualSize%512 != 0 {
		return nil, imageErr(path, "virtual size %d is not a positive multiple of 512", top.VirtualSize)
	}
	files := []string{abs}
	for i, e := range chain {
		if e.Encrypted {
			return nil, imageErr(path, "%s is encrypted; the tools take unencrypted images", e.Filename)
		}
		if e.FormatSpecific.Data.Corrupt {
			return nil, imageErr(path, "%s is marked corrupt by qemu-img (repair it with qemu-img check -r all on a copy)", e.Filename)
		}
		if e.FormatSpecific.Data.DataFile != "" {
			return nil, imageErr(path, "%s keeps its data in an external data file (%s), which the tools do not follow", e.Filename, e.FormatSpecific.Data.DataFile)
		}
		if e.FullBacking == "" {
			continue
		}
		if i+1 >= len(chain) {
			return nil, imageErr(path, "its backing file %s is missing", e.FullBacking)
		}
		b := e.FullBacking
		if !filepath.IsAbs(b) {
			b = filepath.Join(filepath.Dir(files[len(files)-1]), b)
		}
		img.Backing = append(img.Backing, b)
		files = append(files, b)
	}
	for _, f := range files {
		if busy, err := WriteLocked(f); err != nil {
			return nil, imageErr(path, "checking QEMU's lock on %s: %v", f, err)
		} else if busy {
			what := "it"
			if f != abs {
				what = "its backing file " + f
			}
			return nil, imageErr(path, "%s is in use by a running QEMU that may write it (QEMU's write lock is held): stop that VM first, or give a copy", what)
		}
	}
	return img, nil
}

// checkRaw refuses files that qemu-img calls raw only because it calls
// everything raw: sizes that are no disk's, and text.
func checkRaw(path string, size int64) error {
	f, err := os.Open(path)
	if err != nil {
		return imageErr(path, "%v", err)
	}
	defer f.Close()
	head := make([]byte, 4096)
	n, _ := f.ReadAt(head, 0)
	head = head[:n]
	if looksText(head) {
		line, _, _ := bytes.Cut(head, []byte("\n"))
		return imageErr(path, "looks like a text file (it starts %.40q), not a disk image", line)
	}
	if size%512 != 0 {
		return imageErr(path, "is %d bytes, not a multiple of 512: not a disk image", size)
	}
	return nil
}

// looksText reports whether b is printable UTF-8 text (ignoring trailing
// zero bytes) with at least one line.
func looksText(b []byte) bool {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 || !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
	}
	return true
}

// QEMU's image locking (block/file-posix.c) takes OFD read locks on bytes
// 100+i for each permission bit i it holds; bit 1 is "write".
const (
	qemuLockWrite = 101
	fOFDGetlk     = 36 // F_OFD_GETLK
)

// WriteLocked reports whether some process (a running QEMU) holds QEMU's
// write permission lock on path.
func WriteLocked(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK, Whence: 0, Start: qemuLockWrite, Len: 1}
	if err := syscall.FcntlFlock(f.Fd(), fOFDGetlk, &lk); err != nil {
		return false, err
	}
	return lk.Type != syscall.F_UNLCK, nil
}

var reBootSig = regexp.MustCompile(`(?m)^000001fe:\s+([0-9a-f]{2}) ([0-9a-f]{2})\b`)

// Bootable reports whether the guest-visible disk of img ends its first
// sector with the 55 aa boot signature that a BIOS (and a GPT's protective
// MBR for UEFI) needs, reading through the image's format and backing chain
// with qemu-io. It returns the two bytes found.
func Bootable(ctx context.Context, img *Image) (bool, string, error) {
	out, err := runTool(ctx, "qemu-io", "-r", "-U", "-f", img.Format, "-c", "read -v 510 2", img.Path)
	if err != nil {
		return false, "", imageErr(img.Path, "reading its boot sector: %v", err)
	}
	m := reBootSig.FindSubmatch(out)
	if m == nil {
		return false, "", imageErr(img.Path, "unexpected qemu-io output reading its boot sector: %.200q", out)
	}
	got := string(m[1]) + " " + string(m[2])
	return got == "55 aa", got, nil
}
