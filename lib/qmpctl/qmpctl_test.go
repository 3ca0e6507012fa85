package qmpctl

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/qmptest"
)

func dialFake(t *testing.T, s *fakeServer) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, s.path)
	if err != nil {
		t.Fatalf("Dial(%s) = %v", s.path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestQueriesAndErrorClass(t *testing.T) {
	s := newFakeServer(t, func(f *fakeConn, req request) {
		switch req.Execute {
		case "query-status":
			f.reply(req, `{"status": "paused", "singlestep": false, "running": false}`)
		case "query-version":
			f.reply(req, `{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake pkg"}`)
		case "qom-get":
			var a struct{ Path, Property string }
			json.Unmarshal(req.Arguments, &a)
			switch a.Path {
			case "/machine":
				f.reply(req, `"pc-i440fx-7.2-machine"`)
			case "/machine/unattached/device[0]":
				f.reply(req, `"qemu64-x86_64-cpu"`)
			default:
				f.fail(req, "DeviceNotFound", "Device '"+a.Path+"' not found")
			}
		case "query-cpus-fast":
			f.reply(req, `[{"qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}]`)
		case "migrate-set-capabilities", "migrate-set-parameters":
			// Echo the arguments back in an error so the test can see them.
			f.fail(req, "Echo", string(req.Arguments))
		default:
			f.fail(req, "CommandNotFound", "The command "+req.Execute+" has not been found")
		}
	})
	c := dialFake(t, s)
	ctx := testCtx(t)

	status, running, err := c.QueryStatus(ctx)
	if err != nil || status != "paused" || running {
		t.Errorf("QueryStatus() = %q, %v, %v; want paused, false, nil", status, running, err)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil || v != (Version{7, 2, 22, "fake pkg"}) {
		t.Errorf("QueryVersion() = %+v, %v; want 7.2.22 fake pkg", v, err)
	}
	m, err := c.QueryMachine(ctx)
	if err != nil || m != "pc-i440fx-7.2" {
		t.Errorf("QueryMachine() = %q, %v; want pc-i440fx-7.2", m, err)
	}
	cpu, err := c.QueryCPUModel(ctx)
	if err != nil || cpu != "qemu64" {
		t.Errorf("QueryCPUModel() = %q, %v; want qemu64", cpu, err)
	}

	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "no-such-command" ||
		!strings.Contains(qe.Desc, "has not been found") {
		t.Errorf("Execute(no-such-command) = %#v; want *Error CommandNotFound", err)
	}

	err = c.SetMigrationCapabilities(ctx, map[string]bool{"x-ignore-shared": true, "events": false})
	if !errors.As(err, &qe) || qe.Desc != `{"capabilities":[{"capability":"events","state":false},{"capability":"x-ignore-shared","state":true}]}` {
		t.Errorf("SetMigrationCapabilities sent %v", err)
	}
	err = c.SetMigrationParameters(ctx, UnthrottledMigration())
	if !errors.As(err, &qe) || qe.Desc != `{"downtime-limit":2000,"max-bandwidth":1099511627776}` {
		t.Errorf("SetMigrationParameters sent %v", err)
	}
}

func TestEventsInterleavedAndHugeLine(t *testing.T) {
	huge := strings.Repeat("x", 300<<10) // > 64 KiB, the go-qemu limit
	s := newFakeServer(t, func(f *fakeConn, req request) {
		switch req.Execute {
		case "stop":
			// Far more events than any channel buffer, before the reply.
			for i := 0; i < 1000; i++ {
				f.event("NOISE", `{"i": `+strconv.Itoa(i)+`}`)
			}
			f.event("STOP", `{}`)
			f.reply(req, `{}`)
		case "human-monitor-command":
			f.event("NOISE", `{"i": -1}`)
			f.reply(req, `"`+huge+`"`)
		case "cont":
			f.reply(req, `{}`)
			f.event("RESUME", `{}`)
		}
	})
	c := dialFake(t, s)
	ctx := testCtx(t)

	resumed := c.Subscribe("RESUME", nil)
	resumed2 := c.Subscribe("RESUME", nil)
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	ev, err := c.WaitEvent(ctx, "STOP", nil)
	if err != nil || ev.Event != "STOP" || ev.Timestamp.Seconds != 1 {
		t.Fatalf("WaitEvent(STOP) = %+v, %v", ev, err)
	}
	// Match on data; an event is returned once only.
	ev, err = c.WaitEvent(ctx, "NOISE", func(d map[string]any) bool { return d["i"] == float64(500) })
	if err != nil || ev.Data["i"] != float64(500) {
		t.Fatalf("WaitEvent(NOISE 500) = %+v, %v", ev, err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	_, err = c.WaitEvent(short, "NOISE", func(d map[string]any) bool { return d["i"] == float64(500) })
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second WaitEvent(NOISE 500) = %v; want deadline exceeded", err)
	}

	out, err := c.HumanMonitorCommand(ctx, "info huge")
	if err != nil || out != huge {
		t.Fatalf("HumanMonitorCommand() = %d bytes, %v; want %d bytes", len(out), err, len(huge))
	}

	if err := c.Cont(ctx); err != nil {
		t.Fatalf("Cont() = %v", err)
	}
	for _, w := range []*Waiter{resumed, resumed2} {
		if ev, err := w.Wait(ctx); err != nil || ev.Event != "RESUME" {
			t.Errorf("Waiter.Wait() = %+v, %v; every subscriber gets the event", ev, err)
		}
	}
	// The subscribed waiter took RESUME, so WaitEvent must not return it.
	short, cancel = context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := c.WaitEvent(short, "RESUME", nil); err == nil {
		t.Errorf("WaitEvent(RESUME) returned an event already taken by a Waiter")
	}
}

func TestTimeoutKeepsConnection(t *testing.T) {
	s := newFakeServer(t, func(f *fakeConn, req request) {
		switch req.Execute {
		case "hang":
			// never answered
		case "slow":
			go func() {
				time.Sleep(300 * time.Millisecond)
				f.reply(req, `"late"`)
			}()
		case "query-status":
			f.reply(req, `{"status": "running", "running": true}`)
		}
	})
	c := dialFake(t, s)
	ctx := testCtx(t)

	for _, cmd := range []string{"hang", "slow"} {
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		start := time.Now()
		err := c.Execute(short, cmd, nil, nil)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Execute(%s) = %v; want deadline exceeded", cmd, err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Execute(%s) took %v", cmd, d)
		}
	}
	// A call whose context has already ended is not sent at all.
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Execute(done, "query-status", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Execute(cancelled ctx) = %v; want context.Canceled", err)
	}
	// The late "slow" reply must not be taken for this one's.
	time.Sleep(400 * time.Millisecond)
	status, running, err := c.QueryStatus(ctx)
	if err != nil || status != "running" || !running {
		t.Errorf("QueryStatus() after timeouts = %q, %v, %v; want running", status, running, err)
	}
}

func TestServerDisappearsMidCall(t *testing.T) {
	s := newFakeServer(t, func(f *fakeConn, req request) {
		if req.Execute == "crash" {
			f.event("NOISE", `{}`)
			f.send(`{"return": {}, "id": "trunc`) // a cut line, then EOF
			f.conn.Close()
		}
	})
	c := dialFake(t, s)
	ctx := testCtx(t)
	w := c.Subscribe("SHUTDOWN", nil)
	err := c.Execute(ctx, "crash", nil, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute(crash) = %v; want ErrClosed", err)
	}
	if _, err := w.Wait(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Waiter.Wait() after disconnect = %v; want ErrClosed", err)
	}
	if _, _, err := c.QueryStatus(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("QueryStatus() after disconnect = %v; want ErrClosed", err)
	}
	done := make(chan struct{})
	go func() { c.Close(); c.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close() hung")
	}
}

func TestDialRetriesUntilSocketExists(t *testing.T) {
	path := filepath.Join(t.TempDir(), "late.sock")
	go func() {
		time.Sleep(300 * time.Millisecond)
		ln, err := net.Listen("unix", path)
		if err != nil {
			return
		}
		t.Cleanup(func() { ln.Close() })
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		serveConn(conn, func(f *fakeConn, req request) { f.reply(req, `{"status": "prelaunch", "running": false}`) })
	}()
	ctx := testCtx(t)
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer c.Close()
	if status, _, err := c.QueryStatus(ctx); err != nil || status != "prelaunch" {
		t.Errorf("QueryStatus() = %q, %v", status, err)
	}
}

func TestDialBoundedByContext(t *testing.T) {
	dir := t.TempDir()
	// No socket at all.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, filepath.Join(dir, "none.sock")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial(missing) = %v; want deadline exceeded", err)
	}
	// A socket that accepts but never greets (a stopped QEMU).
	path := filepath.Join(dir, "mute.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			t.Cleanup(func() { conn.Close() })
		}
	}()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	start := time.Now()
	if _, err := Dial(ctx2, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Dial(mute) = %v; want deadline exceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Dial(mute) took %v", d)
	}
}

func TestWaitMigration(t *testing.T) {
	tests := []struct {
		name     string
		statuses []string // query-migrate returns, last one repeated
		wantErr  string
	}{
		{"completed", []string{`{"status": "setup"}`, `{"status": "active", "ram": {"total": 1, "transferred": 1}}`, `{"status": "completed", "ram": {"total": 67108864, "transferred": 400000}}`}, ""},
		{"failed with text", []string{`{"status": "active"}`, `{"status": "failed", "error-desc": "Unable to write to command: Broken pipe"}`}, "migration failed: Unable to write to command: Broken pipe"},
		{"failed without text", []string{`{"status": "failed"}`}, "migration failed with no error text"},
		{"cancelled", []string{`{"status": "cancelled"}`}, "migration cancelled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var n atomic.Int32
			s := newFakeServer(t, func(f *fakeConn, req request) {
				if req.Execute != "query-migrate" {
					f.fail(req, "CommandNotFound", req.Execute)
					return
				}
				i := int(n.Add(1)) - 1
				if i >= len(tt.statuses) {
					i = len(tt.statuses) - 1
				}
				f.event("MIGRATION", `{"status": "x"}`)
				f.reply(req, tt.statuses[i])
			})
			c := dialFake(t, s)
			err := c.WaitMigration(testCtx(t))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("WaitMigration() = %v; want nil", err)
				}
				info, err := c.QueryMigrate(testCtx(t))
				if err != nil || info.RAM.Total != 67108864 || info.RAM.Transferred != 400000 {
					t.Errorf("QueryMigrate() = %+v, %v", info, err)
				}
				// WaitMigration's own waiting must not consume MIGRATION events.
				if _, err := c.WaitEvent(testCtx(t), "MIGRATION", nil); err != nil {
					t.Errorf("WaitEvent(MIGRATION) after WaitMigration = %v", err)
				}
				return
			}
			var me *MigrationError
			if !errors.As(err, &me) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("WaitMigration() = %v; want *MigrationError containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestWaitMigrationNoneTimesOut(t *testing.T) {
	s := newFakeServer(t, func(f *fakeConn, req request) { f.reply(req, `{}`) })
	c := dialFake(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := c.WaitMigration(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitMigration() with no migration = %v; want deadline exceeded", err)
	}
}

func TestForeignMonitor(t *testing.T) {
	ctx := testCtx(t)
	block := make(chan struct{})
	defer close(block)
	mon := qmptest.NewMonitor(func(cmd qmp.Command) (any, error) {
		switch cmd.Execute {
		case "query-status":
			return map[string]any{"return": map[string]any{"status": "running", "running": true}}, nil
		case "hang":
			<-block
			return nil, nil
		case "plain-error":
			return nil, errors.New("no class here")
		}
		return map[string]any{"error": map[string]string{"class": "CommandNotFound", "desc": "nope"}}, nil
	})
	c, err := New(ctx, mon)
	if err != nil {
		t.Fatalf("New(qmptest monitor) = %v", err)
	}
	defer c.Close()
	if s, r, err := c.QueryStatus(ctx); err != nil || s != "running" || !r {
		t.Errorf("QueryStatus() = %q, %v, %v", s, r, err)
	}
	var qe *Error
	if err := c.Execute(ctx, "bogus", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("Execute(bogus) = %v; want *Error CommandNotFound", err)
	}
	if err := c.Execute(ctx, "plain-error", nil, nil); err == nil || errors.As(err, &qe) {
		t.Errorf("Execute(plain-error) = %#v; want a plain error", err)
	}
	// An abandoned call on a foreign monitor closes the client.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := c.Execute(short, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Execute(hang) = %v; want deadline exceeded", err)
	}
	if _, _, err := c.QueryStatus(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("QueryStatus() after abandoned call = %v; want ErrClosed", err)
	}
}

// The package's own monitor also works as a go-qemu qmp.Monitor, and its Run
// keeps the error class that go-qemu's SocketMonitor drops.
func TestSocketMonitorAsQMPMonitor(t *testing.T) {
	s := newFakeServer(t, func(f *fakeConn, req request) {
		f.fail(req, "DeviceNotFound", "no such device")
	})
	conn, err := net.Dial("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	var mon qmp.Monitor = newSocketMonitor(conn)
	if err := mon.Connect(); err != nil {
		t.Fatalf("Connect() = %v", err)
	}
	defer mon.Disconnect()
	out, err := mon.Run([]byte(`{"execute":"device_del","arguments":{"id":"x"}}`))
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" || !strings.Contains(string(out), "DeviceNotFound") {
		t.Errorf("Run() = %q, %v; want the error line and *Error DeviceNotFound", out, err)
	}
}
