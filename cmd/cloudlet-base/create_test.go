package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"
	"cloudlet/lib/base"
)

// create --kernel K --initrd I takes the boot files by path, whatever
// their names and folders (issue 29), and copies them into the base; a
// missing or wrong one is an error naming the flag or the file.
func TestCreateBootFilesByPath(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "boot", "bzImage-6.1-cloud")
	initrd := filepath.Join(dir, "elsewhere", "boot.cpio.gz")
	other := filepath.Join(dir, "other-kernel")
	for p, data := range map[string]string{kernel: "a kernel by another name", initrd: "an initrd in another folder", other: "not the booted kernel"} {
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	kSum, _ := base.FileSHA256(kernel)
	iSum, _ := base.FileSHA256(initrd)
	boot := format.VMDesc{Kernel: kSum, Initrd: iSum, Append: "console=ttyS0 root=/dev/vda rw"}
	cat := filepath.Join(dir, "cat.json")

	create := func(out string, flags ...string) (string, error) {
		s, img := fullStream(t, filepath.Join(dir, filepath.Base(out)+".src"), boot)
		args := append([]string{"--catalog", cat, "create", "--image", img}, flags...)
		_, errOut, err := runTool(t, s, append(args, out)...)
		return errOut, err
	}
	for _, tc := range []struct {
		name  string
		flags []string
		want  string // in the error; "" = success
	}{
		{"no-files", nil, "--kernel FILE"},
		{"initrd-missing", []string{"--kernel", kernel}, "--initrd FILE"},
		{"wrong-kernel", []string{"--kernel", other, "--initrd", initrd}, other + " (sha256 "},
		{"by-path", []string{"--kernel", kernel, "--initrd", initrd}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, tc.name)
			os.MkdirAll(out+".src", 0o755)
			errOut, err := create(out, tc.flags...)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("create %v: got %v (%s), want an error with %q", tc.flags, err, errOut, tc.want)
				}
				if _, err := os.Stat(out); err == nil {
					t.Errorf("a failed create left %s", out)
				}
				return
			}
			if err != nil {
				t.Fatalf("create %v: %v: %s", tc.flags, err, errOut)
			}
			for name, src := range map[string]string{base.KernelFile: kernel, base.InitrdFile: initrd} {
				got, err1 := os.ReadFile(filepath.Join(out, name))
				want, _ := os.ReadFile(src)
				if err1 != nil || !bytes.Equal(got, want) {
					t.Errorf("base %s: %v, %q; want a copy of %s", name, err1, got, src)
				}
			}
			b, err := base.Open(out)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if b.Meta.VM.Append != boot.Append {
				t.Errorf("base.json append %q, want %q", b.Meta.VM.Append, boot.Append)
			}
		})
	}

	// A VM booted from a kernel alone: --kernel alone makes its base, with
	// no initrd in it; an --initrd it did not boot is refused.
	boot = format.VMDesc{Kernel: kSum, Append: "console=ttyS0"}
	out := filepath.Join(dir, "kernel-only")
	os.MkdirAll(out+".src", 0o755)
	if errOut, err := create(out, "--kernel", kernel); err != nil {
		t.Fatalf("create --kernel alone: %v: %s", err, errOut)
	}
	if _, err := os.Stat(filepath.Join(out, base.InitrdFile)); err == nil {
		t.Errorf("a base booted without an initrd has %s", base.InitrdFile)
	}
	out = filepath.Join(dir, "kernel-only-extra")
	os.MkdirAll(out+".src", 0o755)
	if _, err := create(out, "--kernel", kernel, "--initrd", initrd); err == nil {
		t.Errorf("create took an --initrd the VM did not boot")
	}
}
