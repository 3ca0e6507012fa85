package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"
)

// StatusError is an error with the exit status the client gets.
type StatusError struct {
	Status int
	Err    error
}

func (e *StatusError) Error() string { return e.Err.Error() }
func (e *StatusError) Unwrap() error { return e.Err }

func statusOf(err error) int {
	var se *StatusError
	if errors.As(err, &se) && se.Status != 0 {
		return se.Status
	}
	return 1
}

// Exit statuses of the service itself (a runner's come from its stages).
const (
	StatusUsage   = 2  // a command the service does not take
	StatusRefused = 75 // a limit: try again later (EX_TEMPFAIL)
)

// session runs the one command of a connection and closes the channel.
func (s *Server) session(ctx context.Context, c Client, log *slog.Logger, ic *idleConn, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var line string
	got := false
wait:
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				req.Reply(false, nil)
				return
			}
			line, got = p.Command, true
			req.Reply(true, nil)
		case "shell":
			line, got = "help", true
			req.Reply(true, nil)
		default: // pty-req, env, subsystem, x11...: not here
			req.Reply(false, nil)
			continue
		}
		break wait
	}
	if !got {
		return
	}
	go ssh.DiscardRequests(reqs)

	out := &countWriter{w: ch}
	t0 := time.Now()
	cmd, err := ParseCommand(line)
	if err == nil && line == "help" {
		fmt.Fprintln(ch.Stderr(), Usage)
	}
	var read int64
	if err != nil {
		err = &StatusError{StatusUsage, fmt.Errorf("%v\n%s", err, Usage)}
	} else {
		if c.Limits.Total > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, c.Limits.Total)
			defer cancel()
		}
		read, err = s.run(ctx, c, cmd, ic, ch, out)
		if err != nil && ctx.Err() == context.DeadlineExceeded {
			err = &StatusError{StatusRefused, fmt.Errorf("%s took longer than this cloudlet allows (%s): %v", cmd.Verb, c.Limits.Total, err)}
		}
	}
	status := 0
	if err != nil {
		status = statusOf(err)
		msg := err.Error()
		fmt.Fprintf(ch.Stderr(), "cloudletd: %s\n", msg)
		if out.n == 0 { // the answer a script reads on stdout, as the listener gives it
			b, _ := json.Marshal(struct {
				Error  string `json:"error"`
				Status int    `json:"status"`
			}{msg, status})
			ch.Write(append(b, '\n'))
		}
	}
	log.Info("command", "verb", cmd.Verb, "line", truncate(line, 200), "status", status, "bytes_in", read,
		"seconds", time.Since(t0).Seconds(), "err", errString(err))
	ch.CloseWrite()
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(status)}))
}

func (s *Server) run(ctx context.Context, c Client, cmd Command, ic *idleConn, ch ssh.Channel, out io.Writer) (int64, error) {
	switch cmd.Verb {
	case "help":
		return 0, nil
	case "list":
		return 0, s.cfg.Runner.List(ctx, c, out)
	case "stop":
		return 0, s.cfg.Runner.Stop(ctx, c, cmd.Name, out, ch.Stderr())
	}
	release := s.take(c.Name, true, c.Limits)
	if release == nil {
		return 0, &StatusError{StatusRefused, fmt.Errorf("%d syntheses of yours are in progress, the most this cloudlet takes at once: try again when one has ended", c.Limits.Uploads)}
	}
	defer release()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	in := &uploadReader{r: ch, max: c.Limits.MaxBytes, cancel: cancel, done: func() { ic.setIdle(0) }}
	err := s.cfg.Runner.Synthesize(ctx, c, cmd, in, out, ch.Stderr())
	if in.err != nil { // the runner saw a cut stream; say why it was cut
		err = in.err
	}
	return in.n, err
}

// uploadReader passes the overlay through, counts it, cuts it at max (and
// cancels the command), and calls done at its end (the idle watch ends: the
// client now waits for the answer).
type uploadReader struct {
	r      io.Reader
	n, max int64
	cancel func()
	done   func()
	err    error
}

func (u *uploadReader) Read(p []byte) (int, error) {
	if u.err != nil {
		return 0, u.err
	}
	n, err := u.r.Read(p)
	u.n += int64(n)
	if u.max > 0 && u.n > u.max {
		u.err = &StatusError{StatusRefused, fmt.Errorf("the overlay is over %d bytes, the most this cloudlet takes from you", u.max)}
		u.cancel()
		return 0, u.err
	}
	if err == io.EOF && u.done != nil {
		u.done()
		u.done = nil
	}
	return n, err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
