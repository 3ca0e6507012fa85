package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMPQuit connects to a QMP socket, negotiates capabilities and sends
// "quit". It is the small piece of QMP that stopping an instance needs; the
// full client lives elsewhere.
func QMPQuit(ctx context.Context, path string) error { return qmpExec(ctx, path, "quit") }

// QMPPing connects to a QMP socket, negotiates capabilities and runs
// query-status: it succeeds once QEMU's monitor serves commands.
func QMPPing(ctx context.Context, path string) error { return qmpExec(ctx, path, "query-status") }

// qmpExec runs argument-less commands on a fresh QMP connection and closes
// it (QEMU serves one QMP client at a time).
func qmpExec(ctx context.Context, path string, cmds ...string) error {
	return qmpSession(ctx, path, func(conn net.Conn, r *bufio.Reader) error {
		for _, cmd := range cmds {
			if _, err := fmt.Fprintf(conn, "{\"execute\":%q}\n", cmd); err != nil {
				return err
			}
			if _, err := readResult(r); err != nil {
				return fmt.Errorf("qmp %s: %w", cmd, err)
			}
		}
		return nil
	})
}

// qmpSession connects to a QMP socket, negotiates capabilities, runs fn and
// closes the connection.
func qmpSession(ctx context.Context, path string, fn func(net.Conn, *bufio.Reader) error) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	}
	r := bufio.NewReader(conn)
	// Greeting.
	if _, err := readQMP(r); err != nil {
		return fmt.Errorf("qmp greeting: %w", err)
	}
	if _, err := fmt.Fprintf(conn, "{\"execute\":\"qmp_capabilities\"}\n"); err != nil {
		return err
	}
	if _, err := readResult(r); err != nil {
		return fmt.Errorf("qmp qmp_capabilities: %w", err)
	}
	return fn(conn, r)
}

func readQMP(r *bufio.Reader) (map[string]json.RawMessage, error) {
	line, err := r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(line, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// readResult reads messages until a "return" or "error", skipping events,
// and returns the "return" value.
func readResult(r *bufio.Reader) (json.RawMessage, error) {
	for {
		m, err := readQMP(r)
		if err != nil {
			return nil, err
		}
		if ret, ok := m["return"]; ok {
			return ret, nil
		}
		if e, ok := m["error"]; ok {
			return nil, fmt.Errorf("%s", e)
		}
	}
}
