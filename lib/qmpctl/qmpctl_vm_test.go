package qmpctl

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startQEMU starts a minimal TCG guest with a QMP socket and returns the
// socket path and a channel that is closed when the process has exited. It skips when QEMU is missing, unless
// CI=true. QEMU is always killed at cleanup.
func startQEMU(t *testing.T) (string, <-chan struct{}) {
	t.Helper()
	bin, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("qemu-system-x86_64 not found and CI=true: %v", err)
		}
		t.Skipf("qemu-system-x86_64 not found: %v", err)
	}
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(bin, "-accel", "tcg", "-m", "64", "-nodefaults",
		"-display", "none", "-vga", "none", "-net", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting QEMU: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("QEMU stderr:\n%s", stderr.String())
		}
	})
	return sock, exited
}

func TestRealQEMU(t *testing.T) {
	sock, exited := startQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := Dial(dctx, sock)
	dcancel()
	if err != nil {
		t.Fatalf("Dial() = %v", err)
	}
	defer c.Close()

	v, err := c.QueryVersion(ctx)
	if err != nil || v.Major != 7 {
		t.Fatalf("QueryVersion() = %v, %v; want 7.x", v, err)
	}
	t.Logf("QEMU %v (%s)", v, v.Package)

	machine, err := c.QueryMachine(ctx)
	if err != nil || !strings.HasPrefix(machine, "pc-i440fx-") {
		t.Errorf("QueryMachine() = %q, %v; want pc-i440fx-*", machine, err)
	}
	cpu, err := c.QueryCPUModel(ctx)
	if err != nil || cpu != "qemu64" {
		t.Errorf("QueryCPUModel() = %q, %v; want qemu64", cpu, err)
	}
	t.Logf("machine %s, cpu %s", machine, cpu)

	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	if status, running, err := c.QueryStatus(ctx); err != nil || status != "paused" || running {
		t.Errorf("QueryStatus() after Stop = %q, %v, %v; want paused", status, running, err)
	}
	if _, err := c.WaitEvent(ctx, "STOP", nil); err != nil {
		t.Errorf("WaitEvent(STOP) = %v", err)
	}

	resumed := c.Subscribe("RESUME", nil)
	if err := c.Cont(ctx); err != nil {
		t.Fatalf("Cont() = %v", err)
	}
	if status, running, err := c.QueryStatus(ctx); err != nil || status != "running" || !running {
		t.Errorf("QueryStatus() after Cont = %q, %v, %v; want running", status, running, err)
	}
	if _, err := resumed.Wait(ctx); err != nil {
		t.Errorf("RESUME: %v", err)
	}

	out, err := c.HumanMonitorCommand(ctx, "info status")
	if err != nil || !strings.Contains(out, "running") {
		t.Errorf("HumanMonitorCommand(info status) = %q, %v", out, err)
	}

	// Capture: stop, unthrottle, migrate to a file.
	state := filepath.Join(t.TempDir(), "state")
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop() = %v", err)
	}
	if err := c.SetMigrationCapabilities(ctx, map[string]bool{"events": true}); err != nil {
		t.Fatalf("SetMigrationCapabilities() = %v", err)
	}
	if err := c.SetMigrationParameters(ctx, UnthrottledMigration()); err != nil {
		t.Fatalf("SetMigrationParameters() = %v", err)
	}
	completed := c.Subscribe("MIGRATION", func(d map[string]any) bool { return d["status"] == "completed" })
	if err := c.Migrate(ctx, "exec:cat > '"+state+"'"); err != nil {
		t.Fatalf("Migrate() = %v", err)
	}
	if err := c.WaitMigration(ctx); err != nil {
		t.Fatalf("WaitMigration() = %v", err)
	}
	if _, err := completed.Wait(ctx); err != nil {
		t.Errorf("MIGRATION completed event: %v", err)
	}
	info, err := c.QueryMigrate(ctx)
	if err != nil || info.Status != "completed" || info.RAM.Total == 0 {
		t.Errorf("QueryMigrate() = %+v, %v; want completed", info, err)
	}
	fi, err := os.Stat(state)
	if err != nil || fi.Size() == 0 {
		t.Errorf("migration stream file: %v, %v; want non-empty", fi, err)
	} else {
		t.Logf("stream %d bytes, ram transferred %d of %d, total %d ms", fi.Size(), info.RAM.Transferred, info.RAM.Total, info.TotalTimeMS)
	}

	err = c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("Execute(no-such-command) = %v; want *Error CommandNotFound", err)
	}
	err = c.Execute(ctx, "qom-get", map[string]string{"path": "/nowhere", "property": "type"}, nil)
	if !errors.As(err, &qe) || qe.Class != "DeviceNotFound" {
		t.Errorf("qom-get /nowhere = %v; want *Error DeviceNotFound", err)
	}

	if err := c.Quit(ctx); err != nil {
		t.Fatalf("Quit() = %v", err)
	}
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		t.Fatal("QEMU did not exit after quit")
	}
}
