package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/base"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/virt/virttest"
)

// Regular VM images, which boot through their own bootloader (no -kernel),
// as raw, as qcow2, as a qcow2 with its own backing chain and as a GPT
// disk booted by UEFI (OVMF): base (ready
// by a console line the user names) -> overlay (the app, ready when port
// 80 answers) -> synthesis; the app answers through a forwarded port, the
// base's customization is there, the images and the base are unchanged,
// and no QEMU or run folder is left.
func TestRegularImageEndToEnd(t *testing.T) {
	imgs := guesttest.Images(t)
	for _, tc := range []struct {
		name, image string
		boot        []string
	}{
		{"raw", imgs.Raw, nil},
		{"qcow2", imgs.QCOW2, nil},
		{"qcow2-chain", "", nil}, // a qcow2 over regular.qcow2, made below
		{"uefi", imgs.UEFI, []string{"--firmware", "uefi"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			image, watched := tc.image, []string{imgs.Raw, imgs.QCOW2, imgs.UEFI}
			if image == "" {
				image = e.path("chain.qcow2")
				if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", imgs.QCOW2, "-F", "qcow2", image).CombinedOutput(); err != nil {
					t.Fatalf("qemu-img create: %v: %s", err, out)
				}
				watched = append(watched, image)
			}
			before := fileSums(t, watched)

			// Relative paths work: the tools run in e.dir.
			rel, err := filepath.Rel(e.dir, image)
			if err != nil {
				t.Fatal(err)
			}
			baseID := e.cloudlet(append([]string{"base", rel, "--name", "reg", "--out", "reg.base",
				"--ready-console", guesttest.RegularReady, "--cmd", "echo custom-" + tc.name + " > /root/base-mark && sync"}, tc.boot...)...)
			baseDir := e.path("reg.base")
			if !strings.Contains(readFile(t, filepath.Join(baseDir, "base.json")), `"disk_format": "raw"`) {
				t.Errorf("the base's disk is not recorded as raw:\n%s", readFile(t, filepath.Join(baseDir, "base.json")))
			}

			port := guesttest.FreePort(t)
			ovl := e.path("app.overlay")
			e.cloudlet(append([]string{"overlay", "reg.base", "--name", "app", "--out", ovl,
				"--forward", fmt.Sprintf("tcp:%d:80", port), "--ready-port", "80"}, appCmds(baseID)...)...)

			if st, err := os.Stat(ovl); err == nil {
				t.Logf("overlay: %d bytes", st.Size())
			}
			p := guesttest.FreePort(t)
			in := parseInstance(t, e.cloudlet("synthesis", "reg.base", ovl, "--forward", fmt.Sprintf("tcp:%d:80", p)))
			e.checkApp(in, p, baseID)
			if got := e.console(in.RunDir, "cat /root/base-mark"); got != "custom-"+tc.name {
				t.Errorf("the base's customization: /root/base-mark = %q", got)
			}
			e.stop(in)

			if after := fileSums(t, watched); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("images changed:\nbefore %v\nafter  %v", before, after)
			}
			if out, stderr, code := e.run(2*time.Minute, nil, filepath.Join(binDir, "cloudlet-base"), "verify", baseDir); code != 0 {
				t.Errorf("cloudlet-base verify: exit %d: %s%s", code, out, stderr)
			}
			if left, _ := os.ReadDir(e.path("run")); len(left) > 0 {
				t.Errorf("run folders left: %v", left)
			}
		})
	}
}

func fileSums(t *testing.T, paths []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		if _, err := io.Copy(h, f); err != nil {
			t.Fatal(err)
		}
		f.Close()
		out[filepath.Base(p)] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Clones of one overlay do not share their RNG state: the VM generation ID
// device gets a new ID at every resume, and the regular images' kernel
// (Debian's generic flavour, which has the driver) reseeds on it. Four
// clones each read 16 bytes of /dev/urandom right after resume: four
// different values, and each guest logged the reseed.
func TestClonesDiffer(t *testing.T) {
	imgs := guesttest.Images(t)
	e := newEnv(t)
	// Reading /dev/random once makes the guest's RNG ready, as on any
	// system that has run for a while: from then on, without a new
	// generation ID, clones would produce the same bytes.
	e.cloudlet("base", imgs.Raw, "--name", "rng", "--out", "rng.base", "--ready-console", guesttest.RegularReady,
		"--cmd", "head -c 1 /dev/random >/dev/null && dmesg | grep -q 'crng init done'")
	ovl := e.path("rng.overlay")
	e.cloudlet("overlay", "rng.base", "--name", "rng", "--out", ovl, "--cmd", "sync")
	seen := map[string]string{}
	for i := range 4 {
		in := parseInstance(t, e.cloudlet("synthesis", "rng.base", ovl, "--name", fmt.Sprintf("clone%d", i)))
		out := e.console(in.RunDir, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; dmesg | grep -c 'crng reseeded due to virtual machine fork'")
		lines := strings.Split(out, "\n")
		if len(lines) != 2 || len(lines[0]) != 32 {
			t.Fatalf("clone %d printed %q", i, out)
		}
		if lines[1] == "0" {
			t.Errorf("clone %d: the guest did not reseed on the new generation ID", i)
		}
		if prev, ok := seen[lines[0]]; ok {
			t.Errorf("clone %d read the same random bytes as %s: %s", i, prev, lines[0])
		}
		seen[lines[0]] = fmt.Sprintf("clone %d", i)
		t.Logf("clone %d: %s (reseeds logged: %s)", i, lines[0], lines[1])
		e.stop(in)
	}
}

// TestKernelBootEndToEnd (issue 29): `cloudlet base IMAGE --kernel K
// --initrd I --append A` on a disk with no bootloader, the kernel and
// initrd under other names in two other folders, and no guest kit to fall
// back on: base -> overlay -> synthesis locally, over ssh and into
// libvirt; the overlay's app and files are there. The base folder keeps
// its own copies of the boot files, so moving the originals away after
// `cloudlet base` changes nothing.
func TestKernelBootEndToEnd(t *testing.T) {
	e := newEnv(t)
	e.env = []string{"CLOUDLET_GUEST_DIR=" + e.path("no-kit")} // an empty folder: nothing to find by name
	kernel, initrd, disk := e.path("boot", "bzImage-6.1-cloud"), e.path("initrds", "boot.cpio.gz"), e.path("disk.raw")
	for src, dst := range map[string]string{e.kit.Kernel: kernel, e.kit.Initrd: initrd, e.kit.Rootfs: disk} {
		os.MkdirAll(filepath.Dir(dst), 0o755)
		if out, err := exec.Command("cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", src, err, out)
		}
	}
	os.MkdirAll(e.path("no-kit"), 0o755)
	baseID := e.cloudlet("base", disk, "--kernel", kernel, "--initrd", initrd, "--append", guesttest.DefaultAppend,
		"--name", "kb", "--out", "kb.base", "--ready-console", guesttest.ReadyMarker,
		"--cmd", "echo kernel-base > /root/base-mark && sync")
	baseDir := e.path("kb.base")
	b, err := base.Open(baseDir)
	if err != nil {
		t.Fatal(err)
	}
	if b.Meta.VM.Append != guesttest.DefaultAppend {
		t.Errorf("base.json keeps append %q, want %q", b.Meta.VM.Append, guesttest.DefaultAppend)
	}
	b.Close()
	for name, src := range map[string]string{base.KernelFile: kernel, base.InitrdFile: initrd} {
		if readFile(t, filepath.Join(baseDir, name)) != readFile(t, src) {
			t.Errorf("the base's %s is not a copy of %s", name, src)
		}
	}
	// The originals go away: the base needs only its own folder.
	if err := os.RemoveAll(e.path("boot")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(e.path("initrds")); err != nil {
		t.Fatal(err)
	}

	port := guesttest.FreePort(t)
	ovl := e.path("app.overlay")
	e.cloudlet(append([]string{"overlay", "kb.base", "--name", "app", "--out", ovl, "--forward", fmt.Sprintf("tcp:%d:80", port)},
		appCmds(baseID)...)...)

	check := func(e *env, in instance, p int) {
		e.t.Helper()
		e.checkApp(in, p, baseID)
		if got := e.console(in.RunDir, "cat /root/base-mark; cat /proc/cmdline"); !strings.Contains(got, "kernel-base") || !strings.Contains(got, guesttest.DefaultAppend) {
			e.t.Errorf("the base's file and kernel command line: %q", got)
		}
		e.stop(in)
	}
	t.Run("local", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit, env: e.env}
		p := guesttest.FreePort(t)
		check(e, parseInstance(t, e.cloudlet("synthesis", ovl, "--forward", fmt.Sprintf("tcp:%d:80", p))), p)
	})
	t.Run("ssh", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit, env: e.env}
		sshOpts := startSSHD(t, e.path("ssh"))
		p := guesttest.FreePort(t)
		check(e, parseInstance(t, e.cloudlet("synthesis", ovl, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts,
			"--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"),
			"--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "ssh"))), p)
	})
	t.Run("libvirt", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit, env: e.env}
		uri := virttest.Daemon(t, repoRoot)
		p := guesttest.FreePort(t)
		js := e.cloudlet("synthesis", ovl, "--libvirt", uri, "--forward", fmt.Sprintf("tcp:%d:80", p), "--run-dir", e.path("run", "lv"))
		libvirtDomain(t, js)
		check(e, parseInstance(t, js), p)
	})
	if out, stderr, code := e.run(2*time.Minute, nil, filepath.Join(binDir, "cloudlet-base"), "verify", baseDir); code != 0 {
		t.Errorf("cloudlet-base verify: exit %d: %s%s", code, out, stderr)
	}
}
