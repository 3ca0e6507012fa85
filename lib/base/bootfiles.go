package base

import (
	"fmt"
	"path/filepath"

	"cloudlet/format"
)

// Names of the UEFI firmware files inside a base folder.
const (
	FirmwareCodeFile = "firmware-code.fd"
	FirmwareVarsFile = "firmware-vars.fd"
)

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
// DIR/name for each of dirs; for the firmware files also at every *.fd file
// in each of dirs, since system firmware folders (Debian's /usr/share/OVMF)
// keep their own file names.
func FindBootFile(sum, name string, dirs []string) (string, error) {
	if sum == "" {
		return "", nil
	}
	var cands []string
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
	hint := "give the guest kit folder with --kit"
	if name == FirmwareCodeFile || name == FirmwareVarsFile {
		hint = "install Debian's ovmf package (the VM was started with UEFI), or resume from its base folder"
	}
	return "", fmt.Errorf("the VM was started with a %s of sha256 %s; none in %v: %s", name, short(sum), dirs, hint)
}
