package overlay

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"cloudlet/format"
	"cloudlet/lib/codec"
)

// AutoSample is how many segments --codec auto measures before it decides
// (the first ones; a stream's first segment alone, the kernel's pages, can
// compress far better than the rest).
const AutoSample = 4

// AutoChoice is one codec and level that --codec auto weighs, with what it
// measured on the first segments.
type AutoChoice struct {
	Codec uint8
	Level int
	// Ratio is compressed / raw bytes.
	Ratio float64
	// Encode and Decode are single-core speeds in raw bytes per second.
	Encode, Decode float64
	// Seconds is the synthesis time per raw MB: the larger of sending it
	// (Ratio / bandwidth) and decoding it on the cloudlet's cores, since
	// overlay-apply decodes segments while the next ones arrive; for a
	// live stream (PackOptions.Live) plus encoding it on the packer's
	// workers (the CPU the running VM needs too; the final segment's
	// encoding adds to the pause).
	Seconds float64
	comp    [][]byte // the sample's segments, compressed
}

func (c AutoChoice) String() string {
	if codec.LevelMatters(c.Codec) {
		return fmt.Sprintf("%s %d", codec.Name(c.Codec), c.Level)
	}
	return codec.Name(c.Codec)
}

// AutoCandidates are the settings --codec auto tries: zstd at its default
// and its best level (fast to decode), and xz at its best (smallest).
var AutoCandidates = []struct {
	Codec uint8
	Level int
}{{codec.Zstd, codec.DefaultLevel}, {codec.Zstd, codec.MaxLevel}, {codec.XZ, codec.DefaultXZLevel}}

// minTiming is how long planAuto repeats a decode to time it.
const minTiming = 20 * time.Millisecond

// planAuto compresses the sample segments with every candidate at once,
// then times each decoding alone, and returns the candidates best first: by
// the synthesis time per raw byte at bandwidth Mbit/s with cores decoding
// in parallel (and, live > 0, that many workers encoding), ties going to the smaller overlay.
func planAuto(raw [][]byte, bandwidth float64, cores, live int) ([]AutoChoice, error) {
	out := make([]AutoChoice, len(AutoCandidates))
	errs := make([]error, len(AutoCandidates))
	var wg sync.WaitGroup
	for i, c := range AutoCandidates {
		wg.Go(func() {
			out[i], errs[i] = encode(c.Codec, c.Level, raw)
		})
	}
	wg.Wait()
	for i := range out {
		if errs[i] == nil {
			errs[i] = timeDecode(&out[i], raw)
		}
		if errs[i] != nil {
			return nil, errs[i]
		}
	}
	bps := bandwidth * 1e6 / 8
	for i := range out {
		c := &out[i]
		c.Seconds = max(c.Ratio/bps, 1/(c.Decode*float64(max(cores, 1)))) * 1e6
		if live > 0 {
			// The encoding competes with the running VM for the CPU,
			// and the last segment is encoded, then sent: its time adds.
			c.Seconds += 1e6 / (c.Encode * float64(live))
		}
	}
	slices.SortStableFunc(out, func(a, b AutoChoice) int {
		if a.Seconds != b.Seconds {
			return cmpFloat(a.Seconds, b.Seconds)
		}
		return cmpFloat(a.Ratio, b.Ratio)
	})
	return out, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// encode compresses the segments once, timing it.
func encode(c uint8, level int, raw [][]byte) (AutoChoice, error) {
	ch := AutoChoice{Codec: c, Level: level}
	size, comp := 0, 0
	t0 := time.Now()
	for _, r := range raw {
		b, err := codec.Compress(c, level, nil, r)
		if err != nil {
			return AutoChoice{}, err
		}
		ch.comp = append(ch.comp, b)
		size, comp = size+len(r), comp+len(b)
	}
	ch.Ratio = float64(comp) / float64(max(size, 1))
	ch.Encode = float64(size) / max(time.Since(t0).Seconds(), 1e-9)
	return ch, nil
}

// timeDecode decompresses a choice's segments until minTiming passed.
func timeDecode(c *AutoChoice, raw [][]byte) error {
	out := make([]byte, format.MaxSegmentRaw)
	size := 0
	t0 := time.Now()
	for size == 0 || time.Since(t0) < minTiming {
		for i, r := range raw {
			if _, err := codec.DecompressInto(c.Codec, out, c.comp[i], len(r)); err != nil {
				return err
			}
			size += max(len(r), 1)
		}
	}
	c.Decode = float64(size) / max(time.Since(t0).Seconds(), 1e-9)
	return nil
}

// describePlan is what overlay-pack prints on stderr about its choice.
func describePlan(plan []AutoChoice, bandwidth float64, segments, size, cores int) string {
	var b strings.Builder
	best := plan[0]
	fmt.Fprintf(&b, "overlay-pack: --codec auto chose %s for %g Mbit/s: each MB of diff stream becomes %.3f MB, in %.2f ms at the cloudlet (measured on the first %d segments, %d bytes; %d cores decode)\n",
		best, bandwidth, best.Ratio, best.Seconds*1e3, segments, size, cores)
	for _, c := range plan {
		fmt.Fprintf(&b, "overlay-pack:   %-8s ratio %.3f  decode %7.1f MB/s/core  encode %6.1f MB/s/core  synthesis %7.2f ms/MB\n",
			c, c.Ratio, c.Decode/1e6, c.Encode/1e6, c.Seconds*1e3)
	}
	return b.String()
}
