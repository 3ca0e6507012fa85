package virt

import (
	"context"
	"encoding/json"
	"sync"

	"github.com/digitalocean/go-qemu/qmp"
)

// monitor is a QMP monitor of a domain through libvirt (what virsh
// qemu-monitor-command uses), for a domain whose QEMU has no monitor of
// ours. It implements go-qemu's qmp.Monitor, so qmpctl drives it as a
// socket.
type monitor struct {
	c      *Conn
	name   string
	mu     sync.Mutex
	cancel context.CancelFunc
}

// Monitor returns a QMP monitor of the domain name. The connection must
// stay open while it is used.
func (c *Conn) Monitor(name string) qmp.Monitor { return &monitor{c: c, name: name} }

func (m *monitor) Connect() error {
	_, err := m.c.l.DomainLookupByName(m.name)
	return err
}

func (m *monitor) Disconnect() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cancel != nil {
		m.cancel()
		m.cancel = nil
	}
	return nil
}

// Run sends one QMP command; the reply comes back as QEMU wrote it, error
// replies included, so their class is kept.
func (m *monitor) Run(cmd []byte) ([]byte, error) {
	d, err := m.c.l.DomainLookupByName(m.name)
	if err != nil {
		return nil, err
	}
	out, err := m.c.l.QEMUDomainMonitorCommand(d, string(cmd), 0)
	if err != nil {
		return nil, err
	}
	return []byte(out), nil
}

// Events streams the domain's QEMU events until Disconnect.
func (m *monitor) Events(ctx context.Context) (<-chan qmp.Event, error) {
	ctx, cancel := context.WithCancel(ctx)
	in, err := m.c.l.SubscribeQEMUEvents(ctx, m.name)
	if err != nil {
		cancel()
		return nil, err
	}
	m.mu.Lock()
	m.cancel = cancel
	m.mu.Unlock()
	out := make(chan qmp.Event)
	go func() {
		defer close(out)
		for ev := range in {
			e := qmp.Event{Event: ev.Event}
			if len(ev.Details) > 0 {
				json.Unmarshal(ev.Details, &e.Data)
			}
			e.Timestamp.Seconds, e.Timestamp.Microseconds = int64(ev.Seconds), int64(ev.Microseconds)
			select {
			case out <- e:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}
