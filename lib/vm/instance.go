package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"cloudlet/lib/disk"
)

// Instance is a running (or finished) QEMU process.
type Instance struct {
	Config Config // normalized config it was started with
	Accel  string // the accelerator actually used ("tcg" or "kvm")
	Pid    int

	cmd     *exec.Cmd    // nil when attached or adopted
	kill    func() error // how to end an adopted QEMU (its owner destroys it)
	serial  string       // an adopted QEMU's console, when not Config.SerialPath()
	done    chan struct{}
	waitErr error
	once    sync.Once
}

// RunDir, QMPPath, SerialPath, SerialLog, PidFile and MemPath of the instance.
func (in *Instance) RunDir() string  { return in.Config.RunDir }
func (in *Instance) QMPPath() string { return in.Config.QMPPath() }
func (in *Instance) SerialPath() string {
	if in.serial != "" {
		return in.serial
	}
	return in.Config.SerialPath()
}
func (in *Instance) SerialLog() string { return in.Config.SerialLog() }
func (in *Instance) PidFile() string   { return in.Config.PidFile() }
func (in *Instance) MemPath() string   { return in.Config.MemPath }

// Start prepares what cfg needs (see Prepare) and starts QEMU in its own
// session. It returns once QEMU is ready (QMP answers
// and the memory file exists), or with an error that includes the tail of
// QEMU's log if QEMU exits first.
func Start(ctx context.Context, cfg Config) (*Instance, error) {
	c, accel, err := Prepare(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c2 := c
	c2.Accel = accel
	args, err := c2.Args()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(c.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("vm: %w", err)
	}
	defer logf.Close()
	bin := c.Binary
	if c.NetNS != "" { // nsenter execs QEMU in the namespace: same pid
		args = append([]string{"--net=" + c.NetNS, "--", bin}, args...)
		bin = "nsenter"
	}
	fmt.Fprintf(logf, "# %s %s\n", bin, strings.Join(args, " "))
	// Not CommandContext: the instance must outlive ctx (and the tool).
	cmd := exec.Command(bin, args...)
	cmd.Dir = c.RunDir
	cmd.Stdin = nil
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("vm: start %s: %w", c.Binary, err)
	}
	in := &Instance{Config: c, Accel: accel, Pid: cmd.Process.Pid, cmd: cmd, done: make(chan struct{})}
	go func() {
		in.waitErr = cmd.Wait()
		close(in.done)
	}()
	err = in.waitReady(ctx)
	if err == nil {
		err = in.FillFreePorts(ctx)
	}
	if err != nil {
		_ = in.Kill()
		<-in.done
		return nil, err
	}
	return in, nil
}

// waitReady returns once QEMU is ready to be used: its QMP and serial
// sockets exist, QMP answers query-status, and (for a memory file QEMU
// creates) the memory file exists at full size. QEMU creates its sockets
// before its memory, so the sockets alone say too little.
func (in *Instance) waitReady(ctx context.Context) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		if last = in.readyNow(ctx); last == nil {
			return nil
		}
		select {
		case <-in.done:
			return fmt.Errorf("vm: QEMU exited during start (%v): %s", in.waitErr, in.LogTail(2000))
		case <-ctx.Done():
			return fmt.Errorf("vm: waiting for QEMU to be ready: %w (last: %v); QEMU log: %s", ctx.Err(), last, in.LogTail(1000))
		case <-t.C:
		}
	}
}

func (in *Instance) readyNow(ctx context.Context) error {
	for _, p := range []string{in.QMPPath(), in.SerialPath()} {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode()&(os.ModeSocket|os.ModeCharDevice) == 0 {
			return fmt.Errorf("%s is not a socket or a terminal", p)
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := QMPPing(qctx, in.QMPPath())
	cancel()
	if err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	if c := in.Config; !c.MemPlain {
		st, err := os.Stat(c.MemPath)
		if err != nil {
			return err
		}
		if st.Size() != int64(c.MemMiB)<<20 {
			return fmt.Errorf("memory file %s is %d bytes, want %d", c.MemPath, st.Size(), int64(c.MemMiB)<<20)
		}
	}
	return nil
}

// LogTail returns up to n bytes from the end of QEMU's own log.
func (in *Instance) LogTail(n int) string {
	b, _ := os.ReadFile(in.Config.LogFile())
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return strings.TrimSpace(string(b))
}

// Prepare validates cfg and readies what a start needs: RunDir (created
// 0700; it may exist but then must not hold a live instance), the existing
// base memory file of a private mapping, and the disk top layer (created
// over BaseDisk if asked). It returns the normalized config and the
// accelerator to use. Start calls it; so does lib/virt, whose QEMU
// libvirtd starts.
func Prepare(ctx context.Context, cfg Config) (Config, string, error) {
	c, err := cfg.Normalize()
	if err != nil {
		return c, "", err
	}
	if err := os.MkdirAll(c.RunDir, 0o700); err != nil {
		return c, "", fmt.Errorf("vm: %w", err)
	}
	if err := os.Chmod(c.RunDir, 0o700); err != nil {
		return c, "", fmt.Errorf("vm: %w", err)
	}
	if pid, err := ReadPid(c.PidFile()); err == nil && Alive(pid) {
		return c, "", fmt.Errorf("vm: %s already holds a running QEMU (pid %d)", c.RunDir, pid)
	}
	for _, p := range []string{c.QMPPath(), c.SerialPath(), c.PidFile()} {
		_ = os.Remove(p)
	}
	if !c.MemShare && !c.MemPlain {
		// A private mapping of a base memory file: it must exist and is
		// never written (MAP_PRIVATE; free page reporting refused).
		st, err := os.Stat(c.MemPath)
		if err != nil {
			return c, "", fmt.Errorf("vm: MemShare off needs an existing memory file: %w", err)
		}
		if st.Size() != int64(c.MemMiB)<<20 {
			return c, "", fmt.Errorf("vm: memory file %s is %d bytes, want %d", c.MemPath, st.Size(), int64(c.MemMiB)<<20)
		}
	}
	if c.Disk != "" {
		if _, err := os.Stat(c.Disk); errors.Is(err, os.ErrNotExist) && c.BaseDisk != "" {
			if err := disk.CreateTop(ctx, c.BaseDisk, c.BaseFormat, c.Disk); err != nil {
				return c, "", err
			}
		} else if err != nil {
			return c, "", fmt.Errorf("vm: disk: %w", err)
		}
	}
	accel, err := ResolveAccel(ctx, c)
	if err != nil {
		return c, "", err
	}
	return c, accel, nil
}

// Attach returns an Instance for a QEMU started earlier (possibly by another
// process) with the given config, found through its pidfile.
func Attach(cfg Config) (*Instance, error) {
	c, err := cfg.Normalize()
	if err != nil {
		return nil, err
	}
	pid, err := ReadPid(c.PidFile())
	if err != nil {
		return nil, fmt.Errorf("vm: attach: %w", err)
	}
	if !Alive(pid) {
		return nil, fmt.Errorf("vm: attach: pid %d from %s is not running", pid, c.PidFile())
	}
	in := &Instance{Config: c, Pid: pid, done: make(chan struct{})}
	go func() {
		for Alive(pid) {
			time.Sleep(50 * time.Millisecond)
		}
		close(in.done)
	}()
	return in, nil
}

// Adopt returns an Instance for a QEMU that another process (libvirtd)
// started with cfg (normalized by Prepare; accel is what it runs with),
// once it is ready as Start means it. serial is its console (a socket or
// a pseudo-terminal) when it is not cfg.SerialPath(). Its pid is the peer
// of its QMP socket; kill ends it through its owner. Forwards with host
// port 0 are not filled in: the owner adds forwards later (FillFreePorts).
func Adopt(ctx context.Context, cfg Config, accel, serial string, kill func() error) (*Instance, error) {
	in := &Instance{Config: cfg, Accel: accel, kill: kill, serial: serial, done: make(chan struct{})}
	if err := in.waitReady(ctx); err != nil {
		return nil, err
	}
	pid, err := SocketPeerPid(cfg.QMPPath())
	if err != nil {
		return nil, fmt.Errorf("vm: which process serves %s: %w", cfg.QMPPath(), err)
	}
	in.Pid = pid
	go func() {
		for Alive(pid) {
			time.Sleep(50 * time.Millisecond)
		}
		close(in.done)
	}()
	return in, nil
}

// SocketPeerPid returns the pid of the process listening on a unix
// socket (SO_PEERCRED of a connection to it).
func SocketPeerPid(path string) (int, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *syscall.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

// ReadPid reads a pid file (QEMU's, or a run folder's owner file).
func ReadPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("bad pidfile %s", path)
	}
	return pid, nil
}

// Alive reports whether pid exists and is not a zombie.
func Alive(pid int) bool {
	if pid <= 0 || syscall.Kill(pid, 0) != nil { // kill(0 or -1, 0) would name a group
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// Done is closed when QEMU has exited.
func (in *Instance) Done() <-chan struct{} { return in.done }

// Wait blocks until QEMU exits and returns its exit error (nil for an
// attached instance).
func (in *Instance) Wait() error {
	<-in.done
	return in.waitErr
}

// Running reports whether QEMU is still running.
func (in *Instance) Running() bool {
	select {
	case <-in.done:
		return false
	default:
		return true
	}
}

// Signal sends sig to QEMU if it is still running.
func (in *Instance) Signal(sig syscall.Signal) error {
	if !in.Running() {
		return nil
	}
	if err := syscall.Kill(in.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	return nil
}

// Kill ends QEMU at once: SIGKILL, or for an adopted QEMU its owner's
// kill (SIGKILL if that fails).
func (in *Instance) Kill() error {
	if in.kill != nil && in.Running() {
		if err := in.kill(); err == nil {
			return nil
		}
	}
	return in.Signal(syscall.SIGKILL)
}

// StopTimeout is how long Shutdown waits after each step (QMP quit, then
// SIGTERM) before the next, harsher one.
var StopTimeout = 5 * time.Second

// Shutdown ends QEMU: QMP "quit" if the QMP socket answers, else SIGTERM;
// SIGKILL when it is still running after StopTimeout (or ctx ends). The run
// folder is kept.
func (in *Instance) Shutdown(ctx context.Context) error {
	if !in.Running() {
		return nil
	}
	wait := func(d time.Duration) bool {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-in.done:
			return true
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	qctx, cancel := context.WithTimeout(ctx, time.Second)
	qerr := QMPQuit(qctx, in.QMPPath())
	cancel()
	if qerr == nil && wait(StopTimeout) {
		return nil
	}
	if ctx.Err() == nil {
		_ = in.Signal(syscall.SIGTERM)
		if wait(StopTimeout) {
			return nil
		}
	}
	_ = in.Kill()
	t := time.NewTimer(StopTimeout)
	defer t.Stop()
	select {
	case <-in.done:
		return nil
	case <-t.C:
		return fmt.Errorf("vm: QEMU pid %d did not exit after SIGKILL", in.Pid)
	}
}

// Stop ends QEMU (see Shutdown) and removes the run folder, including the
// memory file when it lives there. Safe to call more than once.
func (in *Instance) Stop(ctx context.Context) error {
	err := in.Shutdown(ctx)
	in.once.Do(func() {
		if rerr := os.RemoveAll(in.Config.RunDir); rerr != nil && err == nil {
			err = rerr
		}
	})
	return err
}
