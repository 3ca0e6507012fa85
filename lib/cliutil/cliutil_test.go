package cliutil

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"cloudlet/format"

	"github.com/creack/pty"
)

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{errors.New("x"), ExitFailure},
		{Usagef("bad flag"), ExitUsage},
		{&format.CorruptError{Err: format.ErrChecksum}, ExitCorrupt},
		{fmt.Errorf("wrapped: %w", &format.UpstreamError{Stage: "vm-capture", Message: "m"}), ExitUpstream},
		{context.Canceled, ExitInterrupted},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d; want %d", tc.err, got, tc.want)
		}
	}
}

func TestTerminal(t *testing.T) {
	master, term, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer master.Close()
	defer term.Close()
	if !IsTerminal(term) || CheckStdout(term, false) == nil || CheckStdout(term, true) != nil {
		t.Errorf("a pty is not refused as a terminal (or --force does not override)")
	}
	null, _ := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	defer null.Close()
	if IsTerminal(null) || CheckStdout(null, false) != nil {
		t.Errorf("/dev/null is taken for a terminal")
	}
}

// A stage that fails after it started writing tells the next stage in-band.
func TestFilterInBandError(t *testing.T) {
	var in bytes.Buffer
	w := format.NewWriter(&in)
	w.WriteHeader(&format.Header{Kind: format.KindFull, VM: format.VMDesc{Machine: "pc", CPU: "qemu64", MemSize: 4096}})
	w.Close()
	var out bytes.Buffer
	err := Filter("mem-diff", &in, &out, func(r *format.Reader, w *format.Writer) error {
		h, _ := r.Header()
		w.WriteHeader(h)
		return errors.New("disk full")
	})
	if err == nil {
		t.Fatal("Filter returned nil for a failing stage")
	}
	r := format.NewReader(&out)
	_, err = r.Next()
	var up *format.UpstreamError
	if !errors.As(err, &up) || up.Stage != "mem-diff" || up.Message != "disk full" {
		t.Errorf("next stage sees %v; want upstream mem-diff failed: disk full", err)
	}
	if err == io.EOF {
		t.Errorf("stream ended cleanly after a failure")
	}
}

func TestProfile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(ProfileEnv, dir)
	stop := startProfile("tool")
	for i := 0; i < 1e6; i++ {
		_ = fmt.Sprint(i)
	}
	stop()
	if st, err := os.Stat(filepath.Join(dir, "tool.pprof")); err != nil || st.Size() == 0 {
		t.Fatalf("%s=%s wrote no profile: %v", ProfileEnv, dir, err)
	}
	t.Setenv(ProfileEnv, "")
	startProfile("other")()
	if _, err := os.Stat(filepath.Join(dir, "other.pprof")); err == nil {
		t.Fatal("a profile was written with the variable unset")
	}
}

func TestOptionalValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"x --libvirt", "x --libvirt D"},
		{"x --libvirt --name a", "x --libvirt D --name a"},
		{"x --libvirt qemu+ssh://h/system --name a", "x --libvirt qemu+ssh://h/system --name a"},
		{"x -libvirt launch", "x -libvirt D launch"},
		{"x --name a -- --libvirt", "x --name a -- --libvirt"},
		{"x --libvirt=qemu:///session", "x --libvirt=qemu:///session"},
	} {
		got := strings.Join(OptionalValue(strings.Fields(tc.in), "libvirt", "D"), " ")
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "4096": 4096, "512M": 512 << 20, "8G": 8 << 30, "8GiB": 8 << 30, "2gb": 2 << 30, "1T": 1 << 40, " 16k ": 16 << 10} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if got, _ := ParseSize(FormatSize(want)); got != want {
			t.Errorf("FormatSize(%d) = %q does not read back", want, FormatSize(want))
		}
	}
	for _, bad := range []string{"", "G", "-1", "1.5G", "8X", "99999999999999999999", "17179869184T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}
