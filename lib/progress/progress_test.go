package progress

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
)

// run meters copying data from a file to a file, with stderr as given.
func run(t *testing.T, stderr io.Writer, opt Options, data []byte) []byte {
	t.Helper()
	dir := t.TempDir()
	inPath, outPath := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	if err := os.WriteFile(inPath, data, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(inPath)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	m, r, w := Start("stage", in, out, stderr, opt)
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.Write(buf[:n])
			time.Sleep(time.Millisecond)
		}
		if err != nil {
			break
		}
	}
	m.Records(7)
	if err := m.Done(nil, map[string]any{"extra": 1}); err != nil {
		t.Fatal(err)
	}
	out.Close()
	got, _ := os.ReadFile(outPath)
	return got
}

// On a terminal, at the end of a pipe, a stage draws and ends with its
// summary line; on a pipe or file it says nothing; the data is untouched
// either way.
func TestDrawsOnlyOnATerminal(t *testing.T) {
	data := bytes.Repeat([]byte("cloudlet"), 100_000)
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	var screen bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&screen, ptmx); close(done) }()
	got := run(t, tty, Options{}, data)
	tty.Close()
	<-done
	if !bytes.Equal(got, data) {
		t.Error("the data changed under the meter (terminal)")
	}
	s := screen.String()
	if !strings.Contains(s, "stage: done: read 800.0 kB, wrote 800.0 kB (7 records)") {
		t.Errorf("no summary line on the terminal: %q", s)
	}
	if !strings.Contains(s, "%") {
		t.Errorf("no percentage drawn (the input's size is known): %q", s)
	}

	var pipe bytes.Buffer // not a terminal
	if got := run(t, &pipe, Options{}, data); !bytes.Equal(got, data) {
		t.Error("the data changed under the meter (pipe)")
	}
	if pipe.Len() != 0 {
		t.Errorf("progress on a non-terminal: %q", pipe.String())
	}
	ptmx2, tty2, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx2.Close()
	m, _, _ := Start("stage", nil, nil, tty2, Options{Mode: Off})
	if m.Drawing() {
		t.Error("--quiet draws on a terminal")
	}
	m.Done(nil, nil)
	tty2.Close()
}

// --stats writes one JSON object with the counts, to a file or stderr.
func TestStats(t *testing.T) {
	data := bytes.Repeat([]byte{1, 2, 3}, 1000)
	file := filepath.Join(t.TempDir(), "stats.json")
	var stderr bytes.Buffer
	run(t, &stderr, Options{Stats: file}, data)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var s map[string]any
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if s["stage"] != "stage" || s["bytes_in"] != 3000.0 || s["bytes_out"] != 3000.0 || s["records"] != 7.0 || s["ok"] != true || s["extra"] != 1.0 {
		t.Errorf("stats %s", b)
	}
	if stderr.Len() != 0 {
		t.Errorf("--stats FILE wrote on stderr: %q", stderr.String())
	}
	stderr.Reset()
	run(t, &stderr, Options{Stats: "-"}, data)
	if err := json.Unmarshal(stderr.Bytes(), &s); err != nil || s["bytes_in"] != 3000.0 {
		t.Errorf("--stats -: %v %q", err, stderr.String())
	}
}

// --progress on a stage whose stdout is a pipe prints whole lines (never a
// carriage return that would redraw over another stage's line).
func TestMiddleOfAPipe(t *testing.T) {
	lineEvery = 20 * time.Millisecond
	defer func() { lineEvery = 2 * time.Second }()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	go io.Copy(io.Discard, pr)
	var stderr bytes.Buffer
	var mu sync.Mutex
	lw := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return stderr.Write(p) })
	m, _, w := Start("mid", bytes.NewReader(nil), pw, lw, Options{Mode: On})
	for i := 0; i < 10; i++ {
		w.Write(make([]byte, 1000))
		time.Sleep(10 * time.Millisecond)
	}
	m.Done(nil, nil)
	mu.Lock()
	s := stderr.String()
	mu.Unlock()
	if strings.Contains(s, "\r") || !strings.Contains(s, "mid: read") || !strings.Contains(s, "mid: done: wrote 10.0 kB") {
		t.Errorf("middle-of-pipe progress: %q", s)
	}
	// On a terminal too, a stage in the middle of a pipe stays quiet.
	ptmx, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer ptmx.Close()
	defer tty.Close()
	m, _, _ = Start("mid", nil, pw, tty, Options{})
	if m.Drawing() {
		t.Error("a stage in the middle of a pipe draws without --progress")
	}
	m.Done(nil, nil)
	pw.Close()
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
