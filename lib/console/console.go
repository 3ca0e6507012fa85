package console

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Console is a connection to a serial console: a socket, or the
// pseudo-terminal libvirt gives a domain's console.
type Console struct {
	conn io.ReadWriteCloser

	mu     sync.Mutex
	buf    []byte        // everything read so far
	cursor int           // WaitFor consumes up to here
	notify chan struct{} // closed and replaced on every read
	rerr   error         // read error (io.EOF when QEMU closed)

	runMu sync.Mutex
}

// Dial connects to the unix socket at path, retrying until it exists and
// accepts the connection or ctx ends; a terminal (a character device) is
// opened instead.
func Dial(ctx context.Context, path string) (*Console, error) {
	if st, err := os.Stat(path); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY, 0)
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		c := &Console{conn: f, notify: make(chan struct{})}
		go c.readLoop()
		return c, nil
	}
	var d net.Dialer
	for {
		conn, err := d.DialContext(ctx, "unix", path)
		if err == nil {
			c := &Console{conn: conn, notify: make(chan struct{})}
			go c.readLoop()
			return c, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("console: connect %s: %w (last error: %v)", path, ctx.Err(), err)
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func (c *Console) readLoop() {
	b := make([]byte, 32<<10)
	for {
		n, err := c.conn.Read(b)
		c.mu.Lock()
		if n > 0 {
			c.buf = append(c.buf, b[:n]...)
		}
		if err != nil {
			c.rerr = err
		}
		close(c.notify)
		c.notify = make(chan struct{})
		c.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// Close closes the connection (QEMU keeps running; the console can be
// dialed again).
func (c *Console) Close() error { return c.conn.Close() }

// Output returns everything read so far, with "\r\n" turned into "\n".
func (c *Console) Output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return normalize(c.buf)
}

// Tail returns up to the last n bytes of Output.
func (c *Console) Tail(n int) string {
	s := c.Output()
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return s
}

// Send writes s to the console as is.
func (c *Console) Send(s string) error {
	_, err := c.conn.Write([]byte(s))
	return err
}

func normalize(b []byte) string {
	s := strings.ReplaceAll(string(b), "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "")
}

// waitMatch waits until match finds something in buf[from:]; match returns
// the end offset (relative to from) of what it found, -1 for "not yet" or
// -2 for a shell syntax error.
func (c *Console) waitMatch(ctx context.Context, from int, match func([]byte) int) (int, error) {
	for {
		c.mu.Lock()
		if from > len(c.buf) {
			from = len(c.buf)
		}
		end := match(c.buf[from:])
		ch, rerr := c.notify, c.rerr
		c.mu.Unlock()
		if end >= 0 {
			return from + end, nil
		}
		if end == -2 {
			return 0, ErrSyntax
		}
		if rerr != nil {
			return 0, fmt.Errorf("console: closed: %w", rerr)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-ch:
		}
	}
}

// WaitRegexp is WaitFor for a regular expression.
func (c *Console) WaitRegexp(ctx context.Context, re *regexp.Regexp) error {
	c.mu.Lock()
	from := c.cursor
	c.mu.Unlock()
	end, err := c.waitMatch(ctx, from, func(b []byte) int {
		if m := re.FindIndex(b); m != nil {
			return m[1]
		}
		return -1
	})
	if err != nil {
		return fmt.Errorf("console: waiting for /%s/: %w", re, err)
	}
	c.mu.Lock()
	if end > c.cursor {
		c.cursor = end
	}
	c.mu.Unlock()
	return nil
}

// WaitFor waits until substr appears in the output after the end of the
// previous WaitFor match (or the start), and consumes the output up to the
// end of the match.
func (c *Console) WaitFor(ctx context.Context, substr string) error {
	c.mu.Lock()
	from := c.cursor
	c.mu.Unlock()
	end, err := c.waitMatch(ctx, from, func(b []byte) int {
		if i := bytes.Index(b, []byte(substr)); i >= 0 {
			return i + len(substr)
		}
		return -1
	})
	if err != nil {
		return fmt.Errorf("console: waiting for %q: %w", substr, err)
	}
	c.mu.Lock()
	if end > c.cursor {
		c.cursor = end
	}
	c.mu.Unlock()
	return nil
}

// ErrSyntax is returned by Run when the shell rejected the command line.
var ErrSyntax = errors.New("console: shell syntax error")

// Run types cmdline into the guest shell and waits for it to finish. It
// returns the command's output (stdout and stderr, "\n" line ends, without
// the trailing newline) and its exit status. cmdline must be one line; it
// runs in the shell itself (cd and variables persist), with stdin from
// /dev/null; a trailing '&' starts it in the background.
func (c *Console) Run(ctx context.Context, cmdline string) (string, int, error) {
	if strings.ContainsAny(cmdline, "\r\n") {
		return "", -1, errors.New("console: Run takes a single line (use sh -c for more)")
	}
	cmdline = strings.TrimSpace(cmdline)
	if cmdline == "" {
		cmdline = ":"
	}
	c.runMu.Lock()
	defer c.runMu.Unlock()

	var tb [6]byte
	_, _ = rand.Read(tb[:])
	tok := hex.EncodeToString(tb[:])
	sep := ";"
	if strings.HasSuffix(cmdline, "&") && !strings.HasSuffix(cmdline, "&&") {
		sep = ""
	}
	line := fmt.Sprintf("echo @@CLB''EGIN-%s@@; { %s%s } </dev/null; echo @@CLE''ND-%s-$?@@\n", tok, cmdline, sep, tok)
	begin := []byte("@@CLBEGIN-" + tok + "@@")
	endRe := regexp.MustCompile(`@@CLEND-` + tok + `-(\d+)@@`)

	checkSyntax := !strings.Contains(cmdline, "syntax error")
	c.mu.Lock()
	from := len(c.buf)
	c.mu.Unlock()
	// A newline first: a resumed shell may have a half-typed line or need
	// to print a fresh prompt.
	if err := c.Send("\n" + line); err != nil {
		return "", -1, fmt.Errorf("console: send: %w", err)
	}
	var code int
	var outStart, outEnd int
	_, err := c.waitMatch(ctx, from, func(b []byte) int {
		bi := -1
		for off := 0; ; {
			i := bytes.Index(b[off:], begin)
			if i < 0 {
				break
			}
			i += off
			// The marker must be followed by a line end (not be part of
			// the echoed command line).
			j := i + len(begin)
			if j < len(b) && (b[j] == '\r' || b[j] == '\n') {
				bi = j
				break
			}
			off = j
		}
		if bi < 0 {
			if checkSyntax && bytes.Contains(b, []byte("syntax error")) {
				return -2
			}
			return -1
		}
		for bi < len(b) && (b[bi] == '\r' || b[bi] == '\n') {
			bi++
			if b[bi-1] == '\n' {
				break
			}
		}
		m := endRe.FindSubmatchIndex(b[bi:])
		if m == nil {
			return -1
		}
		code, _ = strconv.Atoi(string(b[bi+m[2] : bi+m[3]]))
		outStart, outEnd = bi, bi+m[0]
		return bi + m[1]
	})
	if err != nil {
		return c.partial(from), -1, fmt.Errorf("console: run %q: %w", cmdline, err)
	}
	c.mu.Lock()
	out := normalize(c.buf[from+outStart : from+outEnd])
	c.mu.Unlock()
	return strings.TrimSuffix(out, "\n"), code, nil
}

func (c *Console) partial(from int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if from > len(c.buf) {
		return ""
	}
	return normalize(c.buf[from:])
}
