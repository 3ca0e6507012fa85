package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"
	"cloudlet/lib/vm"
)

func TestMain(m *testing.M) { os.Exit(guesttest.Main(m)) }

// A guest with no shell on its serial console (here: no guest at all, QEMU
// sits in its firmware) gets a clear message after --shell-timeout, not a
// hang.
func TestNoShellIsReported(t *testing.T) {
	guesttest.RequireQEMU(t)
	d, err := os.MkdirTemp("", "clvc-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(d)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	in, err := vm.Start(ctx, vm.Config{Name: "noshell", RunDir: filepath.Join(d, "run"), MemMiB: 64, MemShare: true, Accel: "tcg"})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Stop(context.Background())
	var stdout, stderr bytes.Buffer
	start := time.Now()
	err = run(ctx, []string{"vm-console", "--serial", in.SerialPath(), "--shell-timeout", "2s", "echo", "hi"}, strings.NewReader(""), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "no shell answered on the serial console within 2s") {
		t.Fatalf("err = %v; want the no-shell message", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("took %v with --shell-timeout 2s", took)
	}
	t.Logf("vm-console: %v", err)
}
