package base

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"

	"cloudlet/format"
)

// CreateOptions say where Create finds what a full stream only names.
type CreateOptions struct {
	Name    string
	Image   string   // the disk image the stream's disk records are relative to (sha256 = disk_base)
	KitDirs []string // folders searched for the kernel, initrd and firmware named by sha256
	// BootFiles are files searched first, whatever their names: the
	// kernel and initrd the VM booted, given by path. Create copies the
	// ones the VM description names into the base folder.
	BootFiles []string
	Windows   bool // index the base disk at 512-byte steps too
	// ExpectID, when set, is the ID the new base must have (an import
	// checks the export's claim); a mismatch removes the new folder.
	ExpectID string
	// Limits are checked against the stream's HEADER before anything is
	// written (zero values: no limit; DefaultLimits are the host's).
	Limits Limits
}

// Create makes a base folder dir from a full stream (vm-capture's output).
// It builds everything in a temporary folder next to dir and renames it into
// place only when complete, so a failed Create leaves nothing behind.
func Create(dir string, r *format.Reader, opt CreateOptions) (*Meta, error) {
	h, err := r.Header()
	if err != nil {
		return nil, err
	}
	if h.Kind != format.KindFull {
		return nil, fmt.Errorf("a base is made from a full stream (vm-capture's output), not a %s stream", h.Kind)
	}
	if err := opt.Limits.check(h.VM); err != nil {
		return nil, err
	}
	if err := usedBootFiles(h.VM, opt.BootFiles); err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); err == nil {
		return nil, fmt.Errorf("%s already exists; bases are read-only once made, choose another folder", dir)
	}
	parent := filepath.Dir(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tmp-")
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			os.RemoveAll(tmp)
		}
	}()
	meta, err := build(tmp, h, r, opt)
	if err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, err
	}
	ok = true
	return meta, nil
}

func build(tmp string, h *format.Header, r *format.Reader, opt CreateOptions) (*Meta, error) {
	vm := h.VM
	disk := filepath.Join(tmp, DiskFile)
	if h.VM.DiskSize > 0 && vm.DiskBase == "" {
		// A whole disk (a base export): absent ranges are zero.
		if err := os.WriteFile(disk, nil, 0o644); err != nil {
			return nil, err
		}
		if err := os.Truncate(disk, int64(vm.DiskSize)); err != nil {
			return nil, err
		}
	} else if h.VM.DiskSize > 0 {
		if opt.Image == "" {
			return nil, fmt.Errorf("the stream's disk is relative to image %s: give --image PATH", short(vm.DiskBase))
		}
		if vm.DiskBase != "" {
			sum, err := FileSHA256(opt.Image)
			if err != nil {
				return nil, err
			}
			if sum != vm.DiskBase {
				return nil, fmt.Errorf("image %s has sha256 %s; the stream's disk is relative to %s", opt.Image, sum, vm.DiskBase)
			}
		}
		// A base disk is raw (the diff stages map it): a qcow2 image,
		// with its backing chain, is converted; a raw one copied sparsely.
		cmd := exec.Command("cp", "--sparse=always", "--reflink=auto", opt.Image, disk)
		switch vm.DiskFormat {
		case "", "raw":
		case "qcow2":
			cmd = exec.Command("qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", opt.Image, disk)
		default:
			return nil, fmt.Errorf("the stream's disk image format %q is not raw or qcow2", vm.DiskFormat)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("copying %s: %v: %s", opt.Image, err, bytes.TrimSpace(out))
		}
		if err := os.Chmod(disk, 0o644); err != nil {
			return nil, err
		}
	}
	df, err := os.OpenFile(disk, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer df.Close()
	if st, _ := df.Stat(); uint64(st.Size()) != vm.DiskSize {
		return nil, fmt.Errorf("image %s is %d bytes; the stream's disk is %d", opt.Image, st.Size(), vm.DiskSize)
	}
	mf, err := os.Create(filepath.Join(tmp, MemFile))
	if err != nil {
		return nil, err
	}
	defer mf.Close()
	if err := mf.Truncate(int64(vm.MemSize)); err != nil {
		return nil, err
	}
	dev, err := os.Create(filepath.Join(tmp, DevStateFile))
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	// The digests are taken as the data arrives (a base export's records
	// come in offset order), so nothing is read back and a base whose ID
	// cannot match is refused at END.
	whole := h.VM.DiskSize > 0 && vm.DiskBase == ""
	memH, diskH, devH := newSeqHash(vm.MemSize), newSeqHash(vm.DiskSize), sha256.New()
	if !whole {
		diskH.broken = true // the image's bytes are under the records: hashed from the file
	}
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if skip, err := format.CheckKnown(rec); err != nil {
			return nil, err
		} else if skip {
			continue
		}
		switch rec.Type {
		case format.TypeDevState:
			devH.Write(rec.Payload)
			_, err = dev.Write(rec.Payload)
		case format.TypeMem:
			off, data, _ := rec.DataRecord()
			memH.write(off, data)
			_, err = mf.WriteAt(data, int64(off))
		case format.TypeMemZero:
			// mem.ram starts zero and each range is written at most once.
		case format.TypeDisk:
			off, data, _ := rec.DataRecord()
			diskH.write(off, data)
			_, err = df.WriteAt(data, int64(off))
		case format.TypeFile:
			err = writeBootFile(tmp, vm, rec)
		case format.TypeDiskZero:
			// A whole disk starts as a hole of its size, and each range
			// is written at most once: nothing to do. Over an image,
			// the range becomes a hole; zero bytes are never written.
			if !whole {
				off, n, _ := rec.ZeroRecord()
				err = punchHole(df, off, n)
			}
		default:
			err = fmt.Errorf("unexpected %s record in a full stream", rec.Type)
		}
		if err != nil {
			return nil, err
		}
	}
	meta := &Meta{Name: opt.Name, VM: vm, Windows: opt.Windows, Producer: "cloudlet-base create"}
	// The zeros after the last record of each file are hashed at once,
	// side by side (a large empty VM costs the longer of the two).
	sums := [3][]byte{nil, nil, devH.Sum(nil)}
	var wg sync.WaitGroup
	wg.Go(func() { sums[0] = diskH.sum() })
	sums[1] = memH.sum()
	wg.Wait()
	for i, f := range []string{DiskFile, MemFile} {
		if sums[i] == nil { // written out of order: hash the file
			if sums[i], err = fileSHA(filepath.Join(tmp, f)); err != nil {
				return nil, err
			}
		}
	}
	meta.DiskSHA, meta.MemSHA, meta.DevSHA = hex.EncodeToString(sums[0]), hex.EncodeToString(sums[1]), hex.EncodeToString(sums[2])
	meta.ID = ComputeID(sums[0], sums[1], sums[2])
	if opt.ExpectID != "" && meta.ID != opt.ExpectID {
		return nil, fmt.Errorf("the rebuilt base has ID %s, but the stream says %s: it is corrupt or was altered; nothing was kept", meta.ID, opt.ExpectID)
	}
	for _, f := range []*os.File{mf, df, dev} {
		if err := f.Sync(); err != nil {
			return nil, err
		}
	}
	files := BootFiles(vm)
	for _, name := range BootFileNames {
		sum, ok := files[name]
		if !ok {
			continue
		}
		dst := filepath.Join(tmp, name)
		if _, err := os.Stat(dst); err == nil { // carried by the stream
			if got, err := FileSHA256(dst); err != nil || got != sum {
				return nil, fmt.Errorf("the stream's %s has sha256 %s; its VM description says %s", name, short(got), short(sum))
			}
			continue
		}
		src, err := FindBootFile(sum, name, opt.KitDirs, opt.BootFiles...)
		if err != nil {
			return nil, err
		}
		if err := CopyFile(src, dst); err != nil {
			return nil, err
		}
	}
	meta.VM.DiskBase, meta.VM.DiskFormat = meta.DiskSHA, "raw"
	if err := WriteMeta(tmp, meta); err != nil {
		return nil, err
	}
	b, err := Open(tmp)
	if err != nil {
		return nil, err
	}
	defer b.Close()
	if err := BuildIndex(b.Mem, b.Disk, opt.Windows).WriteFile(filepath.Join(tmp, IndexFile)); err != nil {
		return nil, err
	}
	return meta, seal(tmp)
}

// usedBootFiles checks that each of files is a boot file the VM
// description names, so a wrong --kernel or --initrd is an error, not
// ignored.
func usedBootFiles(vm format.VMDesc, files []string) error {
	want := BootFiles(vm)
	for _, f := range files {
		sum, err := FileSHA256(f)
		if err != nil {
			return err
		}
		if !slices.Contains(slices.Collect(maps.Values(want)), sum) {
			booted := "through its own bootloader (no kernel given to QEMU)"
			if vm.Kernel != "" {
				booted = "a kernel of sha256 " + short(vm.Kernel)
				if vm.Initrd != "" {
					booted += " and an initrd of sha256 " + short(vm.Initrd)
				}
			}
			return fmt.Errorf("%s (sha256 %s) is not a file the VM booted: it booted %s", f, short(sum), booted)
		}
	}
	return nil
}

// writeBootFile writes a FILE record's chunk into the boot file it names
// in the new base folder tmp; only the files the VM description names are
// accepted.
func writeBootFile(tmp string, vm format.VMDesc, rec *format.Record) error {
	f, err := rec.FileRecord()
	if err != nil {
		return err
	}
	if _, ok := BootFiles(vm)[f.Name]; !ok {
		return fmt.Errorf("the stream carries a file %q that its VM description does not name", f.Name)
	}
	out, err := os.OpenFile(filepath.Join(tmp, f.Name), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	if _, err := out.WriteAt(f.Data, int64(f.Offset)); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// WriteMeta writes base.json into dir.
func WriteMeta(dir string, m *Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, MetaFile), append(b, '\n'), 0o644)
}

// seal makes every file of the base read-only.
func seal(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.Chmod(filepath.Join(dir, e.Name()), 0o444); err != nil {
			return err
		}
	}
	return os.Chmod(dir, 0o755)
}

// CopyFile copies src to a new file dst.
func CopyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// SHA256Hex returns the hex sha256 of b.
func SHA256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// WriteResumeStream writes the stream that resumes the base unchanged: a
// diff stream relative to the base holding only its device state. Piped
// into vm-resume, it brings the base VM back (to customize it before
// capturing an overlay).
func (b *Base) WriteResumeStream(w *format.Writer) error {
	dev, err := os.ReadFile(b.Path(DevStateFile))
	if err != nil {
		return err
	}
	if err := w.WriteHeader(&format.Header{Kind: format.KindDiff, VM: b.Meta.VM, BaseID: b.ID(), MemRelative: true, Producer: []string{"cloudlet-base stream"}}); err != nil {
		return err
	}
	if err := w.WriteDevState(dev); err != nil {
		return err
	}
	return w.Close()
}
