package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/disk"
	"cloudlet/lib/guesttest"
)

func TestMain(m *testing.M) { os.Exit(guesttest.Main(m)) }

// Every refusal of a bad image names the file and what was found, exits
// non-zero, and leaves no run folder and no QEMU behind.
func TestLaunchRefusesBadImages(t *testing.T) {
	guesttest.RequireQEMU(t)
	dir := t.TempDir()
	runRoot := filepath.Join(dir, "run")
	t.Setenv("CLOUDLET_RUN_DIR", runRoot)
	t.Setenv("CLOUDLET_GUEST_DIR", "")
	file := func(name string, data []byte, size int64) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if size > 0 {
			if err := os.Truncate(p, size); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	qemuImg := func(args ...string) {
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v: %s", args, err, out)
		}
	}
	folder := filepath.Join(dir, "folder.img")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	text := file("notes.img", bytes.Repeat([]byte("just some text, not a disk\n"), 200), 0)
	text512 := file("notes512.img", append(bytes.Repeat([]byte("x"), 1023), '\n'), 0)
	odd := file("odd.img", nil, 1000)
	blank := file("blank.raw", nil, 1<<20)
	vmdk := filepath.Join(dir, "disk.vmdk")
	qemuImg("create", "-q", "-f", "vmdk", vmdk, "1M")
	plainQcow2 := filepath.Join(dir, "plain.qcow2")
	qemuImg("create", "-q", "-f", "qcow2", plainQcow2, "1M")
	orphan := filepath.Join(dir, "orphan.qcow2")
	qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", filepath.Join(dir, "gone.raw"), "-F", "raw", orphan, "1M")

	// A raw image held for writing by a running QEMU.
	busy := file("busy.raw", nil, 1<<20)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	q := exec.CommandContext(ctx, "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-accel", "tcg", "-S",
		"-m", "32", "-display", "none", "-blockdev", "driver=raw,node-name=d,file.driver=file,file.filename="+busy,
		"-device", "virtio-blk-pci,drive=d")
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer q.Wait()
	defer cancel()
	waitLock(t, busy)

	for _, tc := range []struct {
		name string
		args []string
		want string // in the message
		code int
	}{
		{"missing", []string{"--image", filepath.Join(dir, "nope.img")}, "nope.img: no such file", cliutil.ExitFailure},
		{"folder", []string{"--image", folder}, "is a folder, not a disk image", cliutil.ExitFailure},
		{"text", []string{"--image", text}, "looks like a text file", cliutil.ExitFailure},
		{"text512", []string{"--image", text512}, "looks like a text file", cliutil.ExitFailure},
		{"odd size", []string{"--image", odd}, "is 1000 bytes, not a multiple of 512", cliutil.ExitFailure},
		{"vmdk", []string{"--image", vmdk}, "is a vmdk image; the tools take raw and qcow2", cliutil.ExitFailure},
		{"missing backing", []string{"--image", orphan}, "gone.raw cannot be opened", cliutil.ExitFailure},
		{"locked", []string{"--image", busy}, "in use by a running QEMU", cliutil.ExitFailure},
		{"not bootable", []string{"--image", blank}, "cannot boot on its own: its first sector ends in 00 00", cliutil.ExitFailure},
		{"format mismatch", []string{"--image", plainQcow2, "--image-format", "raw"}, "is a qcow2 image (qemu-img info), not raw", cliutil.ExitFailure},
		{"unknown format", []string{"--image", blank, "--image-format", "vmdk"}, `--image-format "vmdk": want raw or qcow2`, cliutil.ExitUsage},
		{"append without kernel", []string{"--image", blank, "--append", "console=ttyS0"}, "need --kernel", cliutil.ExitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"vm-resume", "launch"}, tc.args...), strings.NewReader(""), &stdout, &stderr)
			if err == nil {
				t.Fatalf("accepted; printed %s", stdout.String())
			}
			if code := cliutil.ExitCode(err); code != tc.code {
				t.Errorf("exit code %d, want %d (%v)", code, tc.code, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("message %q does not say %q", err, tc.want)
			}
			if tc.code == cliutil.ExitFailure && !strings.Contains(err.Error(), filepath.Base(tc.args[1])) {
				t.Errorf("message %q does not name the image %s", err, tc.args[1])
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout: %q", stdout.String())
			}
			t.Logf("vm-resume: %v", err)
			if left, _ := os.ReadDir(runRoot); len(left) > 0 {
				t.Errorf("left in the run root: %v", left)
			}
		})
	}
}

// waitLock waits until QEMU holds its write lock on path.
func waitLock(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; {
		busy, err := disk.WriteLocked(path)
		if err != nil {
			t.Fatal(err)
		}
		if busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU did not lock %s", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
