// Command ratelimit copies stdin to stdout at most at a given rate (a token
// bucket on bytes per second), to play a network link in the benchmarks:
//
//	ratelimit -rate 38mbit < app.overlay | overlay-apply --base B | vm-resume --base B
//
// Rates: 38mbit, 1gbit, 500kbit, 10MB (bytes), or a plain number of bytes/s.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

func parseRate(s string) (float64, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	units := []struct {
		suffix string
		mult   float64
	}{
		{"gbit", 1e9 / 8}, {"mbit", 1e6 / 8}, {"kbit", 1e3 / 8},
		{"gb", 1e9}, {"mb", 1e6}, {"kb", 1e3}, {"b", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("bad rate %q", s)
	}
	return v * mult, nil
}

func main() {
	rate := flag.String("rate", "", "link rate: 38mbit, 1gbit, 10MB, or bytes per second")
	burst := flag.Int("burst", 64<<10, "bucket size in bytes (largest write)")
	flag.Parse()
	bps, err := parseRate(*rate)
	if err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit:", err)
		os.Exit(2)
	}
	if err := copyLimited(os.Stdout, os.Stdin, bps, *burst); err != nil {
		fmt.Fprintln(os.Stderr, "ratelimit:", err)
		os.Exit(1)
	}
}

// copyLimited copies r to w through a token bucket of burst bytes filled
// at bps: a write waits until the bucket holds its bytes, and an idle link
// saves up at most burst bytes (a link does not send faster later for
// having been idle before).
func copyLimited(w io.Writer, r io.Reader, bps float64, burst int) error {
	buf := make([]byte, burst)
	tokens, last := float64(burst), time.Now()
	for {
		n, err := r.Read(buf)
		if n > 0 {
			now := time.Now()
			tokens = min(float64(burst), tokens+now.Sub(last).Seconds()*bps)
			last = now
			if tokens < float64(n) {
				d := time.Duration((float64(n) - tokens) / bps * float64(time.Second))
				time.Sleep(d)
				tokens, last = float64(n), last.Add(d)
			}
			tokens -= float64(n)
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
