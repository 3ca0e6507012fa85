package handoff

import (
	"io"
	"slices"
	"sync"
	"time"
)

// link is the handoff's output, metered: the bytes written, per window.
type link struct {
	w  io.Writer
	mu sync.Mutex
	n  uint64 // bytes written
	// rate estimate, bytes/s: the given one, else measured per window
	given  float64
	recent []float64 // the last windows' rates
	lastN  uint64
	lastAt time.Time
}

// defaultRate is assumed until enough was written to measure (25 Mbit/s).
const defaultRate = 25e6 / 8

func (l *link) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	l.mu.Lock()
	l.n += uint64(n)
	l.mu.Unlock()
	return n, err
}

func (l *link) written() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// rate returns the link's rate in bytes/s: the given one, or the largest
// of the recent windows' bytes over their length (windows of at least
// 250 ms and 64 KiB). A window in which the link was not kept busy shows
// less than the link can do, never more, so the estimate errs towards a
// longer pause estimate (another pass), not a longer pause. Writes into a
// pipe return as soon as the pipe takes them, so their blocked time says
// nothing when the pipe had room.
func (l *link) rate() float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.given > 0 {
		return l.given
	}
	now := time.Now()
	if l.lastAt.IsZero() {
		l.lastAt = now
	}
	if dn, dt := l.n-l.lastN, now.Sub(l.lastAt); dn >= 64<<10 && dt >= 250*time.Millisecond {
		l.recent = append(l.recent, float64(dn)/dt.Seconds())
		if len(l.recent) > 8 {
			l.recent = l.recent[1:]
		}
		l.lastN, l.lastAt = l.n, now
	}
	if len(l.recent) == 0 {
		return defaultRate
	}
	return slices.Max(l.recent)
}
