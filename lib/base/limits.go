package base

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"cloudlet/format"
)

// Limits bound the memory and disk a stream may declare before Create
// writes anything: a base export of a few hundred bytes can claim 16 TiB.
// Zero means no limit.
type Limits struct {
	MaxMem, MaxDisk uint64
}

// DefaultLimits are the host's: memory no larger than its RAM (such a base
// could not be resumed here), disk no larger than the free space of the
// file system that will hold dir (the worst case of a disk that is all
// data).
func DefaultLimits(dir string) (Limits, error) {
	var si syscall.Sysinfo_t
	if err := syscall.Sysinfo(&si); err != nil {
		return Limits{}, err
	}
	var l Limits
	l.MaxMem = uint64(si.Totalram) * uint64(si.Unit)
	p := filepath.Clean(dir)
	for { // the nearest folder that exists
		if _, err := os.Stat(p); err == nil || p == filepath.Dir(p) {
			break
		}
		p = filepath.Dir(p)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(p, &fs); err != nil {
		return Limits{}, err
	}
	l.MaxDisk = fs.Bavail * uint64(fs.Bsize)
	return l, nil
}

// check refuses a VM larger than the limits.
func (l Limits) check(vm format.VMDesc) error {
	if l.MaxMem > 0 && vm.MemSize > l.MaxMem {
		return fmt.Errorf("the stream declares %d bytes of memory, more than this cloudlet takes (%d bytes, --max-mem; default: the host's RAM); nothing was written", vm.MemSize, l.MaxMem)
	}
	if l.MaxDisk > 0 && vm.DiskSize > l.MaxDisk {
		return fmt.Errorf("the stream declares a disk of %d bytes, more than this cloudlet takes (%d bytes, --max-disk; default: the free space where the base goes); nothing was written", vm.DiskSize, l.MaxDisk)
	}
	return nil
}
