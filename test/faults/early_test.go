package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"cloudlet/lib/instance"
)

// earlyRun is overlay-apply | vm-resume --early-start as processes, fed by
// the test through a pipe.
type earlyRun struct {
	apply, resume *exec.Cmd
	in            io.WriteCloser
	line          chan *instance.Summary // vm-resume's JSON line, when the guest runs
	stderr        bytes.Buffer
	done          chan error // vm-resume's exit
}

func (f *fixture) startEarly(t *testing.T, tmp, run string, extra ...string) *earlyRun {
	t.Helper()
	ctx := context.Background()
	e := &earlyRun{line: make(chan *instance.Summary, 1), done: make(chan error, 1)}
	e.apply = f.cmd(ctx, tmp, "overlay-apply", "--base", f.baseA)
	e.resume = f.cmd(ctx, tmp, "vm-resume", append([]string{"--early-start", "--base", f.baseA, "--kit", f.kit.Dir,
		"--run-dir", run, "--name", "clfault", "--accel", accel(), "--ports", "free"}, extra...)...)
	var err error
	if e.in, err = e.apply.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	e.apply.Stdout, e.resume.Stdin = pw, pr
	e.apply.Stderr, e.resume.Stderr = &e.stderr, &e.stderr
	out, err := e.resume.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.apply.Start(); err != nil {
		t.Fatal(err)
	}
	if err := e.resume.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	pr.Close()
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var s instance.Summary
			if json.Unmarshal(sc.Bytes(), &s) == nil && s.RunDir != "" {
				e.line <- &s
			}
		}
		e.done <- e.resume.Wait()
		e.apply.Wait()
	}()
	return e
}

// waitRunning waits for vm-resume's line.
func (e *earlyRun) waitRunning(t *testing.T) *instance.Summary {
	t.Helper()
	select {
	case s := <-e.line:
		return s
	case err := <-e.done:
		t.Fatalf("vm-resume ended (%v) before the guest ran: %s", err, e.stderr.String())
	case <-time.After(2 * time.Minute):
		t.Fatalf("the guest did not run in 2 minutes: %s", e.stderr.String())
	}
	return nil
}

// gone checks that nothing of the instance in run is left: no QEMU, no
// server, no mount, no run folder (waiting up to 20 s for the server to
// clean up after itself).
func gone(t *testing.T, what, run string, server int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var left []string
	for {
		left = nil
		if out, _ := exec.Command("pgrep", "-f", "qemu.*"+run).Output(); len(bytes.TrimSpace(out)) > 0 {
			left = append(left, "a QEMU")
		}
		if server > 0 && syscall.Kill(server, 0) == nil {
			left = append(left, "the server")
		}
		if mi, _ := os.ReadFile("/proc/self/mountinfo"); bytes.Contains(mi, []byte(run)) {
			left = append(left, "a mount")
		}
		if _, err := os.Stat(run); err == nil {
			left = append(left, "the run folder")
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(left) > 0 {
		t.Errorf("%s: left behind: %s", what, strings.Join(left, ", "))
	}
}

// TestEarlyStart runs vm-resume --early-start as a user would: it records
// an access log, then resumes an overlay in access order whose second
// half is held back until the guest runs (so the guest demonstrably ran
// before the overlay had arrived), lets it finish, and stops it; then it
// kills vm-resume, and then the server, while the overlay is still
// arriving: nothing may be left behind, and the base never changes.
func TestEarlyStart(t *testing.T) {
	f := getFixture(t)
	dir, _, tmp := f.newCase(t)

	// Record: the overlay as packed (offset order), at full speed.
	access := filepath.Join(dir, "app.access")
	run := filepath.Join(dir, "rec")
	e := f.startEarly(t, tmp, run, "--access-log", access, "--warm", "sleep 2")
	in, err := os.Open(f.ovPath)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(e.in, in)
	in.Close()
	e.in.Close()
	s := e.waitRunning(t)
	if err := <-e.done; err != nil {
		t.Fatalf("recording: vm-resume: %v: %s", err, e.stderr.String())
	}
	if s.Server <= 0 {
		t.Fatalf("the JSON line names no server: %+v", s)
	}
	if st, err := os.Stat(access); err != nil || st.Size() == 0 {
		t.Fatalf("no access log: %v", err)
	}
	f.stop(run)
	gone(t, "stopped after recording", run, s.Server)

	ov := filepath.Join(dir, "app-access.overlay")
	if err := f.runFile(f.diff, ov, "overlay-pack", "--order", "access", "--access-log", access); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(ov)
	if err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2

	for _, tc := range []string{"complete", "vm-resume killed", "server killed"} {
		run := filepath.Join(dir, strings.ReplaceAll(tc, " ", "-"))
		e := f.startEarly(t, tmp, run)
		e.in.Write(data[:half])
		s := e.waitRunning(t)
		t.Logf("%s: the guest runs with %d of %d overlay bytes sent", tc, half, len(data))
		switch tc {
		case "complete":
			e.in.Write(data[half:])
			e.in.Close()
			if err := <-e.done; err != nil {
				t.Fatalf("vm-resume: %v: %s", err, e.stderr.String())
			}
			out, err := exec.Command(filepath.Join(binDir, "vm-console"), run, "cat /run/counter").CombinedOutput()
			if err != nil || len(bytes.TrimSpace(out)) == 0 {
				t.Errorf("the guest's counter after the overlay arrived: %v: %s", err, out)
			}
			f.stop(run)
		case "vm-resume killed":
			e.resume.Process.Kill()
			<-e.done
			e.in.Close()
		case "server killed":
			syscall.Kill(s.Server, syscall.SIGKILL)
			if err := <-e.done; err == nil {
				t.Errorf("vm-resume exited 0 after its server was killed")
			}
			e.in.Close()
		}
		gone(t, tc, run, s.Server)
	}
	f.verifyBase(t)
}
