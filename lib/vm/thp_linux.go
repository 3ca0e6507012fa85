package vm

import (
	"fmt"
	"runtime"
	"syscall"
	"unsafe"
)

// DisableHugePageAdvice makes madvise(MADV_HUGEPAGE) a no-op that reports
// success, for this process and every process it starts from now on (a
// seccomp filter, inherited across fork and exec, never lifted).
//
// QEMU advises huge pages on all guest RAM, and the kernel answers a page
// fault in a file mapping advised so by reading the whole 2 MiB around the
// page, whatever the file system's readahead limit: for RAM served on
// demand (early start) one fault would wait for 2 MiB of data still in
// flight, and an access log would record 2 MiB per touched page. Without
// the advice a fault reads the mount's readahead window.
//
// It needs CAP_SYS_ADMIN (root): seccomp filters otherwise need
// no_new_privs on every thread, which a Go process cannot set.
func DisableHugePageAdvice() error {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("vm: no seccomp audit arch for %s", runtime.GOARCH)
	}
	const (
		ldW       = 0x00 | 0x00 | 0x20 // BPF_LD | BPF_W | BPF_ABS
		jeqK      = 0x05 | 0x10 | 0x00 // BPF_JMP | BPF_JEQ | BPF_K
		retK      = 0x06 | 0x00        // BPF_RET | BPF_K
		retAllow  = 0x7fff0000         // SECCOMP_RET_ALLOW
		retErrno0 = 0x00050000         // SECCOMP_RET_ERRNO with errno 0: "success"
		madvHuge  = 14                 // MADV_HUGEPAGE
		offNr     = 0                  // struct seccomp_data
		offArch   = 4
		offArg2   = 16 + 2*8 // low 32 bits (little-endian)
	)
	prog := []sockFilter{
		{ldW, 0, 0, offArch},
		{jeqK, 0, 5, arch},
		{ldW, 0, 0, offNr},
		{jeqK, 0, 3, uint32(syscall.SYS_MADVISE)},
		{ldW, 0, 0, offArg2},
		{jeqK, 0, 1, madvHuge},
		{retK, 0, 0, retErrno0},
		{retK, 0, 0, retAllow},
	}
	fp := sockFprog{len: uint16(len(prog)), filter: &prog[0]}
	const (
		sysSeccomp      = sysSeccompNr
		setModeFilter   = 1 // SECCOMP_SET_MODE_FILTER
		filterFlagTsync = 1 // SECCOMP_FILTER_FLAG_TSYNC: every thread
	)
	if _, _, e := syscall.Syscall(sysSeccomp, setModeFilter, filterFlagTsync, uintptr(unsafe.Pointer(&fp))); e != 0 {
		return fmt.Errorf("vm: seccomp filter against MADV_HUGEPAGE: %w", e)
	}
	runtime.KeepAlive(prog)
	return nil
}

type sockFilter struct {
	code uint16
	jt   uint8
	jf   uint8
	k    uint32
}

type sockFprog struct {
	len    uint16
	filter *sockFilter
}

var auditArch = map[string]uint32{"amd64": 0xC000003E, "arm64": 0xC00000B7}
