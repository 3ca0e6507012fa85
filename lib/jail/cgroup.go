package jail

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"cloudlet/lib/vm"
)

// Limits are one instance's resource limits. Zero values set nothing.
type Limits struct {
	// MemOverhead caps the memory of the instance's processes (QEMU, the
	// early-start server, the proxy) at the guest's RAM plus this:
	// memory.limit_in_bytes (v1), memory.max (v2).
	MemOverhead uint64
	// CPUShares is the instance's CPU weight against the others (1024:
	// one share): cpu.shares (v1), cpu.weight (v2, shares*100/1024).
	CPUShares int
	// CPUs caps the CPU time at this many cores (cfs quota, cpu.max).
	CPUs float64
	// Pids caps processes and threads: pids.max.
	Pids int
	// FileBytes caps each file QEMU writes (its run folder: the disk's
	// top layer, the console log, its log): RLIMIT_FSIZE, set on QEMU
	// once it runs, with SIGXFSZ ignored, so a write past it fails with
	// EFBIG (the guest sees a disk error; the log stops growing).
	FileBytes uint64
}

// MemOverhead is what QEMU needs besides guest RAM by default: measured
// at 50-90 MB resident on a 256 MiB TCG guest, with room for the
// translation cache and the early-start server.
const MemOverhead = 256 << 20

// DefaultLimits are the limits of an instance when the operator sets
// none: its RAM plus MemOverhead, one CPU share (an equal part of the
// host under contention), 512 pids, 4 GiB per file.
func DefaultLimits() Limits {
	return Limits{MemOverhead: MemOverhead, CPUShares: 1024, Pids: 512, FileBytes: 4 << 30}
}

const cgroupRoot = "/sys/fs/cgroup"

// cgroupV2 reports whether the host has the unified hierarchy.
func cgroupV2() bool {
	_, err := os.Stat(filepath.Join(cgroupRoot, "cgroup.controllers"))
	return err == nil
}

// limit puts this process into a new cgroup cloudlet/NAME with l's limits
// (its children, QEMU among them, are born in it) and notes the file cap
// for Started.
func (j *Jail) limit(name string, memMiB int, l Limits) error {
	if l.FileBytes > 0 {
		// QEMU gets the cap once it runs (Started), after it made its
		// memory file; ignoring SIGXFSZ is inherited across exec, so a
		// write past the cap fails instead of killing QEMU.
		signal.Ignore(syscall.SIGXFSZ)
		j.FileCap = l.FileBytes
	}
	if l.MemOverhead == 0 && l.CPUShares == 0 && l.CPUs == 0 && l.Pids == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return errors.New("per-instance limits need root (they make a cgroup); run as root or set no limits")
	}
	type knob struct{ ctrl, file, value string }
	var knobs []knob
	v2 := cgroupV2()
	if l.MemOverhead > 0 {
		mem := strconv.FormatUint(uint64(max(memMiB, vm.DefaultMemMiB))<<20+l.MemOverhead, 10)
		if v2 {
			knobs = append(knobs, knob{"", "memory.max", mem})
		} else {
			knobs = append(knobs, knob{"memory", "memory.limit_in_bytes", mem})
		}
	}
	if l.CPUShares > 0 {
		if v2 {
			knobs = append(knobs, knob{"", "cpu.weight", strconv.Itoa(min(max(l.CPUShares*100/1024, 1), 10000))})
		} else {
			knobs = append(knobs, knob{"cpu", "cpu.shares", strconv.Itoa(max(l.CPUShares, 2))})
		}
	}
	if l.CPUs > 0 {
		quota := strconv.Itoa(int(l.CPUs * 100000))
		if v2 {
			knobs = append(knobs, knob{"", "cpu.max", quota + " 100000"})
		} else {
			knobs = append(knobs, knob{"cpu", "cpu.cfs_period_us", "100000"}, knob{"cpu", "cpu.cfs_quota_us", quota})
		}
	}
	if l.Pids > 0 {
		knobs = append(knobs, knob{"pids", "pids.max", strconv.Itoa(l.Pids)})
	}
	dirs := map[string]string{} // controller -> folder
	for _, k := range knobs {
		ctrl := k.ctrl
		if v2 {
			ctrl = ""
		}
		d, ok := dirs[ctrl]
		if !ok {
			parent := filepath.Join(cgroupRoot, ctrl, "cloudlet")
			if v2 {
				enable(cgroupRoot)
				if err := os.MkdirAll(parent, 0o755); err != nil {
					return err
				}
				enable(parent)
			}
			d = filepath.Join(parent, name)
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("making cgroup %s: %w (is the %s controller mounted?)", d, err, k.ctrl)
			}
			dirs[ctrl] = d
			j.Cgroups = append(j.Cgroups, d)
		}
		if err := os.WriteFile(filepath.Join(d, k.file), []byte(k.value), 0o644); err != nil {
			return fmt.Errorf("cgroup %s: setting %s to %s: %w", d, k.file, k.value, err)
		}
	}
	for _, d := range j.Cgroups {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", d, err)
		}
	}
	return nil
}

// capFiles caps the size of the files process pid writes (prlimit
// RLIMIT_FSIZE).
func capFiles(pid int, n uint64) error {
	lim := syscall.Rlimit{Cur: n, Max: n}
	if _, _, e := syscall.RawSyscall6(syscall.SYS_PRLIMIT64, uintptr(pid), syscall.RLIMIT_FSIZE, uintptr(unsafe.Pointer(&lim)), 0, 0, 0); e != 0 {
		return fmt.Errorf("capping the files of pid %d at %d bytes: %w", pid, n, e)
	}
	return nil
}

// enable turns on the memory, cpu and pids controllers for the children
// of a v2 cgroup folder (best effort: one the kernel lacks stays off, and
// the limit that needs it then fails clearly).
func enable(dir string) {
	for _, c := range []string{"memory", "cpu", "pids"} {
		os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+"+c), 0o644)
	}
}

// unlimit removes the instance's cgroups once the processes in them are
// gone (this process leaves them first), waiting up to 5 s for QEMU's
// exit.
func (j *Jail) unlimit() {
	for _, d := range j.Cgroups {
		if inCgroup(d) { // back to the root of the hierarchy
			os.WriteFile(filepath.Join(rootOf(d), "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o644)
		}
		for i := 0; i < 250; i++ {
			if err := os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// rootOf returns the root of the hierarchy that cgroup folder d is in.
func rootOf(d string) string {
	rel, err := filepath.Rel(cgroupRoot, d)
	if err != nil || cgroupV2() {
		return cgroupRoot
	}
	return filepath.Join(cgroupRoot, strings.SplitN(rel, string(filepath.Separator), 2)[0])
}

// inCgroup reports whether this process is in cgroup folder d.
func inCgroup(d string) bool {
	b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
	if err != nil {
		return false
	}
	me := strconv.Itoa(os.Getpid())
	for _, l := range strings.Fields(string(b)) {
		if l == me {
			return true
		}
	}
	return false
}
