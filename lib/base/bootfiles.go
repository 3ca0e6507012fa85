package base

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"cloudlet/format"
)

// Names of the UEFI firmware files inside a base folder.
const (
	FirmwareCodeFile = "firmware-code.fd"
	FirmwareVarsFile = "firmware-vars.fd"
)

// BootFileNames are the names of the boot files in a base folder, in the
// order they are looked for (so a missing one is named the same way every
// time).
var BootFileNames = []string{KernelFile, InitrdFile, FirmwareCodeFile, FirmwareVarsFile}

// BootFiles lists the files a VM description names only by sha256 (the
// kernel, the initrd, the UEFI firmware code and variable store template)
// by their file names in a base folder. Empty sums are left out.
func BootFiles(d format.VMDesc) map[string]string {
	out := map[string]string{}
	for name, sum := range map[string]string{KernelFile: d.Kernel, InitrdFile: d.Initrd,
		FirmwareCodeFile: d.FirmwareCode, FirmwareVarsFile: d.FirmwareVars} {
		if sum != "" {
			out[name] = sum
		}
	}
	return out
}

// FindBootFile returns the file named name whose sha256 is sum, looking at
// each of files (boot files the user named by path, whatever their names:
// `cloudlet-base create --kernel K --initrd I`), then at DIR/name for each
// of dirs; for the firmware files also at every *.fd file in each of dirs,
// since system firmware folders (Debian's /usr/share/OVMF) keep their own
// file names.
func FindBootFile(sum, name string, dirs []string, files ...string) (string, error) {
	if sum == "" {
		return "", nil
	}
	cands := slices.Clone(files)
	for _, d := range dirs {
		cands = append(cands, filepath.Join(d, name))
	}
	if name == FirmwareCodeFile || name == FirmwareVarsFile {
		for _, d := range dirs {
			m, _ := filepath.Glob(filepath.Join(d, "*.fd"))
			cands = append(cands, m...)
		}
	}
	for _, p := range cands {
		if s, err := FileSHA256(p); err == nil && s == sum {
			return p, nil
		}
	}
	what := "kernel"
	if name == InitrdFile {
		what = "initrd"
	}
	hint := fmt.Sprintf("give the %s the VM booted with --%s FILE (or the guest kit folder with --kit)", what, what)
	if name == FirmwareCodeFile || name == FirmwareVarsFile {
		hint = "install Debian's ovmf package (the VM was started with UEFI), or resume from its base folder"
	}
	where := fmt.Sprint(dirs)
	if len(files) > 0 {
		where = fmt.Sprint(append(slices.Clone(files), dirs...))
	}
	return "", fmt.Errorf("the VM was started with a %s of sha256 %s; none in %s: %s", name, short(sum), where, hint)
}

// SameBoot checks that a stream's VM boots as the base's did: the same
// kernel, initrd, kernel command line and firmware. A stream made on this
// base always does; one that does not would resume under a different boot
// than its base was made with.
func SameBoot(b, stream format.VMDesc) error {
	for _, f := range []struct{ what, base, stream string }{
		{"kernel", b.Kernel, stream.Kernel},
		{"initrd", b.Initrd, stream.Initrd},
		{"kernel command line (--append)", b.Append, stream.Append},
		{"firmware", b.Firmware, stream.Firmware},
		{"firmware code", b.FirmwareCode, stream.FirmwareCode},
	} {
		if f.base != f.stream {
			return fmt.Errorf("the stream's VM boots with %s %s, but its base was made with %s: it was not captured from this base (make the overlay again from the base)", f.what, shown(f.stream), shown(f.base))
		}
	}
	return nil
}

// shown quotes a boot setting for an error: a sha256 short, a command
// line in full, nothing as "none".
func shown(v string) string {
	switch {
	case v == "":
		return "none"
	case len(v) == 64 && strings.Trim(v, "0123456789abcdef") == "":
		return "of sha256 " + short(v)
	}
	return strconv.Quote(v)
}
