package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"cloudlet/lib/instance"
)

// Tools is the Runner that runs the project's own stages, as the listener
// and `cloudlet synthesis --remote` do: overlay-apply | vm-resume, each
// client's instances in a run root of its own (RunRoot/CLIENT), so its
// instance limit, list and stop see only its own.
type Tools struct {
	Bin              string // folder holding overlay-apply and vm-resume ("": $PATH)
	RunRoot          string // RunRoot/CLIENT/NAME-XXXX are the run folders
	Catalog          string // the bases, by ID
	Net              string // vm-resume --net (the cloudlet's policy, never the client's)
	ForwardAddr      string // host address the forwards listen on
	TrustedKeys      string // overlay-apply --trusted-keys
	RequireSignature bool   // overlay-apply --require-signature
	Env              []string
}

// maxStageErr caps what is kept of a stage's stderr.
const maxStageErr = 64 << 10

func (t *Tools) tool(name string) string {
	if t.Bin != "" {
		return filepath.Join(t.Bin, name)
	}
	return name
}

func (t *Tools) command(ctx context.Context, c Client, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, t.tool(name), args...)
	cmd.Env = append(os.Environ(), "CLOUDLET_RUN_DIR="+filepath.Join(t.RunRoot, c.Name))
	if t.Catalog != "" {
		cmd.Env = append(cmd.Env, "CLOUDLET_CATALOG="+t.Catalog)
	}
	cmd.Env = append(cmd.Env, t.Env...)
	// Ended by SIGTERM first, so vm-resume stops its QEMU and removes the
	// run folder; SIGKILL 10 s later.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Synthesize runs overlay-apply | vm-resume on the overlay.
func (t *Tools) Synthesize(ctx context.Context, c Client, cmd Command, overlay io.Reader, stdout, stderr io.Writer) error {
	if err := os.MkdirAll(filepath.Join(t.RunRoot, c.Name), 0o755); err != nil {
		return err
	}
	var aargs []string
	if t.TrustedKeys != "" {
		aargs = append(aargs, "--trusted-keys", t.TrustedKeys)
	}
	if t.RequireSignature {
		aargs = append(aargs, "--require-signature")
	}
	name := cmd.Name
	if name == "" {
		name = c.Name
	}
	rargs := []string{"--ports", "free", "--name", name, "--max-instances", strconv.Itoa(c.Limits.Instances)}
	if t.Net != "" {
		rargs = append(rargs, "--net", t.Net)
	}
	addr := t.ForwardAddr
	if addr == "" {
		addr = "127.0.0.1"
	}
	for _, p := range cmd.GuestPorts {
		rargs = append(rargs, "--forward", fmt.Sprintf("tcp:%s:0:%d", addr, p))
	}
	if cmd.EarlyStart {
		rargs = append(rargs, "--early-start")
	}
	apply := t.command(ctx, c, "overlay-apply", aargs...)
	resume := t.command(ctx, c, "vm-resume", rargs...)
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	var aerr, rerr tailBuffer
	apply.Stdin, apply.Stdout, apply.Stderr = overlay, pw, &aerr
	resume.Stdin, resume.Stdout, resume.Stderr = pr, stdout, &rerr
	err = apply.Start()
	if err == nil {
		if err = resume.Start(); err != nil {
			apply.Cancel()
			apply.Wait()
		}
	}
	pw.Close()
	pr.Close()
	if err != nil {
		return err
	}
	ea, er := waitStage(apply), waitStage(resume)
	stderr.Write(aerr.Bytes())
	stderr.Write(rerr.Bytes())
	// The stage that failed first says why: vm-resume, unless it only
	// reports that overlay-apply failed (exit 4); overlay-apply's broken
	// pipe after vm-resume refused is not the reason.
	stages := []struct {
		name string
		err  error
		msg  *tailBuffer
	}{{"vm-resume", er, &rerr}, {"overlay-apply", ea, &aerr}}
	if ee, ok := er.(*exec.ExitError); ok && ee.ExitCode() == 4 {
		stages[0], stages[1] = stages[1], stages[0]
	}
	for _, st := range stages {
		if st.err != nil {
			status := 1
			if ee, ok := st.err.(*exec.ExitError); ok && ee.ExitCode() > 0 {
				status = ee.ExitCode()
			}
			msg := lastLines(st.msg.String(), 3)
			if msg == "" {
				msg = fmt.Sprintf("%s: %v", st.name, st.err)
			}
			return &StatusError{status, fmt.Errorf("%s", msg)}
		}
	}
	return nil
}

// waitStage waits for a stage. One that exited 0 while something it started
// (an early-start server) still held its output succeeded: cmd.WaitDelay
// let go of the output, not of a failure.
func waitStage(cmd *exec.Cmd) error {
	err := cmd.Wait()
	if errors.Is(err, exec.ErrWaitDelay) {
		return nil
	}
	return err
}

// instances are the client's run folders with a running instance.
func (t *Tools) instances(c Client) []instance.Summary {
	root := filepath.Join(t.RunRoot, c.Name)
	ents, _ := os.ReadDir(root)
	var out []instance.Summary
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), instance.FileName))
		if err != nil || len(b) > 1<<20 {
			continue
		}
		var s instance.Summary
		if json.Unmarshal(b, &s) != nil || s.Pid <= 0 || syscall.Kill(s.Pid, 0) != nil {
			continue
		}
		if filepath.Dir(s.RunDir) != root { // only folders it says are where they are
			continue
		}
		out = append(out, s)
	}
	return out
}

// List prints the client's running instances, a JSON line each.
func (t *Tools) List(ctx context.Context, c Client, stdout io.Writer) error {
	enc := json.NewEncoder(stdout)
	for _, s := range t.instances(c) {
		if err := enc.Encode(s); err != nil {
			return err
		}
	}
	return nil
}

// Stop ends one of the client's instances, by its name or its run folder's.
func (t *Tools) Stop(ctx context.Context, c Client, name string, stdout, stderr io.Writer) error {
	var dirs []string
	for _, s := range t.instances(c) {
		if filepath.Base(s.RunDir) == name {
			dirs = []string{s.RunDir}
			break
		}
		if s.Name == name {
			dirs = append(dirs, s.RunDir)
		}
	}
	switch len(dirs) {
	case 0:
		return &StatusError{1, fmt.Errorf("you have no running instance named %s (list shows yours)", name)}
	case 1:
	default:
		return &StatusError{StatusUsage, fmt.Errorf("%d of your instances are named %s: give the run folder's name (list shows them)", len(dirs), name)}
	}
	var e tailBuffer
	cmd := t.command(ctx, c, "vm-resume", "stop", dirs[0])
	cmd.Stdout, cmd.Stderr = &e, &e
	if err := cmd.Run(); err != nil {
		return &StatusError{1, fmt.Errorf("stop %s: %v: %s", name, err, lastLines(e.String(), 3))}
	}
	fmt.Fprintf(stdout, "{\"stopped\":%q}\n", filepath.Base(dirs[0]))
	return nil
}

// tailBuffer keeps the last maxStageErr bytes written to it.
type tailBuffer struct{ bytes.Buffer }

func (b *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > maxStageErr {
		p = p[len(p)-maxStageErr:]
	}
	if over := b.Len() + len(p) - maxStageErr; over > 0 {
		b.Next(over)
	}
	b.Buffer.Write(p)
	return n, nil
}

func lastLines(s string, n int) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	if len(out) > n {
		out = out[len(out)-n:]
	}
	return strings.Join(out, "\n")
}
