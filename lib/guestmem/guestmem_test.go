package guestmem

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// mapPrivate maps a new file of size bytes (content: byte i%251) privately,
// as QEMU maps a base memory file with share=off.
func mapPrivate(t *testing.T, size int) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mem.ram")
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i % 251)
	}
	if err := os.WriteFile(path, content, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Munmap(m) })
	return path, m
}

func TestWriteReadZero(t *testing.T) {
	const size = 1 << 20
	path, m := mapPrivate(t, size)
	orig := bytes.Clone(m)
	r, err := Find(os.Getpid(), path, size)
	if err != nil {
		t.Fatal(err)
	}
	page := bytes.Repeat([]byte{0xab}, 3*4096)
	if _, err := r.WriteAt(page, 8192); err != nil {
		t.Fatal(err)
	}
	if err := r.Zero(65536, 200000); err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(orig)
	copy(want[8192:], page)
	clear(want[65536 : 65536+200000])
	if !bytes.Equal(m, want) {
		t.Fatal("the mapping does not hold what was written")
	}
	got := make([]byte, 5000)
	if _, err := r.ReadAt(got, 8000); err != nil || !bytes.Equal(got, want[8000:13000]) {
		t.Fatalf("ReadAt = %v, or other bytes than the mapping's", err)
	}
	// Private: the file keeps its content.
	if file, _ := os.ReadFile(path); !bytes.Equal(file, orig) {
		t.Fatal("writing the private mapping changed the file")
	}
}

func TestErrors(t *testing.T) {
	const size = 64 << 10
	path, _ := mapPrivate(t, size)
	if _, err := Find(os.Getpid(), path, size*2); err == nil || !strings.Contains(err.Error(), "no writable") {
		t.Errorf("Find with the wrong size = %v; want no mapping", err)
	}
	if _, err := Find(os.Getpid(), path+".other", size); err == nil {
		t.Error("Find of an unmapped file = nil; want an error")
	}
	if _, err := Find(1<<22+12345, path, size); err == nil {
		t.Error("Find in a process that does not exist = nil; want an error")
	}
	r, err := Find(os.Getpid(), path, size)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.WriteAt(make([]byte, 4096), size-100); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("WriteAt past the end = %v; want an outside error", err)
	}
}
