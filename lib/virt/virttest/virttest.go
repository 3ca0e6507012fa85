// Package virttest gives tests a running libvirt daemon: Daemon starts
// Debian's libvirtd (scripts/libvirtd.sh) unless one runs, and stops it
// when the last test process that needed it is done, so nothing is left
// running.
package virttest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/vm"
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
	return daemon(t, repoRoot, false)
}

// DaemonAfterCrash is Daemon on a machine where libvirtd and virtlogd
// died by SIGKILL: while no other test uses the daemons, it starts them,
// kills both with SIGKILL (their socket files stay behind, as after a
// crash or a reboot without /run cleaned), checks the stale files are
// there, and then starts them as Daemon does. Daemons this package did
// not start (systemd's) are left alone and the test is skipped.
func DaemonAfterCrash(t testing.TB, repoRoot string) string {
	t.Helper()
	return daemon(t, repoRoot, true)
}

// Sockets the daemons answer on.
const (
	LibvirtSocket = "/run/libvirt/libvirt-sock"
	VirtlogSocket = "/run/libvirt/virtlogd-sock"
)

func daemon(t testing.TB, repoRoot string, crash bool) string {
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
	if crash {
		if err := crashDaemons(script); err != nil {
			lock.Close()
			fail("%v", err)
		}
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

// crashDaemons starts the daemons through script and kills them with
// SIGKILL, leaving their socket files. The caller holds the lock
// exclusively.
func crashDaemons(script string) error {
	out, err := exec.Command("bash", script, "start").CombinedOutput()
	if err != nil {
		return fmt.Errorf("scripts/libvirtd.sh start: %v\n%s", err, out)
	}
	for _, name := range []string{"libvirtd", "virtlogd"} {
		pid, err := vm.ReadPid(filepath.Join(filepath.Dir(lockFile), name+".pid"))
		if err != nil {
			return fmt.Errorf("%s was not started by scripts/libvirtd.sh (%v): not killing it", name, err)
		}
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); !vm.Alive(pid) || strings.TrimSpace(string(comm)) != name {
			return fmt.Errorf("pid %d from %s's pidfile is %q, not a live %s", pid, name, comm, name)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			return err
		}
		for i := 0; vm.Alive(pid); i++ { // a zombie is gone enough
			if i == 100 {
				return fmt.Errorf("%s (pid %d) still there 10 s after SIGKILL", name, pid)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, s := range []string{LibvirtSocket, VirtlogSocket} {
		if fi, err := os.Stat(s); err != nil || fi.Mode()&os.ModeSocket == 0 {
			return fmt.Errorf("after SIGKILL, %s is not a socket file left behind (%v): nothing stale to test", s, err)
		}
		// A child the daemon was forking when it died may hold its
		// listening socket a moment longer.
		for i := 0; ; i++ {
			c, err := net.Dial("unix", s)
			if err != nil {
				break
			}
			c.Close()
			if i == 100 {
				return fmt.Errorf("%s still answers 10 s after its daemon was killed", s)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}
