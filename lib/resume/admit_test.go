package resume

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"cloudlet/lib/instance"
	"cloudlet/lib/vm"
)

// Instances being made (a live owner) and running (instance.json and a
// live QEMU pid) count; finished or stale folders do not.
func TestAdmission(t *testing.T) {
	root := t.TempDir()
	me := []byte(strconv.Itoa(os.Getpid()))
	dead := []byte("999999999")
	mk := func(name string, files map[string][]byte) {
		d := filepath.Join(root, name)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		for f, b := range files {
			if err := os.WriteFile(filepath.Join(d, f), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	mk("starting", map[string][]byte{OwnerFile: me})
	mk("running", map[string][]byte{instance.FileName: []byte("{}"), vm.PidFileName: me})
	mk("ended", map[string][]byte{instance.FileName: []byte("{}"), vm.PidFileName: dead})
	mk("stale", map[string][]byte{OwnerFile: dead})
	if n := countInstances(root); n != 2 {
		t.Fatalf("countInstances = %d, want 2", n)
	}
	err := Admission{MaxInstances: 2}.admit(root, filepath.Join(root, "third"))
	var ae *AdmissionError
	if !errors.As(err, &ae) || !strings.Contains(err.Error(), "the cloudlet is full: 2 instances") {
		t.Fatalf("third instance under a limit of 2: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "third")); !os.IsNotExist(err) {
		t.Error("a refused instance's folder was made")
	}
	if err := (Admission{MaxInstances: 3}).admit(root, filepath.Join(root, "third")); err != nil {
		t.Fatal(err)
	}
	if n := countInstances(root); n != 3 {
		t.Errorf("the admitted instance is not counted: %d", n)
	}
	if err := (Admission{ReserveMiB: 1 << 30}).admit(root, filepath.Join(root, "fourth")); !errors.As(err, &ae) || !strings.Contains(err.Error(), "memory available") {
		t.Errorf("a reserve larger than the host: %v", err)
	}
}

// Concurrent admissions under one limit: exactly the limit gets in.
func TestAdmissionConcurrent(t *testing.T) {
	root := t.TempDir()
	errs := make(chan error, 8)
	for i := range 8 {
		go func() { errs <- (Admission{MaxInstances: 3}).admit(root, filepath.Join(root, strconv.Itoa(i))) }()
	}
	ok := 0
	for range 8 {
		if <-errs == nil {
			ok++
		}
	}
	if ok != 3 {
		t.Errorf("%d of 8 admitted under a limit of 3", ok)
	}
}
