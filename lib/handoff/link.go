package handoff

import (
	"io"
	"sync"
	"time"
)

// link is the handoff's output, metered: the bytes written and the time
// spent inside Write, which a slow link (or a rate limiter) blocks. So
// bytes per second of blocked time is the link's rate once its buffers are
// full, and a fast link shows as a fast rate.
type link struct {
	w    io.Writer
	mu   sync.Mutex
	n    uint64        // bytes written
	busy time.Duration // time inside Write
	// rate estimate, bytes/s: the given one, else measured per window
	given    float64
	est      float64
	lastN    uint64
	lastBusy time.Duration
	lastAt   time.Time
}

// defaultRate is assumed until enough was written to measure (25 Mbit/s).
const defaultRate = 25e6 / 8

func (l *link) Write(p []byte) (int, error) {
	t := time.Now()
	n, err := l.w.Write(p)
	d := time.Since(t)
	l.mu.Lock()
	l.n += uint64(n)
	l.busy += d
	l.mu.Unlock()
	return n, err
}

func (l *link) written() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

// rate returns the link's rate in bytes/s: the given one, or the one
// measured since the last call once at least 64 KiB went out (an average
// weighted to the recent windows). A window in which writes blocked most
// of the time is link-bound: bytes over the window's length. Otherwise the
// link kept up, and bytes over the blocked time says how much faster it is.
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
	dn, db, dt := l.n-l.lastN, l.busy-l.lastBusy, now.Sub(l.lastAt)
	if dn >= 64<<10 && db > 0 {
		d := db
		if db >= dt/2 {
			d = max(dt, db)
		}
		r := float64(dn) / d.Seconds()
		if l.est == 0 {
			l.est = r
		} else {
			l.est = 0.5*l.est + 0.5*r
		}
		l.lastN, l.lastBusy, l.lastAt = l.n, l.busy, now
	}
	if l.est == 0 {
		return defaultRate
	}
	return l.est
}
