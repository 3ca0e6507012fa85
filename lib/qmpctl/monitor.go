package qmpctl

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// MaxLineSize is the longest QMP message line the client accepts. QEMU writes
// one JSON value per line; replies such as query-qmp-schema exceed 64 KiB.
const MaxLineSize = 64 << 20

// ErrClosed is returned by calls on a client or monitor that has been closed
// or whose connection has ended.
var ErrClosed = errors.New("qmpctl: connection closed")

// socketMonitor is a minimal QMP implementation over one net.Conn. It
// satisfies qmp.Monitor and adds runContext, which the Client prefers.
type socketMonitor struct {
	conn net.Conn
	br   *bufio.Reader

	greeting qmp.Version

	wmu sync.Mutex // serialises writes

	mu       sync.Mutex
	pending  map[string]chan result
	order    []string // ids in the order they were sent, for id-less replies
	nextID   uint64
	started  bool // read loop running; it owns closing events
	stopped  bool
	err      error // why the connection ended
	events   chan qmp.Event
	done     chan struct{} // closed when the connection ends
	loopDone chan struct{}
}

type result struct {
	line []byte
	err  error
}

var _ qmp.Monitor = (*socketMonitor)(nil)

func newSocketMonitor(conn net.Conn) *socketMonitor {
	return &socketMonitor{
		conn:     conn,
		br:       bufio.NewReaderSize(conn, 64<<10),
		pending:  make(map[string]chan result),
		events:   make(chan qmp.Event, 64),
		done:     make(chan struct{}),
		loopDone: make(chan struct{}),
	}
}

// message holds the fields used to classify a QMP line.
type message struct {
	QMP    *json.RawMessage `json:"QMP"`
	Event  string           `json:"event"`
	ID     json.RawMessage  `json:"id"`
	Return *json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// readLine returns the next non-blank line without its line ending. The
// returned slice is freshly allocated.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		if len(line)+len(frag) > MaxLineSize {
			return nil, fmt.Errorf("qmpctl: QMP line longer than %d bytes", MaxLineSize)
		}
		line = append(line, frag...)
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err != nil:
			if err == io.EOF && len(bytes.TrimSpace(line)) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		return line, nil
	}
}

// Connect reads the QMP greeting and negotiates capabilities, then starts
// reading responses and events. It blocks until QEMU answers; Client.New runs
// it under a context.
func (m *socketMonitor) Connect() error {
	line, err := readLine(m.br)
	if err != nil {
		return fmt.Errorf("qmpctl: reading QMP greeting: %w", err)
	}
	var g struct {
		QMP *struct {
			Version qmp.Version `json:"version"`
		} `json:"QMP"`
	}
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		return fmt.Errorf("qmpctl: not a QMP greeting: %.80q", line)
	}
	m.greeting = g.QMP.Version
	if _, err := m.write([]byte(`{"execute":"qmp_capabilities"}`+"\n"), time.Time{}); err != nil {
		return err
	}
	for {
		line, err := readLine(m.br)
		if err != nil {
			return fmt.Errorf("qmpctl: reading qmp_capabilities reply: %w", err)
		}
		var msg message
		if err := json.Unmarshal(line, &msg); err != nil {
			return fmt.Errorf("qmpctl: bad qmp_capabilities reply: %w", err)
		}
		if msg.Event != "" {
			continue
		}
		if msg.Error != nil {
			return &Error{Class: msg.Error.Class, Desc: msg.Error.Desc, Command: "qmp_capabilities"}
		}
		break
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return ErrClosed
	}
	m.started = true
	go m.readLoop()
	return nil
}

// write sends b, giving up at deadline unless it is zero. It returns how
// many bytes were written: after a partial write the stream is corrupt.
func (m *socketMonitor) write(b []byte, deadline time.Time) (int, error) {
	m.wmu.Lock()
	defer m.wmu.Unlock()
	m.conn.SetWriteDeadline(deadline)
	n, err := m.conn.Write(b)
	if err != nil {
		return n, fmt.Errorf("qmpctl: writing to QMP socket: %w", err)
	}
	return n, nil
}

func (m *socketMonitor) readLoop() {
	defer close(m.loopDone)
	defer close(m.events)
	for {
		l, err := readLine(m.br)
		if err != nil {
			m.shutdown(err)
			return
		}
		var msg message
		if err := json.Unmarshal(l, &msg); err != nil {
			continue // not JSON; QEMU never sends this
		}
		if msg.Event != "" {
			var ev qmp.Event
			if err := json.Unmarshal(l, &ev); err != nil {
				continue
			}
			select {
			case m.events <- ev:
			case <-m.done:
				return
			}
			continue
		}
		if msg.QMP != nil {
			continue
		}
		m.deliver(msg.ID, l)
	}
}

// deliver hands a response line to the call waiting for its id, or, for a
// reply without a known id, to the oldest waiting call.
func (m *socketMonitor) deliver(rawID json.RawMessage, line []byte) {
	var id string
	if len(rawID) > 0 {
		if err := json.Unmarshal(rawID, &id); err != nil {
			id = string(rawID)
		}
	}
	m.mu.Lock()
	ch, ok := m.pending[id]
	if !ok {
		if len(m.order) == 0 {
			m.mu.Unlock()
			return // reply to an abandoned call
		}
		id = m.order[0]
		ch = m.pending[id]
	}
	m.forget(id)
	m.mu.Unlock()
	ch <- result{line: line}
}

// forget removes id from the pending set; m.mu must be held.
func (m *socketMonitor) forget(id string) {
	delete(m.pending, id)
	for i, o := range m.order {
		if o == id {
			m.order = append(m.order[:i], m.order[i+1:]...)
			break
		}
	}
}

// shutdown ends the connection and fails all waiting calls.
func (m *socketMonitor) shutdown(cause error) {
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		return
	}
	m.stopped = true
	if cause == nil || errors.Is(cause, net.ErrClosed) {
		m.err = ErrClosed
	} else {
		m.err = fmt.Errorf("%w: %w", ErrClosed, cause)
	}
	pending := m.pending
	m.pending = map[string]chan result{}
	m.order = nil
	if !m.started {
		close(m.events)
	}
	close(m.done)
	m.mu.Unlock()
	m.conn.Close()
	for _, ch := range pending {
		ch <- result{err: m.err}
	}
}

// Disconnect closes the connection. It never blocks for long: closing the
// socket ends the read loop, which it then waits for at most a second.
func (m *socketMonitor) Disconnect() error {
	m.shutdown(nil)
	m.mu.Lock()
	started := m.started
	m.mu.Unlock()
	if started {
		select {
		case <-m.loopDone:
		case <-time.After(time.Second):
		}
	}
	return nil
}

// Events returns the event channel. It must be drained; the Client does so.
func (m *socketMonitor) Events(context.Context) (<-chan qmp.Event, error) {
	return m.events, nil
}

// Run implements qmp.Monitor. For a QMP error response it returns the
// response line and an *Error.
func (m *socketMonitor) Run(cmd []byte) ([]byte, error) {
	line, err := m.runContext(context.Background(), cmd)
	if err != nil {
		return line, err
	}
	if qerr := parseError(line); qerr != nil {
		return line, qerr
	}
	return line, nil
}

// runContext sends cmd, a JSON object, tagged with a fresh "id" and returns
// the matching response line. If ctx ends first the call is abandoned and a
// late reply is dropped; the connection stays usable.
func (m *socketMonitor) runContext(ctx context.Context, cmd []byte) ([]byte, error) {
	cmd = bytes.TrimSpace(cmd)
	if len(cmd) < 2 || cmd[0] != '{' {
		return nil, fmt.Errorf("qmpctl: command is not a JSON object: %.80q", cmd)
	}
	ch := make(chan result, 1)
	m.mu.Lock()
	if m.stopped {
		err := m.err
		m.mu.Unlock()
		return nil, err
	}
	m.nextID++
	id := "qmpctl-" + strconv.FormatUint(m.nextID, 10)
	m.pending[id] = ch
	m.order = append(m.order, id)
	m.mu.Unlock()

	idField, _ := json.Marshal(id)
	var b bytes.Buffer
	b.WriteString(`{"id":`)
	b.Write(idField)
	if rest := bytes.TrimSpace(cmd[1:]); len(rest) > 0 && rest[0] != '}' {
		b.WriteByte(',')
	}
	b.Write(cmd[1:])
	b.WriteByte('\n')

	dl, _ := ctx.Deadline()
	n, err := 0, ctx.Err()
	if err == nil {
		n, err = m.write(b.Bytes(), dl)
	}
	if err != nil {
		m.mu.Lock()
		m.forget(id)
		m.mu.Unlock()
		if n > 0 {
			// A partial write leaves the stream corrupt.
			m.shutdown(err)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	select {
	case r := <-ch:
		return r.line, r.err
	case <-ctx.Done():
		m.mu.Lock()
		m.forget(id)
		m.mu.Unlock()
		// A reply may have raced in.
		select {
		case r := <-ch:
			return r.line, r.err
		default:
		}
		return nil, ctx.Err()
	}
}
