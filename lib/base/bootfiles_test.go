package base

import (
	"strings"
	"testing"

	"cloudlet/format"
)

// SameBoot: a stream resumes only with the boot its base was made with.
func TestSameBoot(t *testing.T) {
	k := strings.Repeat("ab", 32)
	b := format.VMDesc{Kernel: k, Append: "console=ttyS0 root=/dev/vda"}
	if err := SameBoot(b, b); err != nil {
		t.Fatal(err)
	}
	s := b
	s.Append = "console=ttyS0 root=/dev/vdb"
	if err := SameBoot(b, s); err == nil || !strings.Contains(err.Error(), `"console=ttyS0 root=/dev/vdb"`) || !strings.Contains(err.Error(), "--append") {
		t.Errorf("append mismatch: %v", err)
	}
	s = b
	s.Kernel = ""
	if err := SameBoot(b, s); err == nil || !strings.Contains(err.Error(), "kernel none") || !strings.Contains(err.Error(), "sha256 abababab") {
		t.Errorf("kernel mismatch: %v", err)
	}
}
