// Package guestmem reads and writes the guest RAM of a running QEMU from
// another process, through process_vm_readv(2) and process_vm_writev(2).
//
// vm-resume uses it to put a synthesized VM's changed pages straight into
// the RAM QEMU maps privately (share=off) from the base memory file, while
// QEMU waits in its incoming migration: one copy per page, instead of
// writing each page into the migration socket for QEMU to read and copy
// again. A write to a private file mapping is copy-on-write as if QEMU had
// written it, so the base file never changes. The caller needs ptrace
// access to QEMU (root, or QEMU being its child under Yama's default
// ptrace_scope 1); Find fails otherwise, and the caller falls back to the
// migration stream.
package guestmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// RAM is one memory mapping of another process.
type RAM struct {
	pid  int
	addr uintptr
	size int64
}

// Find locates the mapping of file path (offset 0, size bytes) in process
// pid, as QEMU's memory-backend-file maps it, and checks that this process
// may write it.
func Find(pid int, path string, size int64) (*RAM, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, fmt.Errorf("guestmem: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fs := strings.Fields(sc.Text())
		if len(fs) < 6 || strings.Join(fs[5:], " ") != path || fs[2] != "00000000" {
			continue
		}
		lo, hi, ok := strings.Cut(fs[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || int64(end-start) != size || !strings.HasPrefix(fs[1], "rw") {
			continue
		}
		r := &RAM{pid: pid, addr: uintptr(start), size: size}
		// A zero-length read checks nothing; read one byte to learn
		// whether this process may access QEMU's memory at all.
		var b [1]byte
		if _, err := r.ReadAt(b[:], 0); err != nil {
			return nil, err
		}
		return r, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("guestmem: /proc/%d/maps: %w", pid, err)
	}
	return nil, fmt.Errorf("guestmem: process %d has no writable %d-byte mapping of %s", pid, size, path)
}

// Size is the mapping's length in bytes.
func (r *RAM) Size() int64 { return r.size }

// WriteAt writes p at offset off of the mapping.
func (r *RAM) WriteAt(p []byte, off int64) (int, error) {
	return r.transfer(sysProcessVMWritev, "write", p, off)
}

// ReadAt reads len(p) bytes at offset off of the mapping.
func (r *RAM) ReadAt(p []byte, off int64) (int, error) {
	return r.transfer(sysProcessVMReadv, "read", p, off)
}

// iovec is struct iovec; the remote one holds an address in the other
// process, which must not pass through an unsafe.Pointer.
type iovec struct {
	base uintptr
	len  uint64
}

var zeros [1 << 16]byte

// Zero makes [off, off+n) of the mapping zero.
func (r *RAM) Zero(off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := r.WriteAt(zeros[:k], off); err != nil {
			return err
		}
		off, n = off+k, n-k
	}
	return nil
}

func (r *RAM) transfer(trap uintptr, what string, p []byte, off int64) (int, error) {
	if off < 0 || off > r.size || int64(len(p)) > r.size-off {
		return 0, fmt.Errorf("guestmem: %s of %d bytes at %d outside the %d-byte mapping", what, len(p), off, r.size)
	}
	done := 0
	for done < len(p) {
		local := iovec{base: uintptr(unsafe.Pointer(&p[done])), len: uint64(len(p) - done)}
		remote := iovec{base: r.addr + uintptr(off) + uintptr(done), len: uint64(len(p) - done)}
		n, _, e := syscall.Syscall6(trap, uintptr(r.pid),
			uintptr(unsafe.Pointer(&local)), 1, uintptr(unsafe.Pointer(&remote)), 1, 0)
		runtime.KeepAlive(p)
		if e != 0 {
			if e == syscall.EINTR {
				continue
			}
			return done, fmt.Errorf("guestmem: %s of %d bytes at %d in process %d: %w", what, len(p)-done, off+int64(done), r.pid, e)
		}
		if n == 0 {
			return done, fmt.Errorf("guestmem: %s at %d in process %d: %w", what, off+int64(done), r.pid, errors.New("no progress"))
		}
		done += int(n)
	}
	return done, nil
}
