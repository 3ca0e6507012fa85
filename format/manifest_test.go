package format

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
)

// manifestStream writes a diff stream: HEADER, MANIFEST m (when not nil,
// at position pos among the records), then one MEM page at 0 and one
// DISK sector at 512.
func manifestStream(t *testing.T, m *Manifest, pos int) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := w.WriteHeader(testHeader(KindDiff)); err != nil {
		t.Fatal(err)
	}
	recs := []func() error{
		func() error { return w.WriteMem(0, page(1)) },
		func() error { return w.WriteDisk(512, bytes.Repeat([]byte{2}, SectorSize)) },
	}
	for i := 0; i <= len(recs); i++ {
		if m != nil && i == pos {
			if err := w.WriteMeta(TypeManifest, m); err != nil {
				t.Fatal(err)
			}
		}
		if i < len(recs) {
			if err := recs[i](); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func readManifestStream(b []byte) error {
	r := NewReader(bytes.NewReader(b))
	for {
		_, err := r.Next()
		if err == io.EOF {
			return r.Validator().CheckPromised()
		}
		if err != nil {
			return err
		}
	}
}

func TestManifest(t *testing.T) {
	exact := &Manifest{Mem: [][2]uint64{{0, PageSize}}, Disk: [][2]uint64{{512, SectorSize}}}
	for _, tc := range []struct {
		name string
		m    *Manifest
		pos  int
		want string // "" for success
	}{
		{"none", nil, 0, ""},
		{"exact", exact, 0, ""},
		{"wider is refused at the end", &Manifest{Mem: [][2]uint64{{0, 2 * PageSize}}, Disk: [][2]uint64{{512, SectorSize}}}, 0, "promised memory 0+8192"},
		{"a write outside", &Manifest{Mem: [][2]uint64{{0, PageSize}}}, 0, "disk 512+512 is not in the stream's MANIFEST"},
		{"after a record", exact, 1, "MANIFEST after the stream's records"},
		{"misaligned", &Manifest{Mem: [][2]uint64{{100, PageSize}}}, 0, "misaligned"},
		{"outside the VM", &Manifest{Disk: [][2]uint64{{1 << 20, SectorSize}}}, 0, "beyond size"},
		{"listed twice", &Manifest{Mem: [][2]uint64{{0, PageSize}, {0, PageSize}}}, 0, "listed twice"},
		{"segments in a diff stream", &Manifest{Segments: []ManifestSegment{{Size: 1, Raw: 1, SHA256: make([]byte, 32)}}}, 0, "lists 1 segments"},
		{"bad order", &Manifest{Order: "random"}, 0, "order"},
		{"bad signer", &Manifest{Signer: "xyz"}, 0, "signer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := readManifestStream(manifestStream(t, tc.m, tc.pos))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got %v, want success", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			case tc.want != "" && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrMisaligned) && !errors.Is(err, ErrOutOfRange) && !errors.Is(err, ErrOverlap):
				t.Fatalf("error %v is not a format error", err)
			}
		})
	}
}

func TestManifestRanges(t *testing.T) {
	m := &Manifest{Mem: [][2]uint64{{0, 4096}}, Segments: []ManifestSegment{{Mem: [][2]uint64{{8192, 4096}}, Disk: [][2]uint64{{0, 512}}}}}
	mem, disk := m.Ranges()
	if len(mem) != 2 || mem[1] != [2]uint64{8192, 4096} || len(disk) != 1 {
		t.Fatalf("Ranges() = %v, %v", mem, disk)
	}
}

func TestAccessLog(t *testing.T) {
	var buf bytes.Buffer
	in := &AccessLog{Accesses: []Access{{AccessMem, 8192, 4096}, {AccessDisk, 0, 8192}}}
	if err := WriteAccessLog(&buf, in); err != nil {
		t.Fatal(err)
	}
	out, err := ReadAccessLog(&buf, "x")
	if err != nil || len(out.Accesses) != 2 || out.Accesses[1] != in.Accesses[1] {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
	for _, bad := range []string{
		`{"version":2,"accesses":[]}`,
		`{"version":1,"accesses":[{"space":"cpu","offset":0,"length":4096}]}`,
		`{"version":1,"accesses":[{"space":"mem","offset":1,"length":4096}]}`,
		`{"version":1,"accesses":[{"space":"mem","offset":0,"length":0}]}`,
		`not json`,
	} {
		if _, err := ReadAccessLog(strings.NewReader(bad), "bad"); err == nil || !strings.Contains(err.Error(), "access log bad") {
			t.Errorf("%s: got %v", bad, err)
		}
	}
}

func TestAccessLogMerge(t *testing.T) {
	l := &AccessLog{Accesses: []Access{{AccessMem, 0, 8192}, {AccessDisk, 0, 4096}}}
	l.Merge(&AccessLog{Accesses: []Access{{AccessMem, 4096, 12288}, {AccessDisk, 0, 4096}, {AccessDisk, 8192, 4096}}})
	want := []Access{{AccessMem, 0, 8192}, {AccessDisk, 0, 4096}, {AccessMem, 8192, 8192}, {AccessDisk, 8192, 4096}}
	if !slices.Equal(l.Accesses, want) {
		t.Fatalf("Merge: %v, want %v", l.Accesses, want)
	}
}
