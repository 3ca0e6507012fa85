// Package progress shows a stage's progress on stderr and writes its
// summary as JSON (--progress, --quiet, --stats FILE|-).
//
// The pipeline rule: a stage draws only when its stderr is a terminal and
// its stdout is not a pipe. In `vm-capture | mem-diff | disk-diff |
// overlay-pack > app.overlay` only overlay-pack draws, one line redrawn in
// place (github.com/schollz/progressbar), so the four stages never clobber
// each other on a shared terminal; the stream that reaches the last stage
// is the pipeline's progress. The others stay quiet unless given
// --progress, which makes a stage in the middle of a pipe print a plain
// line every two seconds instead of redrawing. --quiet silences a stage.
// A stage that draws ends with a one-line summary.
package progress

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// lineEvery is how often a stage in the middle of a pipe prints its line
// under --progress.
var lineEvery = 2 * time.Second

// Modes of Options.Mode.
const (
	Auto = "auto" // draw by the pipeline rule
	On   = "on"   // --progress
	Off  = "off"  // --quiet
)

// Options are a stage's progress flags.
type Options struct {
	Mode  string // Auto ("" too), On or Off
	Stats string // "": none; "-": the summary as JSON on stderr; else a file
}

// Meter follows one stage: the bytes it read and wrote.
type Meter struct {
	stage   string
	opt     Options
	stderr  io.Writer
	start   time.Time
	in, out atomic.Int64
	records atomic.Int64
	total   int64 // bytes of input, when known (-1: not)

	bar   *progressbar.ProgressBar // drawing in place
	lines bool                     // plain lines (a stage in the middle of a pipe, --progress)
	stop  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
}

// Start begins metering stage. It returns the meter and stdin and stdout
// wrapped to count what passes (the bytes themselves are untouched).
func Start(stage string, stdin io.Reader, stdout, stderr io.Writer, opt Options) (*Meter, io.Reader, io.Writer) {
	m := &Meter{stage: stage, opt: opt, stderr: stderr, start: time.Now(), total: size(stdin), stop: make(chan struct{})}
	draw := opt.Mode == On || ((opt.Mode == Auto || opt.Mode == "") && IsTerminal(stderr) && !IsPipe(stdout))
	if draw && IsPipe(stdout) {
		m.lines = true
		m.wg.Add(1)
		go m.lineLoop(lineEvery)
	} else if draw {
		m.bar = progressbar.NewOptions64(m.total,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription(stage),
			progressbar.OptionShowBytes(true),
			progressbar.OptionShowCount(),
			progressbar.OptionSetWidth(20),
			progressbar.OptionThrottle(250*time.Millisecond),
			progressbar.OptionSetPredictTime(m.total > 0),
			progressbar.OptionShowElapsedTimeOnFinish(),
			progressbar.OptionUseANSICodes(true),
			progressbar.OptionClearOnFinish(),
		)
	}
	var r io.Reader
	if stdin != nil {
		r = &counter{r: stdin, n: &m.in, bar: m.bar}
	}
	var w io.Writer
	if stdout != nil {
		w = &counter{w: stdout, n: &m.out}
		if stdin == nil {
			w.(*counter).bar = m.bar // a stage that only writes (vm-capture)
		}
	}
	return m, r, w
}

// Drawing reports whether the meter shows anything on stderr.
func (m *Meter) Drawing() bool { return m.bar != nil || m.lines }

// Records sets how many records the stage wrote (its format.Writer's
// frames).
func (m *Meter) Records(n uint64) { m.records.Store(int64(n)) }

func (m *Meter) lineLoop(every time.Duration) {
	defer m.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
			secs := time.Since(m.start).Seconds()
			in := m.in.Load()
			line := fmt.Sprintf("%s: read %s (%s/s), wrote %s", m.stage, MB(in), MB(int64(float64(in)/secs)), MB(m.out.Load()))
			if m.total > 0 {
				line += fmt.Sprintf(", %.0f%%", 100*float64(in)/float64(m.total))
			}
			fmt.Fprintln(m.stderr, line)
		}
	}
}

// Summary is what --stats writes: the stage's bytes and time, plus the
// stage's own figures.
type Summary map[string]any

// Done ends the meter: it clears the progress line, prints the summary
// line (when drawing) and writes --stats. extra holds the stage's own
// figures (merged into the JSON object); err says whether the stage
// failed.
func (m *Meter) Done(err error, extra map[string]any) error {
	var werr error
	m.once.Do(func() {
		close(m.stop)
		m.wg.Wait()
		if m.bar != nil {
			m.bar.Finish()
		}
		secs := time.Since(m.start).Seconds()
		s := Summary{"stage": m.stage, "bytes_in": m.in.Load(), "bytes_out": m.out.Load(),
			"records": m.records.Load(), "seconds": round3(secs), "ok": err == nil}
		for k, v := range extra {
			s[k] = v
		}
		if m.Drawing() {
			state := "done"
			if err != nil {
				state = "failed"
			}
			var parts []string
			if n := m.in.Load(); n > 0 {
				parts = append(parts, "read "+MB(n))
			}
			if n := m.out.Load(); n > 0 {
				parts = append(parts, "wrote "+MB(n))
			}
			line := fmt.Sprintf("%s: %s: %s", m.stage, state, strings.Join(parts, ", "))
			if n := m.records.Load(); n > 0 {
				line += fmt.Sprintf(" (%d records)", n)
			}
			fmt.Fprintf(m.stderr, "%s in %.1f s\n", line, secs)
		}
		werr = m.writeStats(s)
	})
	return werr
}

func (m *Meter) writeStats(s Summary) error {
	if m.opt.Stats == "" {
		return nil
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if m.opt.Stats == "-" {
		_, err = m.stderr.Write(b)
		return err
	}
	tmp := m.opt.Stats + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("--stats %s: %w", m.opt.Stats, err)
	}
	return os.Rename(tmp, m.opt.Stats)
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// MB formats a byte count in decimal megabytes (kB below one).
func MB(n int64) string {
	if n < 1_000_000 {
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(n)/1e6)
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w any) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// IsPipe reports whether w is a pipe or a socket (another stage, ssh).
func IsPipe(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&(os.ModeNamedPipe|os.ModeSocket) != 0
}

// size is the size of a regular file given as input, or -1.
func size(r io.Reader) int64 {
	f, ok := r.(*os.File)
	if !ok {
		return -1
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return -1
	}
	return st.Size()
}

// counter counts the bytes through a reader or a writer.
type counter struct {
	r   io.Reader
	w   io.Writer
	n   *atomic.Int64
	bar *progressbar.ProgressBar
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	if c.bar != nil && n > 0 {
		c.bar.Add64(int64(n))
	}
	return n, err
}

func (c *counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	if c.bar != nil && n > 0 {
		c.bar.Add64(int64(n))
	}
	return n, err
}
