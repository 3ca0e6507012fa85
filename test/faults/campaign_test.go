package faults

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"cloudlet/format"
)

// faultCase is one damaged input for overlay-apply | vm-resume.
type faultCase struct {
	kind string
	name string
	in   []byte
	base string // --base of both tools
	want string // expected in the final message, if set
}

type outcome struct {
	c                 faultCase
	applyRC, resumeRC int
	applyMsg, lastMsg string
	accepted          bool
	lost              []string
	unclear           bool
}

// overlayFrames splits an overlay into its preamble and frames.
func overlayFrames(ov []byte) (pre []byte, fr [][]byte) {
	pre, s := ov[:format.PreambleSize], ov[format.PreambleSize:]
	for len(s) >= format.FrameHeadSize {
		n := format.FrameHeadSize + int(binary.LittleEndian.Uint32(s[4:])) + format.FrameTailSize
		fr, s = append(fr, s[:n]), s[n:]
	}
	return pre, fr
}

func (f *fixture) cases(t *testing.T, seed uint64) []faultCase {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	ov := f.ov
	var cs []faultCase
	for i := 0; i < 200; i++ {
		off := rng.IntN(len(ov))
		b := bytes.Clone(ov)
		b[off] ^= byte(1 + rng.IntN(255))
		cs = append(cs, faultCase{kind: "byte", name: fmt.Sprintf("byte %d: %02x -> %02x", off, ov[off], b[off]), in: b, base: f.baseA})
	}
	for i := 0; i < 50; i++ {
		n := rng.IntN(len(ov))
		cs = append(cs, faultCase{kind: "truncate", name: fmt.Sprintf("truncated to %d of %d bytes", n, len(ov)), in: ov[:n], base: f.baseA})
	}
	pre, fr := overlayFrames(ov)
	var segs []int
	for i, x := range fr {
		if format.Type(x[0]) == format.TypeSegment {
			segs = append(segs, i)
		}
	}
	if len(segs) < 3 {
		t.Fatalf("the overlay has %d segments; want several", len(segs))
	}
	for i := 0; i < 20; i++ {
		a := segs[rng.IntN(len(segs))]
		b := segs[rng.IntN(len(segs))]
		for b == a {
			b = segs[rng.IntN(len(segs))]
		}
		out := [][]byte{pre}
		var name string
		if i%2 == 0 {
			name = fmt.Sprintf("segments in frames %d and %d swapped", a+1, b+1)
			for j, x := range fr {
				switch j {
				case a:
					x = fr[b]
				case b:
					x = fr[a]
				}
				out = append(out, x)
			}
		} else {
			name = fmt.Sprintf("segment in frame %d duplicated after frame %d", a+1, b+1)
			for j, x := range fr {
				out = append(out, x)
				if j == b {
					out = append(out, fr[a])
				}
			}
		}
		cs = append(cs, faultCase{kind: "segment", name: name, in: bytes.Join(out, nil), base: f.baseA})
	}
	end := fr[len(fr)-1]
	cs = append(cs,
		faultCase{kind: "hand", name: "header only", in: append(bytes.Clone(pre), fr[0]...), base: f.baseA, want: "unexpected EOF"},
		faultCase{kind: "hand", name: "END record only", in: append(bytes.Clone(pre), end...), base: f.baseA},
		faultCase{kind: "hand", name: "two overlays concatenated", in: append(bytes.Clone(ov), ov...), base: f.baseA, want: "trailing data"},
		faultCase{kind: "hand", name: "overlay for another base", in: ov, base: f.baseB, want: "wrong base"},
		faultCase{kind: "hand", name: "empty input", in: nil, base: f.baseA},
		faultCase{kind: "hand", name: "END dropped", in: ov[:len(ov)-len(end)], base: f.baseA, want: "unexpected EOF"},
		faultCase{kind: "hand", name: "INDEX dropped", in: bytes.Join(append(append([][]byte{pre}, fr[:len(fr)-2]...), end), nil), base: f.baseA},
	)
	return cs
}

// try pipes one input through overlay-apply | vm-resume.
func (f *fixture) try(t *testing.T, c faultCase) outcome {
	dir, run, tmp := f.newCase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	apply := f.cmd(ctx, tmp, "overlay-apply", "--base", c.base)
	resume := f.cmd(ctx, tmp, "vm-resume", "--base", c.base, "--kit", f.kit.Dir, "--run-dir", run, "--name", "clfault", "--accel", accel())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	var aerr, rerr, rout bytes.Buffer
	apply.Stdin, apply.Stdout, apply.Stderr = bytes.NewReader(c.in), pw, &aerr
	resume.Stdin, resume.Stdout, resume.Stderr = pr, &rout, &rerr
	if err := apply.Start(); err != nil {
		t.Fatal(err)
	}
	if err := resume.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	pr.Close()
	o := outcome{c: c}
	o.applyRC, o.resumeRC = exitCode(apply.Wait()), exitCode(resume.Wait())
	o.applyMsg, o.lastMsg = firstLine(aerr.String()), firstLine(rerr.String())
	if o.resumeRC == 0 || strings.Contains(rout.String(), "run_dir") {
		o.accepted = true
		f.stop(run)
	}
	o.unclear = o.applyRC == 0 && o.resumeRC == 0 || !strings.HasPrefix(o.lastMsg, "vm-resume: ") ||
		(c.want != "" && !strings.Contains(rerr.String(), c.want))
	o.lost = f.lost(dir, run, tmp)
	os.RemoveAll(dir)
	return o
}

// TestFaultCampaign: every damaged overlay fails in overlay-apply or
// vm-resume with a message, before any guest runs, and leaves nothing.
func TestFaultCampaign(t *testing.T) {
	f := getFixture(t)
	s := seed()
	t.Logf("fault campaign seed %d (rerun with -faults.seed %d or CLOUDLET_FAULT_SEED=%d); overlay of %d bytes", s, s, s, len(f.ov))

	// A control: the undamaged overlay resumes (the harness can accept).
	good := f.try(t, faultCase{kind: "control", name: "undamaged overlay", in: f.ov, base: f.baseA})
	if !good.accepted || len(good.lost) > 0 {
		t.Fatalf("the undamaged overlay: apply %d (%s), resume %d (%s), lost %v; want a resumed VM",
			good.applyRC, good.applyMsg, good.resumeRC, good.lastMsg, good.lost)
	}

	cs := f.cases(t, s)
	start := time.Now()
	results := make([]outcome, len(cs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				results[i] = f.try(t, cs[i])
			}
		}()
	}
	for i := range cs {
		next <- i
	}
	close(next)
	wg.Wait()

	type count struct{ tried, rejected, accepted, lost, unclear int }
	counts := map[string]*count{}
	codes := map[string]int{}
	msgs := map[string]int{}
	total := &count{}
	for _, o := range results {
		c := counts[o.c.kind]
		if c == nil {
			c = &count{}
			counts[o.c.kind] = c
		}
		for _, x := range []*count{c, total} {
			x.tried++
			if o.accepted {
				x.accepted++
			} else {
				x.rejected++
			}
			if len(o.lost) > 0 {
				x.lost++
			}
			if o.unclear {
				x.unclear++
			}
		}
		codes[fmt.Sprintf("overlay-apply %d, vm-resume %d", o.applyRC, o.resumeRC)]++
		msgs[kindOf(o.lastMsg)]++
		if o.accepted {
			t.Errorf("WRONGLY ACCEPTED: %s: a VM was resumed", o.c.name)
		}
		if len(o.lost) > 0 {
			t.Errorf("LOST: %s: %s", o.c.name, strings.Join(o.lost, "; "))
		}
		if o.unclear {
			t.Errorf("unclear failure: %s: overlay-apply %d %q, vm-resume %d %q (want %q)", o.c.name, o.applyRC, o.applyMsg, o.resumeRC, o.lastMsg, o.c.want)
		}
		if o.c.kind == "hand" || o.c.kind == "segment" && testing.Verbose() {
			t.Logf("%s: %s", o.c.name, o.lastMsg)
		}
	}
	f.verifyBase(t)
	var b strings.Builder
	fmt.Fprintf(&b, "fault campaign, seed %d, %d cases in %v:\n", s, len(cs), time.Since(start).Round(time.Second))
	for _, k := range []string{"byte", "truncate", "segment", "hand"} {
		c := counts[k]
		fmt.Fprintf(&b, "  %-9s tried %3d  rejected %3d  wrongly accepted %d  anything lost %d  unclear %d\n", k, c.tried, c.rejected, c.accepted, c.lost, c.unclear)
	}
	fmt.Fprintf(&b, "  %-9s tried %3d  rejected %3d  wrongly accepted %d  anything lost %d  unclear %d\n", "total", total.tried, total.rejected, total.accepted, total.lost, total.unclear)
	b.WriteString("  exit codes:")
	for _, k := range sorted(codes) {
		fmt.Fprintf(&b, " [%s] x%d", k, codes[k])
	}
	b.WriteString("\n  vm-resume messages:")
	for _, k := range sorted(msgs) {
		fmt.Fprintf(&b, " [%s] x%d", k, msgs[k])
	}
	t.Log(b.String())
	fmt.Println(b.String())
}

// kindOf reduces a message to its kind for the summary.
func kindOf(m string) string {
	for _, k := range []string{"checksum mismatch", "unexpected EOF", "end record does not match", "trailing data", "wrong base",
		"bad magic", "reserved bits", "length exceeds", "INDEX", "malformed", "overlapping", "outside", "unsupported version",
		"does not start with a HEADER", "segment", "empty input", "sha256"} {
		if strings.Contains(m, k) {
			return k
		}
	}
	return m
}

func sorted(m map[string]int) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
