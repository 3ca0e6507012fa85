package qmpctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// Error is an error response from QEMU. Class is QMP's error class, such as
// "GenericError", "CommandNotFound" or "DeviceNotFound".
type Error struct {
	Class   string // QMP error class
	Desc    string // QEMU's human-readable description
	Command string // the command that failed
}

func (e *Error) Error() string {
	if e.Command == "" {
		return fmt.Sprintf("qmp: %s: %s", e.Class, e.Desc)
	}
	return fmt.Sprintf("qmp: %s: %s: %s", e.Command, e.Class, e.Desc)
}

// parseError returns the *Error in a response line, or nil if the line is
// not an error response.
func parseError(line []byte) *Error {
	var msg message
	if err := json.Unmarshal(line, &msg); err != nil || msg.Error == nil {
		return nil
	}
	return &Error{Class: msg.Error.Class, Desc: msg.Error.Desc}
}

// contextRunner is implemented by monitors that can abandon a call without
// breaking the connection.
type contextRunner interface {
	runContext(ctx context.Context, cmd []byte) ([]byte, error)
}

// Client is a QMP connection to one QEMU process. Its methods are safe for
// concurrent use.
type Client struct {
	mon    qmp.Monitor
	runCtx contextRunner // nil for foreign monitors

	closeOnce sync.Once
	closed    chan struct{} // closed by Close or when the monitor fails
	closeErr  error         // why closed was closed; set before closing it

	mu      sync.Mutex
	log     []*logEntry // kept events, oldest first, at most maxKeptEvents
	waiters map[*Waiter]struct{}
	evDone  bool // the event stream has ended
}

// maxKeptEvents bounds the events kept for WaitEvent.
const maxKeptEvents = 4096

type logEntry struct {
	ev    qmp.Event
	taken bool
}

// Dial connects to the QMP unix socket at socketPath. It retries while the
// socket does not exist or refuses connections (QEMU may still be starting),
// until ctx ends; the QMP handshake is also bounded by ctx.
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	var d net.Dialer
	var lastErr error
	for {
		conn, err := d.DialContext(ctx, "unix", socketPath)
		if err == nil {
			c, err := New(ctx, newSocketMonitor(conn))
			if err != nil {
				conn.Close()
				return nil, err
			}
			return c, nil
		}
		lastErr = err
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("qmpctl: dial %s: %w (last error: %v)", socketPath, ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

// New connects mon (calling its Connect under ctx: if ctx ends first, the
// monitor is disconnected and abandoned) and starts draining its events.
func New(ctx context.Context, mon qmp.Monitor) (*Client, error) {
	errc := make(chan error, 1)
	go func() { errc <- mon.Connect() }()
	select {
	case err := <-errc:
		if err != nil {
			return nil, fmt.Errorf("qmpctl: connect: %w", err)
		}
	case <-ctx.Done():
		disconnect(mon)
		return nil, fmt.Errorf("qmpctl: connect: %w", ctx.Err())
	}
	c := &Client{
		mon:     mon,
		closed:  make(chan struct{}),
		waiters: make(map[*Waiter]struct{}),
	}
	c.runCtx, _ = mon.(contextRunner)
	events, err := mon.Events(context.Background())
	if err != nil && !errors.Is(err, qmp.ErrEventsNotSupported) {
		disconnect(mon)
		return nil, fmt.Errorf("qmpctl: events: %w", err)
	}
	if events != nil {
		go c.drain(events)
	}
	return c, nil
}

// disconnect calls mon.Disconnect, waiting at most two seconds for it.
func disconnect(mon qmp.Monitor) {
	done := make(chan struct{})
	go func() {
		mon.Disconnect()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
}

// Close disconnects from QEMU. It never blocks for more than a few seconds,
// and calls after the first do nothing.
func (c *Client) Close() error {
	c.shutdown(ErrClosed)
	return nil
}

func (c *Client) shutdown(cause error) {
	c.closeOnce.Do(func() {
		c.closeErr = cause
		close(c.closed)
		disconnect(c.mon)
	})
}

// Execute runs the QMP command with the given arguments (nil for none) and,
// if ret is not nil, unmarshals the "return" value into it. A QMP error
// response is returned as an *Error.
func (c *Client) Execute(ctx context.Context, command string, args, ret any) error {
	select {
	case <-c.closed:
		return fmt.Errorf("qmpctl: %s: %w", command, c.closeErr)
	default:
	}
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
	}{command, args}
	cmd, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmpctl: %s: encoding arguments: %w", command, err)
	}
	line, err := c.run(ctx, cmd)
	if err != nil {
		var qe *Error
		if errors.As(err, &qe) {
			qe.Command = command
			return qe
		}
		if line == nil {
			return fmt.Errorf("qmpctl: %s: %w", command, err)
		}
	}
	if qe := parseError(line); qe != nil {
		qe.Command = command
		return qe
	}
	if ret == nil {
		return nil
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("qmpctl: %s: decoding response: %w", command, err)
	}
	if len(resp.Return) == 0 {
		return fmt.Errorf("qmpctl: %s: response has no return value: %.80q", command, line)
	}
	if err := json.Unmarshal(resp.Return, ret); err != nil {
		return fmt.Errorf("qmpctl: %s: decoding return value: %w", command, err)
	}
	return nil
}

// run sends one command under ctx. With a foreign monitor, an abandoned call
// closes the client, since its reply could be taken for the next one's.
func (c *Client) run(ctx context.Context, cmd []byte) ([]byte, error) {
	if c.runCtx != nil {
		line, err := c.runCtx.runContext(ctx, cmd)
		if errors.Is(err, ErrClosed) {
			c.shutdown(err)
		}
		return line, err
	}
	type result struct {
		line []byte
		err  error
	}
	rc := make(chan result, 1)
	go func() {
		line, err := c.mon.Run(cmd)
		rc <- result{line, err}
	}()
	select {
	case r := <-rc:
		return r.line, r.err
	case <-ctx.Done():
		c.shutdown(fmt.Errorf("%w: a call was abandoned: %w", ErrClosed, ctx.Err()))
		return nil, ctx.Err()
	case <-c.closed:
		return nil, c.closeErr
	}
}

// drain reads events until the stream ends, keeping them for waiters.
func (c *Client) drain(events <-chan qmp.Event) {
	for ev := range events {
		c.mu.Lock()
		entry := &logEntry{ev: ev}
		for w := range c.waiters {
			if w.matches(ev) {
				if !w.peek {
					entry.taken = true
				}
				delete(c.waiters, w)
				w.ch <- ev
			}
		}
		c.log = append(c.log, entry)
		if len(c.log) > maxKeptEvents {
			c.log = append(c.log[:0], c.log[len(c.log)-maxKeptEvents:]...)
		}
		c.mu.Unlock()
	}
	c.mu.Lock()
	c.evDone = true
	for w := range c.waiters {
		close(w.ch)
		delete(c.waiters, w)
	}
	c.mu.Unlock()
}

// Waiter waits for one event. Create it with Subscribe before running the
// command that causes the event, then call Wait.
type Waiter struct {
	c     *Client
	name  string
	match func(data map[string]any) bool
	ch    chan qmp.Event // buffered; closed if the event stream ends
	peek  bool           // internal waiter: leaves the event for WaitEvent
}

func (w *Waiter) matches(ev qmp.Event) bool {
	return ev.Event == w.name && (w.match == nil || w.match(ev.Data))
}

// Subscribe returns a Waiter for the first event named name, arriving after
// this call, for which match (nil matches all) returns true. Every matching
// Waiter gets the event; WaitEvent will not return it again. match runs
// while the client's lock is held and must not call the client.
func (c *Client) Subscribe(name string, match func(data map[string]any) bool) *Waiter {
	return c.subscribe(name, match, false)
}

func (c *Client) subscribe(name string, match func(data map[string]any) bool, peek bool) *Waiter {
	w := &Waiter{c: c, name: name, match: match, ch: make(chan qmp.Event, 1), peek: peek}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.evDone {
		close(w.ch)
	} else {
		c.waiters[w] = struct{}{}
	}
	return w
}

// Wait returns the event, or an error when ctx ends, the client is closed or
// the event stream ends first.
func (w *Waiter) Wait(ctx context.Context) (qmp.Event, error) {
	select {
	case ev, ok := <-w.ch:
		if !ok {
			return qmp.Event{}, fmt.Errorf("qmpctl: waiting for event %s: %w", w.name, ErrClosed)
		}
		return ev, nil
	case <-ctx.Done():
		w.Cancel()
		// The event may have arrived just now.
		select {
		case ev, ok := <-w.ch:
			if ok {
				return ev, nil
			}
		default:
		}
		return qmp.Event{}, fmt.Errorf("qmpctl: waiting for event %s: %w", w.name, ctx.Err())
	case <-w.c.closed:
		w.Cancel()
		return qmp.Event{}, fmt.Errorf("qmpctl: waiting for event %s: %w", w.name, w.c.closeErr)
	}
}

// Cancel stops waiting; it is safe to call more than once.
func (w *Waiter) Cancel() {
	w.c.mu.Lock()
	delete(w.c.waiters, w)
	w.c.mu.Unlock()
}

// WaitEvent returns the oldest kept event named name for which match (nil
// matches all) returns true and that no earlier WaitEvent or Waiter has
// returned, waiting for one to arrive if there is none. Events are kept from
// Dial on (the most recent 4096), so "Stop, then WaitEvent STOP" works; use
// Subscribe to ignore events from before the command.
func (c *Client) WaitEvent(ctx context.Context, name string, match func(data map[string]any) bool) (qmp.Event, error) {
	w := &Waiter{c: c, name: name, match: match, ch: make(chan qmp.Event, 1)}
	c.mu.Lock()
	for _, e := range c.log {
		if !e.taken && w.matches(e.ev) {
			e.taken = true
			c.mu.Unlock()
			return e.ev, nil
		}
	}
	if c.evDone {
		close(w.ch)
	} else {
		c.waiters[w] = struct{}{}
	}
	c.mu.Unlock()
	return w.Wait(ctx)
}

// Events returns a copy of the kept events, oldest first, for debugging.
func (c *Client) Events() []qmp.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]qmp.Event, len(c.log))
	for i, e := range c.log {
		out[i] = e.ev
	}
	return out
}
