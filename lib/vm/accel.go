package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// KVMProbeTimeout bounds the KVM probe boot.
var KVMProbeTimeout = 10 * time.Second

var (
	probeMu    sync.Mutex
	probeCache = map[string]bool{}
)

// KVMUsable reports whether /dev/kvm can be opened read-write.
func KVMUsable() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// ResolveAccel turns c.Accel into "tcg" or "kvm". "auto" is "kvm" only when
// /dev/kvm is usable and a KVM probe boot of c.Kernel succeeded (cached in
// memory and on disk per QEMU version and kernel); without a kernel to probe
// with, "auto" is "tcg".
func ResolveAccel(ctx context.Context, c Config) (string, error) {
	switch c.Accel {
	case "tcg", "kvm":
		return c.Accel, nil
	case "", "auto":
	default:
		return "", fmt.Errorf("vm: Accel %q: want auto, tcg or kvm", c.Accel)
	}
	if !KVMUsable() || c.Kernel == "" {
		return "tcg", nil
	}
	ok, err := ProbeKVM(ctx, c.Binary, c.Kernel)
	if err != nil || !ok {
		return "tcg", nil
	}
	return "kvm", nil
}

type probeRecord struct {
	Key string `json:"key"`
	OK  bool   `json:"ok"`
}

func probeKey(binary, kernel string) (string, error) {
	st, err := os.Stat(kernel)
	if err != nil {
		return "", err
	}
	v, err := QEMUVersionOf(binary)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte(fmt.Sprintf("%s|%s|%d|%d", v, kernel, st.Size(), st.ModTime().UnixNano())))
	return fmt.Sprintf("%x", h[:12]), nil
}

func probeCachePath(key string) string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "cloudlet", "kvm-probe-"+key+".json")
}

// ProbeKVM boots kernel under KVM with no root disk (it panics once it is
// through early boot; -no-reboot makes QEMU exit) and reports whether the
// kernel got that far within KVMProbeTimeout. The verdict is cached.
func ProbeKVM(ctx context.Context, binary, kernel string) (bool, error) {
	if binary == "" {
		binary = DefaultBinary
	}
	key, err := probeKey(binary, kernel)
	if err != nil {
		return false, err
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if ok, hit := probeCache[key]; hit {
		return ok, nil
	}
	cp := probeCachePath(key)
	if b, err := os.ReadFile(cp); err == nil {
		var r probeRecord
		if json.Unmarshal(b, &r) == nil && r.Key == key {
			probeCache[key] = r.OK
			return r.OK, nil
		}
	}
	ok := runKVMProbe(ctx, binary, kernel)
	probeCache[key] = ok
	if err := os.MkdirAll(filepath.Dir(cp), 0o700); err == nil {
		b, _ := json.Marshal(probeRecord{Key: key, OK: ok})
		_ = os.WriteFile(cp, b, 0o600)
	}
	return ok, nil
}

func runKVMProbe(ctx context.Context, binary, kernel string) bool {
	ctx, cancel := context.WithTimeout(ctx, KVMProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary,
		"-nodefaults", "-no-user-config", "-accel", "kvm", "-machine", DefaultMachine,
		"-cpu", DefaultCPU, "-m", "128M", "-display", "none", "-vga", "none",
		"-no-reboot", "-serial", "stdio", "-kernel", kernel,
		"-append", "console=ttyS0 panic=-1 root=/dev/cloudlet-kvm-probe")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.WaitDelay = time.Second
	_ = cmd.Run()
	s := out.String()
	return strings.Contains(s, "Kernel panic") || strings.Contains(s, "VFS:")
}

var (
	versionMu sync.Mutex
	versions  = map[string]string{}
)

// QEMUVersion returns the first line of "qemu-system-x86_64 --version",
// e.g. "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)".
func QEMUVersion() (string, error) { return QEMUVersionOf(DefaultBinary) }

// QEMUVersionOf is QEMUVersion for another QEMU binary.
func QEMUVersionOf(binary string) (string, error) {
	versionMu.Lock()
	defer versionMu.Unlock()
	if v, ok := versions[binary]; ok {
		return v, nil
	}
	out, err := exec.Command(binary, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("vm: %s --version: %w", binary, err)
	}
	v := strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	versions[binary] = v
	return v, nil
}
