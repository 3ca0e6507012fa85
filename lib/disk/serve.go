package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"cloudlet/lib/nbd"
)

// Timeouts of Serve and Server.Close (variables so tests can shorten them).
var (
	startTimeout = 15 * time.Second // qemu-nbd must accept within this
	exitGrace    = 5 * time.Second  // after disconnecting, before SIGTERM
	termGrace    = 5 * time.Second  // after SIGTERM, before SIGKILL
	ioTimeout    = 2 * time.Minute  // per NBD request
)

var formatRE = regexp.MustCompile(`^[a-z0-9_]{1,32}$`)

// Server is a qemu-nbd process serving one image on a private unix socket,
// with a connected client.
type Server struct {
	// Client is connected to the export; it is closed by Close.
	Client *nbd.Client
	// Socket is the unix socket qemu-nbd listens on.
	Socket string

	cmd       *exec.Cmd
	dir       string
	stderr    *limitedBuffer
	exited    chan struct{} // closed once qemu-nbd was reaped
	waitErr   error         // valid after exited
	stopWatch func() bool
	closeOnce sync.Once
	closeErr  error
}

// Serve starts qemu-nbd on image (format "raw", "qcow2", ...) and returns
// a Server whose Client is connected. readOnly exports with --read-only and
// force-share=on; otherwise writes are allowed and zeroes may be unmapped.
// Cancelling ctx stops qemu-nbd (SIGTERM, then SIGKILL); Close must still
// be called.
func Serve(ctx context.Context, image, format string, readOnly bool) (*Server, error) {
	if !formatRE.MatchString(format) {
		return nil, fmt.Errorf("disk: invalid image format %q", format)
	}
	image, err := filepath.Abs(image)
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	if _, err := os.Stat(image); err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "cloudlet-nbd-")
	if err == nil && len(dir) > 90 { // sun_path holds 108 bytes
		os.Remove(dir)
		dir, err = os.MkdirTemp("/tmp", "cloudlet-nbd-")
	}
	if err != nil {
		return nil, fmt.Errorf("disk: %w", err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	args := []string{"--socket=" + sock, "--cache=writeback"}
	if readOnly {
		// qemu-nbd 7.2 has no --force-share (-U); the block layer's
		// force-share option, which needs read-only, does the same.
		args = append(args, "--read-only", "--image-opts",
			"driver="+format+",force-share=on,file.driver=file,file.filename="+
				strings.ReplaceAll(image, ",", ",,"))
	} else {
		args = append(args, "--format="+format,
			"--discard=unmap", "--detect-zeroes=unmap", image)
	}

	s := &Server{
		Socket: sock,
		dir:    dir,
		stderr: newLimitedBuffer(16 << 10),
		exited: make(chan struct{}),
	}
	s.cmd = exec.Command("qemu-nbd", args...)
	s.cmd.Stdout = s.stderr
	s.cmd.Stderr = s.stderr
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("disk: starting qemu-nbd: %w", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		os.RemoveAll(dir)
		close(s.exited)
	}()
	s.stopWatch = context.AfterFunc(ctx, func() { s.stop(0) })

	if err := s.connect(ctx); err != nil {
		s.stopWatch()
		s.stop(0)
		os.RemoveAll(dir)
		if msg := s.stderr.String(); msg != "" {
			err = fmt.Errorf("%w; qemu-nbd said: %s", err, msg)
		}
		return nil, fmt.Errorf("disk: serving %s: %w", image, err)
	}
	return s, nil
}

// connect dials the socket until qemu-nbd accepts; the first connection
// is the client (qemu-nbd serves one client, then exits).
func (s *Server) connect(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	for {
		c, err := nbd.Dial(ctx, "unix", s.Socket, nbd.Options{Timeout: ioTimeout})
		if err == nil {
			s.Client = c
			return nil
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ECONNREFUSED) {
			return err
		}
		select {
		case <-s.exited:
			return fmt.Errorf("qemu-nbd exited before accepting: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("waiting for qemu-nbd to accept: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (s *Server) waitExit(d time.Duration) bool {
	if d <= 0 {
		select {
		case <-s.exited:
			return true
		default:
			return false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.exited:
		return true
	case <-t.C:
		return false
	}
}

// stop waits grace for qemu-nbd to exit by itself, then sends SIGTERM,
// then SIGKILL; it returns once the process was reaped, reporting whether
// SIGKILL was needed.
func (s *Server) stop(grace time.Duration) (killed bool) {
	if s.waitExit(grace) {
		return false
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	if s.waitExit(termGrace) {
		return false
	}
	s.cmd.Process.Kill()
	<-s.exited
	return true
}

// Pid returns qemu-nbd's process id.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Close disconnects the client, lets qemu-nbd exit (SIGTERM after a grace
// period, SIGKILL after another), waits for it and removes the temporary
// folder. Only the first call does the work; later calls return its result.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		if err := s.Client.Close(); err != nil {
			errs = append(errs, err)
		}
		s.stopWatch()
		if s.stop(exitGrace) {
			errs = append(errs, errors.New("qemu-nbd ignored SIGTERM and was killed"))
		}
		if s.waitErr != nil {
			var ee *exec.ExitError
			if !errors.As(s.waitErr, &ee) || ee.ExitCode() != 0 && ee.ExitCode() != -1 {
				errs = append(errs, fmt.Errorf("qemu-nbd: %w: %s", s.waitErr, s.stderr.String()))
			}
		}
		if err := os.RemoveAll(s.dir); err != nil {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			s.closeErr = fmt.Errorf("disk: closing server: %w", errors.Join(errs...))
		}
	})
	return s.closeErr
}
