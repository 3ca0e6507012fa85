// Package virttest gives tests a running libvirt daemon: Daemon starts
// Debian's libvirtd (scripts/libvirtd.sh) unless one runs, and stops it
// when the last test process that needed it is done, so nothing is left
// running.
package virttest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// URI is the libvirt connection the tests use.
const URI = "qemu:///system"

const lockFile = "/run/cloudlet-libvirtd/users.lock"

// Daemon makes sure libvirtd answers at URI and returns URI. Without root
// or the packages it skips the test, unless CI=true, when it fails.
// Each test process holds a shared lock while it uses the daemon; the
// cleanup of the last one stops the daemons scripts/libvirtd.sh started
// (one that ran before, e.g. under systemd, is left alone).
func Daemon(t testing.TB, repoRoot string) string {
	t.Helper()
	fail := t.Skipf
	if os.Getenv("CI") == "true" {
		fail = t.Fatalf
	}
	if os.Geteuid() != 0 {
		fail("libvirt tests need root (they start libvirtd)")
	}
	script := filepath.Join(repoRoot, "scripts", "libvirtd.sh")
	if err := os.MkdirAll(filepath.Dir(lockFile), 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(lockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// Starting under the exclusive lock: no other process stops the
	// daemon between our start and our shared lock.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bash", script, "start").CombinedOutput()
	if err != nil {
		lock.Close()
		fail("scripts/libvirtd.sh start: %v\n%s", err, out)
	}
	t.Logf("libvirtd: %s", strings.TrimSpace(string(out)))
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer lock.Close()
		// Last user: take the lock exclusively (others hold it shared).
		if syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
			return
		}
		if out, err := exec.Command("bash", script, "stop").CombinedOutput(); err != nil {
			t.Errorf("scripts/libvirtd.sh stop: %v\n%s", err, out)
		}
	})
	return URI
}

// Virsh runs virsh against uri and returns its output.
func Virsh(t testing.TB, uri string, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("virsh", append([]string{"-c", uri}, args...)...).CombinedOutput()
	return string(out), err
}
