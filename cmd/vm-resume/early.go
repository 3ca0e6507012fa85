package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"cloudlet/format"
	"cloudlet/lib/instance"
	"cloudlet/lib/resume"
)

// Early start runs in two processes. vm-resume (the one the user started)
// starts itself again as the server (serverEnv set), which reads the
// stream, serves the VM's memory and disk, and runs QEMU as its child.
// The server tells vm-resume over a pipe (fd 3) when the guest runs and
// when the stream has arrived; vm-resume then prints and exits, the
// server stays for the VM's life (QEMU reads its RAM and disk through it,
// and dies with it: Pdeathsig). Until the stream has arrived, the server
// watches a second pipe (fd 4) that vm-resume holds open: if vm-resume
// dies (killed, or ssh gone), the server stops the instance and removes
// it.

const serverEnv = "CLOUDLET_EARLY_SERVER"

// serverMsg is one line from the server to vm-resume.
type serverMsg struct {
	Running *instance.Info `json:"running,omitempty"` // the guest runs
	Done    bool           `json:"done,omitempty"`    // the stream arrived and verified
	Error   string         `json:"error,omitempty"`   // the instance is gone
}

// earlyParent starts the server and relays what it says: the instance's
// line on stdout when the guest runs, then success once the stream has
// arrived (or its error).
func earlyParent(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, wait bool) error {
	statusR, statusW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer statusR.Close()
	controlR, controlW, err := os.Pipe()
	if err != nil {
		statusW.Close()
		return err
	}
	defer controlW.Close() // the server sees EOF when this process is gone
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), serverEnv+"=1")
	cmd.Stdin, cmd.Stderr = stdin, stderr
	cmd.ExtraFiles = []*os.File{statusW, controlR}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true} // it outlives this terminal and ssh session
	err = cmd.Start()
	statusW.Close()
	controlR.Close()
	if err != nil {
		return fmt.Errorf("starting the early-start server: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	returned := make(chan struct{})
	defer close(returned)
	go func() {
		select {
		case <-ctx.Done(): // a signal to vm-resume: the server stops the instance
			cmd.Process.Signal(syscall.SIGTERM)
		case <-returned: // (ctx ends when vm-resume exits, too)
		}
	}()

	var runDir string
	sc := bufio.NewScanner(statusR)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var m serverMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			continue
		}
		switch {
		case m.Running != nil:
			runDir = m.Running.RunDir
			fmt.Fprintln(stdout, m.Running.Line())
		case m.Error != "":
			<-exited
			return errors.New(m.Error)
		case m.Done:
			if wait {
				<-exited
			}
			return nil
		}
	}
	// The server died without a word (killed): the VM died with it; its
	// mount and run folder are left for us.
	werr := <-exited
	if runDir != "" {
		resume.Stop(context.Background(), runDir)
	}
	return fmt.Errorf("the early-start server ended before the stream had arrived (%v); the instance is gone", werr)
}

// earlyServer is vm-resume as the server (see above).
func earlyServer(ctx context.Context, stdin io.Reader, stderr io.Writer, so resume.StreamOptions, accessLog, warm string) error {
	status := os.NewFile(3, "status")
	control := os.NewFile(4, "control")
	if status == nil || control == nil {
		return errors.New("vm-resume: " + serverEnv + " is set but the status pipes are missing (it is for vm-resume's own use)")
	}
	// QEMU must not inherit them: vm-resume waits for the status pipe's
	// end, which must come when this process ends.
	syscall.CloseOnExec(3)
	syscall.CloseOnExec(4)
	send := func(m serverMsg) {
		b, _ := json.Marshal(m)
		status.Write(append(b, '\n'))
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	arrived := make(chan struct{})
	go func() {
		io.Copy(io.Discard, control) // EOF: vm-resume is gone
		select {
		case <-arrived:
		default:
			cancel() // before the stream arrived: stop the instance
		}
	}()

	var warmed chan error
	served, err := resume.FromStreamEarly(ctx, format.NewReader(stdin), so, func(info *instance.Info) {
		send(serverMsg{Running: info})
		if accessLog != "" {
			warmed = make(chan error, 1)
			go func() { warmed <- warmUp(ctx, info, warm, stderr) }()
		}
	})
	if err != nil {
		send(serverMsg{Error: err.Error()})
		return err
	}
	close(arrived)
	if warmed != nil {
		err := <-warmed
		if err == nil {
			err = writeAccessLog(accessLog, served.AccessLog())
		}
		if err != nil {
			served.Kill()
			served.Wait(context.Background())
			send(serverMsg{Error: err.Error()})
			return err
		}
		fmt.Fprintf(stderr, "vm-resume: access log %s written\n", accessLog)
	}
	// From here on the VM runs for as long as it runs: let go of the
	// caller's stdin and stderr (an ssh session waits for them to close).
	if err := detach(served.Info.RunDir); err != nil {
		fmt.Fprintf(stderr, "vm-resume: %v\n", err)
	}
	send(serverMsg{Done: true})
	status.Close()
	return served.Wait(ctx)
}

// detach points stdin at /dev/null and stderr at RUN/server.log.
func detach(runDir string) error {
	null, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer null.Close()
	log, err := os.OpenFile(filepath.Join(runDir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	if err := syscall.Dup3(int(null.Fd()), 0, 0); err != nil {
		return err
	}
	return syscall.Dup3(int(log.Fd()), 2, 0)
}

// warmUp runs the user's --warm command (sh -c, with CLOUDLET_INSTANCE
// set to the instance's JSON line and CLOUDLET_PORT_<guest port> to each
// forwarded host port), or by default asks each forwarded TCP port for
// "/" over HTTP until it answers, then lets the guest run 3 s more: what
// the guest reads meanwhile goes into the access log.
func warmUp(ctx context.Context, info *instance.Info, warm string, stderr io.Writer) error {
	if warm != "" {
		cmd := exec.CommandContext(ctx, "sh", "-c", warm)
		cmd.Env = append(os.Environ(), "CLOUDLET_INSTANCE="+info.Line())
		for _, f := range info.Forwards {
			cmd.Env = append(cmd.Env, "CLOUDLET_PORT_"+strconv.Itoa(f.GuestPort)+"="+strconv.Itoa(f.HostPort))
		}
		cmd.Stdout, cmd.Stderr = stderr, stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("--warm %q: %w", warm, err)
		}
		return nil
	}
	c := http.Client{Timeout: 60 * time.Second}
	for _, f := range info.Forwards {
		if f.Proto != "tcp" {
			continue
		}
		url := fmt.Sprintf("http://%s:%d/", f.HostAddr, f.HostPort)
		deadline := time.Now().Add(2 * time.Minute)
		for {
			resp, err := c.Get(url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("warming up: %s did not answer in 2 minutes (%v); give --warm 'a command that uses the app'", url, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(3 * time.Second):
	}
	return nil
}

// writeAccessLog writes l to path, after the accesses already there (a
// log recorded before: the logs of several resumes merge), atomically.
func writeAccessLog(path string, l *format.AccessLog) error {
	if f, err := os.Open(path); err == nil {
		old, err := format.ReadAccessLog(f, path)
		f.Close()
		if err != nil {
			return fmt.Errorf("%w (remove it to start a new log)", err)
		}
		old.Merge(l)
		l = old
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := format.WriteAccessLog(tmp, l); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
