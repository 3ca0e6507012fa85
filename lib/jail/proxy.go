package jail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"cloudlet/lib/vm"
)

// ProxyArg is the subcommand of vm-resume that runs the forward proxy of
// an outbound instance (ServeProxy).
const ProxyArg = "net-proxy"

// ProxyCommand is the program and arguments that run ServeProxy (vm-resume
// sets it to itself and ProxyArg); the outbound policy needs it.
var ProxyCommand []string

// startProxy starts, for outbound, the proxy, which carries the forwards
// in, lives as long as QEMU (pid) and removes the namespace when QEMU is
// gone.
func (j *Jail) startProxy(pid int) error {
	if j.Policy != Outbound {
		return nil
	}
	if len(ProxyCommand) == 0 {
		return errors.New("the outbound network policy needs vm-resume's net-proxy (jail.ProxyCommand is not set)")
	}
	args := slices.Concat(ProxyCommand[1:], []string{"--run", j.dir, "--qemu-pid", strconv.Itoa(pid)})
	for i := range j.outer {
		args = append(args, net.JoinHostPort(j.GuestIP, strconv.Itoa(innerPort(i))))
	}
	cmd := exec.Command(ProxyCommand[0], args...)
	cmd.ExtraFiles = j.listeners
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if log, err := os.OpenFile(j.dir+"/net-proxy.log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		cmd.Stdout, cmd.Stderr = log, log
		defer log.Close()
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the forward proxy: %w", err)
	}
	j.Proxy = cmd.Process.Pid
	cmd.Process.Release()
	for _, f := range j.listeners { // the proxy has them now
		f.Close()
	}
	j.listeners = nil
	return j.save()
}

// ServeProxy runs the forward proxy: listener i (fd 3+i) carries each TCP
// connection to targets[i] (inside the namespace) until QEMU (qemuPid)
// is gone; then it removes the namespace of the instance in dir and
// returns. It returns early when ctx ends (SIGTERM: whoever sent it
// removes the namespace).
func ServeProxy(ctx context.Context, dir string, qemuPid int, targets []string) error {
	var ls []net.Listener
	for i, t := range targets {
		l, err := net.FileListener(os.NewFile(uintptr(3+i), "forward-"+t))
		if err != nil {
			return fmt.Errorf("forward to %s: %w", t, err)
		}
		ls = append(ls, l)
	}
	var wg sync.WaitGroup
	for i, l := range ls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serve(l, targets[i])
		}()
	}
	for vm.Alive(qemuPid) && ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
	for _, l := range ls {
		l.Close()
	}
	wg.Wait()
	if ctx.Err() == nil { // QEMU is gone: the namespace goes too
		if j, err := Read(dir); err == nil {
			j.Proxy = 0 // (this process)
			j.Teardown()
		}
	}
	return nil
}

// serve accepts on l and copies each connection to and from target.
func serve(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			defer c.Close()
			d, err := net.DialTimeout("tcp4", target, 10*time.Second)
			if err != nil {
				return
			}
			defer d.Close()
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					tc.CloseWrite() // pass the half-close on
				}
				done <- struct{}{}
			}
			go pipe(d, c)
			go pipe(c, d)
			<-done
			<-done
		}()
	}
}
