package resume

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"cloudlet/lib/instance"
	"cloudlet/lib/lazyfs"
	"cloudlet/lib/vm"
)

// OwnerFile names the file in a run folder that holds the pid of the
// vm-resume making it. It goes away when the instance is complete
// (instance.json written). A folder with an owner file whose process is
// gone is the remains of a vm-resume killed with SIGKILL (or a machine
// that stopped): stale, and removed by the next vm-resume that meets it.
const OwnerFile = "owner.pid"

// claimRunDir creates dir for this process and records it as the owner.
func claimRunDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, OwnerFile), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600)
}

// releaseRunDir marks dir's instance complete.
func releaseRunDir(dir string) { os.Remove(filepath.Join(dir, OwnerFile)) }

// isStale reports whether dir is a half-made run folder whose vm-resume is
// gone.
func isStale(dir string) bool {
	if pid, err := vm.ReadPid(filepath.Join(dir, ServerFile)); err == nil {
		return !vm.Alive(pid) // early start: the VM cannot outlive its server
	}
	if _, err := os.Stat(filepath.Join(dir, instance.FileName)); err == nil {
		// A complete instance; under libvirt it ends without us (virsh
		// destroy, shutdown), and its folder is left to sweep.
		info, err := instance.Read(dir)
		return err == nil && info.Domain != "" && !vm.Alive(info.Pid)
	}
	pid, err := vm.ReadPid(filepath.Join(dir, OwnerFile))
	return err == nil && !vm.Alive(pid)
}

// removeStale kills the QEMU a stale run folder may still hold (only if its
// command line names the folder, so a recycled pid is left alone),
// unmounts what a killed early-start server left mounted, and removes the
// folder.
func removeStale(dir string) error {
	if pid, err := vm.ReadPid(filepath.Join(dir, vm.PidFileName)); err == nil && vm.Alive(pid) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if bytes.Contains(cmd, []byte(dir)) {
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && vm.Alive(pid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	if err := lazyfs.Cleanup(filepath.Join(dir, LazyDir)); err != nil {
		return err
	}
	return RemoveRunDir(dir)
}

// sweepStale removes the stale run folders directly under root.
func sweepStale(root string) {
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if d := filepath.Join(root, e.Name()); e.IsDir() && isStale(d) {
			removeStale(d)
		}
	}
}
