package resume

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"cloudlet/lib/base"
	"cloudlet/lib/capture"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/vm"
)

// TestSemanticGap: a guest writes then deletes a 32 MiB file and fills then
// frees 32 MiB of memory. With TRIM (the kit mounts its root with discard,
// the disk is attached with discard=unmap) and init_on_free=1 (freed pages
// are zeroed), the overlay must be smaller than without them by at least
// 80% of the 64 MiB deleted and freed; and the synthesized guest is right.
func TestSemanticGap(t *testing.T) {
	kit := guesttest.Kit(t)
	const mib = 32
	work := "dd if=/dev/urandom of=/root/big bs=1M count=32 2>/dev/null && sync && rm /root/big && sync && " +
		"dd if=/dev/urandom of=/run/mem/blob bs=1M count=32 2>/dev/null && rm /run/mem/blob && " +
		"echo kept > /root/keep && sync"
	sizes := map[string]int{}
	var onOverlay []byte
	var onBase string
	for _, variant := range []struct {
		name, append string
	}{
		{"on", vm.KitAppend},
		{"off", strings.Replace(vm.KitAppend, "init_on_free=1", "cloudlet.nodiscard", 1)},
	} {
		bdir := makeBaseAppend(t, kit, variant.append)
		info, err := FromBase(context.Background(), bdir, StreamOptions{
			Options: Options{Name: "t", RunDir: runDir(t, "s"), Accel: os.Getenv("CLOUDLET_ACCEL")}, KitDirs: []string{kit.Dir}})
		if err != nil {
			t.Fatal(err)
		}
		v := attach(t, info, false)
		v.con.Send("\n")
		if variant.name == "off" {
			v.run("grep -q init_on_free /proc/cmdline && exit 1; grep ' / ' /proc/mounts | grep -qv discard")
		} else {
			v.run("grep -q init_on_free=1 /proc/cmdline && grep ' / ' /proc/mounts | grep -q discard")
		}
		if variant.name == "on" {
			v.run(work + " && fstrim /") // online discard, and fstrim for what it missed
		} else {
			v.run(work)
		}
		full, err := io.ReadAll(captureTo(t, info, capture.Quit))
		if err != nil {
			t.Fatal(err)
		}
		ov := makeOverlay(t, bytes.NewReader(full), bdir, "zstd")
		sizes[variant.name] = len(ov)
		if variant.name == "on" {
			onOverlay, onBase = ov, bdir
		}
	}
	saved := sizes["off"] - sizes["on"]
	t.Logf("overlay with TRIM+init_on_free %d bytes, without %d bytes: saved %d bytes = %.0f%% of the %d MiB deleted and freed",
		sizes["on"], sizes["off"], saved, 100*float64(saved)/float64(2*mib<<20), 2*mib)
	if float64(saved) < 0.8*float64(2*mib<<20) {
		t.Errorf("saved %d bytes; want at least 80%% of %d", saved, 2*mib<<20)
	}
	run, err := applyAndResume(context.Background(), onOverlay, onBase, StreamOptions{
		Options: Options{Name: "t", RunDir: runDir(t, "x"), Accel: os.Getenv("CLOUDLET_ACCEL")}, KitDirs: []string{kit.Dir}})
	if err != nil {
		t.Fatal(err)
	}
	ri, _ := readInfo(run)
	v := attach(t, ri, false)
	v.con.Send("\n")
	if got := v.run("cat /root/keep; ls /root/big /run/mem/blob 2>/dev/null | wc -l"); got != "kept\n0" {
		t.Errorf("synthesized guest: %q; want the kept file and no deleted ones", got)
	}
	// The synthesized guest maps the base memory file privately: freeing
	// memory in it must leave the base as it was.
	v.run("dd if=/dev/urandom of=/run/mem/again bs=1M count=16 2>/dev/null && rm /run/mem/again && sync")
	b, err := base.Open(onBase)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Verify(); err != nil {
		t.Errorf("base changed under guests that freed memory: %v", err)
	}
}
