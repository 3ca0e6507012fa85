package resume

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"cloudlet/lib/instance"
	"cloudlet/lib/vm"
)

// InstanceOverheadMiB is what one more instance costs the host beyond the
// memory its guest changes: QEMU itself, its page tables and the
// migration's buffers (measured: ~267 MB PSS for ~230 MB of changed memory).
const InstanceOverheadMiB = 64

// Admission says how much a cloudlet takes on. The zero value admits all.
type Admission struct {
	// MaxInstances caps the instances running or being made under the run
	// root (0: no cap).
	MaxInstances int
	// ReserveMiB is host memory that must stay available after another
	// instance's overhead (0: no memory check).
	ReserveMiB int
}

// AdmissionError is a refusal: the cloudlet is full.
type AdmissionError struct{ Msg string }

func (e *AdmissionError) Error() string { return e.Msg }

// admit decides, under a lock on root, whether one more instance may start,
// and if so claims dir (creates it with the owner file) before releasing
// the lock, so that concurrent vm-resumes count each other.
func (a Admission) admit(root, dir string) error {
	if a.MaxInstances <= 0 && a.ReserveMiB <= 0 {
		return claimRunDir(dir)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	// The lock is on the run root folder itself: nothing to create or leave.
	lk, err := os.Open(root)
	if err != nil {
		return err
	}
	defer lk.Close()
	if err := syscall.Flock(int(lk.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	if a.MaxInstances > 0 {
		if n := countInstances(root); n >= a.MaxInstances {
			return &AdmissionError{fmt.Sprintf("the cloudlet is full: %d instances run or are starting under %s (--max-instances %d); stop one (vm-resume stop RUN) or raise the limit", n, root, a.MaxInstances)}
		}
	}
	if a.ReserveMiB > 0 {
		avail, err := memAvailableMiB()
		if err != nil {
			return err
		}
		if need := InstanceOverheadMiB + a.ReserveMiB; avail < need {
			return &AdmissionError{fmt.Sprintf("the host has %d MiB of memory available; another instance needs about %d MiB and %d MiB must stay free (--reserve-mib): refused rather than risk the kernel killing running instances", avail, InstanceOverheadMiB, a.ReserveMiB)}
		}
	}
	return claimRunDir(dir)
}

// countInstances counts the run folders under root whose QEMU runs or
// whose vm-resume is still making them.
func countInstances(root string) int {
	ents, _ := os.ReadDir(root)
	n := 0
	for _, e := range ents {
		d := filepath.Join(root, e.Name())
		if !e.IsDir() {
			continue
		}
		if pid, err := vm.ReadPid(filepath.Join(d, OwnerFile)); err == nil && vm.Alive(pid) {
			n++ // being made
			continue
		}
		if _, err := os.Stat(filepath.Join(d, instance.FileName)); err != nil {
			continue
		}
		if pid, err := vm.ReadPid(filepath.Join(d, vm.PidFileName)); err == nil && vm.Alive(pid) {
			n++
		}
	}
	return n
}

// memAvailableMiB reads MemAvailable from /proc/meminfo.
func memAvailableMiB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemAvailable:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				return 0, fmt.Errorf("/proc/meminfo: %q: %v", sc.Text(), err)
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("/proc/meminfo has no MemAvailable")
}
