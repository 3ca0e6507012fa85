// Command report turns the raw measurements of scripts/bench.sh into
// bench/results.json (the shape issue 10 asks for), a table and the goals on
// stdout, and an SVG plot of synthesis time against link bandwidth.
//
//	report -raw RAW.tsv -json bench/results.json -svg bench/synthesis.svg -mem 1024
//
// RAW.tsv lines (tab separated):
//
//	size   WORKLOAD SYSTEM BYTES
//	syn    WORKLOAD SYSTEM LINK SECONDS     (one per run; the median is kept)
//	scale  small|large MIB SECONDS          (one per run)
//	stage  NAME MB_PER_S PEAK_RSS_MIB
//	gap    MIB VARIANT BYTES                (semantic gap: overlay bytes per switch setting)
//	note   WORKLOAD SYSTEM KEY VALUE        (extra figures, printed only)
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

var (
	systems = []string{"cloudlet-zstd", "cloudlet-xz", "elijah2009-xdelta3-xz", "qemu-migrate-xz", "qemu-migrate-zstd", "xz9-segments"}
	links   = []string{"local", "38mbit", "1gbit"}
	// sizeOnly are reference systems measured by size alone: xz9-segments
	// is C `xz -9` of our own diff stream in 4 MiB pieces (issue 15).
	sizeOnly = map[string]bool{"xz9-segments": true}
)

type sysResult struct {
	OverlayBytes int64              `json:"overlay_bytes"`
	SynthesisS   map[string]float64 `json:"synthesis_s,omitempty"`
}

type workload struct {
	Name    string                `json:"name"`
	RAMMiB  int                   `json:"ram_mib"`
	Systems map[string]*sysResult `json:"systems"`
}

type scaling struct {
	SmallMiB int     `json:"small_mib"`
	LargeMiB int     `json:"large_mib"`
	Ratio    float64 `json:"ratio"`
}

type stage struct {
	MBPerS     float64 `json:"mb_per_s"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
}

// semGap is the semantic-gap measurement (issue 8): overlay bytes of one
// write-delete and fill-free workload with the two switches on and off.
type semGap struct {
	DeletedMiB   int              `json:"deleted_mib"` // written then deleted, and as much filled then freed
	OverlayBytes map[string]int64 `json:"overlay_bytes"`
	// SavedFraction: (both-off - variant) / (2 * deleted_mib MiB) per variant.
	SavedFraction map[string]float64 `json:"saved_fraction"`
}

// gapVariants are the switch settings, in table order.
var gapVariants = []string{"both-on", "trim-off", "freemem-off", "both-off"}

// instances is one line of the many-instances measurement: N instances of
// the medium workload's overlay at once.
type instances struct {
	N                 int     `json:"n"`
	SynthesisSMedian  float64 `json:"synthesis_s_median"`
	PSSMiBPerInstance float64 `json:"pss_mib_per_instance"`
	ChangedMiB        float64 `json:"changed_mib"`
	// FitHost is how many such instances this host's RAM holds at that
	// PSS (MemTotal / PSS per instance, rounded down).
	FitHost int `json:"fit_host"`
}

type results struct {
	Workloads     []*workload       `json:"workloads"`
	Instances     []instances       `json:"instances,omitempty"`
	ResumeScaling scaling           `json:"resume_scaling"`
	Stages        map[string]*stage `json:"stages"`
	SemanticGap   *semGap           `json:"semantic_gap,omitempty"`
	EarlyStart    []earlyRow        `json:"early_start,omitempty"`
	EarlyMemory   *earlyMemory      `json:"early_start_memory,omitempty"`
}

// earlyRow is one measurement of scripts/early-start.sh (issue 16): the
// time from the first overlay byte to the app's first correct answer with
// vm-resume --early-start, beside the plain synthesis of the same overlay.
type earlyRow struct {
	Workload        string  `json:"workload"`
	LinkMbit        float64 `json:"link_mbit"`
	Order           string  `json:"order"`
	OverlayBytes    int64   `json:"overlay_bytes"`
	TransferS       float64 `json:"transfer_s"`
	FirstResponseS  float64 `json:"first_response_s"`
	PlainSynthesisS float64 `json:"plain_synthesis_s"`
	ArrivedS        float64 `json:"arrived_s"` // vm-resume --early-start exited: all arrived and verified
}

// earlyMemory is the host memory (PSS) of one instance, plain and early
// started, after the app answered.
type earlyMemory struct {
	Workload string  `json:"workload"`
	PlainMiB float64 `json:"plain_pss_mib"`
	EarlyMiB float64 `json:"early_pss_mib"` // QEMU and the serving vm-resume
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func round(v float64, d int) float64 {
	p := math.Pow(10, float64(d))
	return math.Round(v*p) / p
}

func main() {
	raw := flag.String("raw", "", "raw measurements (TSV)")
	jsonOut := flag.String("json", "bench/results.json", "results file to write")
	svgOut := flag.String("svg", "bench/synthesis.svg", "plot to write")
	mem := flag.Int("mem", 1024, "guest RAM of the workloads in MiB")
	runs := flag.Int("runs", 3, "runs per measurement (for the captions)")
	early := flag.Bool("early-only", false, "update only the early_start keys of the results file from the raw rows (scripts/early-start.sh)")
	flag.Parse()
	if *early {
		if err := updateEarly(*raw, *jsonOut); err != nil {
			fmt.Fprintln(os.Stderr, "report:", err)
			os.Exit(1)
		}
		return
	}

	f, err := os.Open(*raw)
	if err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
	defer f.Close()
	res := &results{Stages: map[string]*stage{}}
	wl := map[string]*workload{}
	syn := map[[3]string][]float64{}
	scale := map[string][]float64{}
	var instChanged, instMemTotal float64
	var instOrder []int
	instTimes := map[int][]float64{}
	instPSS := map[int]float64{}
	scaleMiB := map[string]int{}
	type note struct{ w, s, k, v string }
	var notes []note
	getW := func(name string) *workload {
		w := wl[name]
		if w == nil {
			w = &workload{Name: name, RAMMiB: *mem, Systems: map[string]*sysResult{}}
			for _, s := range systems {
				w.Systems[s] = &sysResult{}
				if !sizeOnly[s] {
					w.Systems[s].SynthesisS = map[string]float64{"local": 0, "38mbit": 0, "1gbit": 0}
				}
			}
			wl[name] = w
			res.Workloads = append(res.Workloads, w)
		}
		return w
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		t := strings.Split(sc.Text(), "\t")
		num := func(i int) float64 { v, _ := strconv.ParseFloat(t[i], 64); return v }
		switch {
		case t[0] == "size" && len(t) == 4:
			if r := getW(t[1]).Systems[t[2]]; r != nil {
				r.OverlayBytes = int64(num(3))
			}
		case t[0] == "syn" && len(t) == 5:
			getW(t[1])
			syn[[3]string{t[1], t[2], t[3]}] = append(syn[[3]string{t[1], t[2], t[3]}], num(4))
		case t[0] == "inst_changed" && len(t) == 2:
			instChanged = num(1)
		case t[0] == "inst_memtotal" && len(t) == 2:
			instMemTotal = num(1)
		case t[0] == "inst_inst" && len(t) == 4:
			n := int(num(1))
			if _, ok := instTimes[n]; !ok {
				instOrder = append(instOrder, n)
			}
			instTimes[n] = append(instTimes[n], num(3))
		case t[0] == "inst_pss" && len(t) == 3:
			instPSS[int(num(1))] = num(2)
		case t[0] == "scale" && len(t) == 4:
			scale[t[1]] = append(scale[t[1]], num(3))
			scaleMiB[t[1]] = int(num(2))
		case t[0] == "stage" && len(t) == 4:
			res.Stages[t[1]] = &stage{MBPerS: round(num(2), 1), PeakRSSMiB: round(num(3), 1)}
		case t[0] == "gap" && len(t) == 4:
			if res.SemanticGap == nil {
				res.SemanticGap = &semGap{OverlayBytes: map[string]int64{}, SavedFraction: map[string]float64{}}
			}
			res.SemanticGap.DeletedMiB = int(num(1))
			res.SemanticGap.OverlayBytes[t[2]] = int64(num(3))
		case t[0] == "early" || t[0] == "early_pss":
			addEarly(res, t)
		case t[0] == "note" && len(t) == 5:
			notes = append(notes, note{t[1], t[2], t[3], t[4]})
		}
	}
	if g := res.SemanticGap; g != nil && g.DeletedMiB > 0 {
		if off, ok := g.OverlayBytes["both-off"]; ok {
			for v, n := range g.OverlayBytes {
				g.SavedFraction[v] = round(float64(off-n)/float64(2*g.DeletedMiB<<20), 3)
			}
		}
	}
	for k, v := range syn {
		if r := wl[k[0]].Systems[k[1]]; r != nil && r.SynthesisS != nil {
			r.SynthesisS[k[2]] = round(median(v), 2)
		}
	}
	res.ResumeScaling = scaling{SmallMiB: scaleMiB["small"], LargeMiB: scaleMiB["large"]}
	if s, l := median(scale["small"]), median(scale["large"]); s > 0 {
		res.ResumeScaling.Ratio = round(l/s, 3)
	}
	for _, n := range instOrder {
		in := instances{N: n, SynthesisSMedian: round(median(instTimes[n]), 2), ChangedMiB: round(instChanged, 1)}
		if n > 0 {
			in.PSSMiBPerInstance = round(instPSS[n]/float64(n), 1)
		}
		if in.PSSMiBPerInstance > 0 {
			in.FitHost = int(instMemTotal / in.PSSMiBPerInstance)
		}
		res.Instances = append(res.Instances, in)
	}

	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}

	// Table.
	fmt.Printf("\nVM synthesis benchmark (guest RAM %d MiB, median of %d run(s))\n\n", *mem, *runs)
	fmt.Printf("%-10s %-22s %12s %9s %9s %9s\n", "workload", "system", "overlay MB", "local s", "38Mbit s", "1Gbit s")
	for _, w := range res.Workloads {
		for _, s := range systems {
			r := w.Systems[s]
			if r.SynthesisS == nil {
				fmt.Printf("%-10s %-22s %12.2f %9s %9s %9s\n", w.Name, s, float64(r.OverlayBytes)/1e6, "-", "-", "-")
				continue
			}
			fmt.Printf("%-10s %-22s %12.2f %9.2f %9.2f %9.2f\n", w.Name, s, float64(r.OverlayBytes)/1e6,
				r.SynthesisS["local"], r.SynthesisS["38mbit"], r.SynthesisS["1gbit"])
		}
	}
	fmt.Printf("\nresume scaling: %d MiB base %.2fs, %d MiB base %.2fs, ratio %.3f\n",
		res.ResumeScaling.SmallMiB, median(scale["small"]), res.ResumeScaling.LargeMiB, median(scale["large"]), res.ResumeScaling.Ratio)
	if len(res.Instances) > 0 {
		fmt.Printf("\ninstances of one overlay (%.1f MiB of changed memory) at once, host RAM %.0f MiB\n", instChanged, instMemTotal)
		fmt.Printf("%4s %22s %22s %10s\n", "N", "synthesis s (median)", "PSS MiB per instance", "fit host")
		for _, in := range res.Instances {
			fmt.Printf("%4d %22.2f %22.1f %10d\n", in.N, in.SynthesisSMedian, in.PSSMiBPerInstance, in.FitHost)
		}
	}
	var names []string
	for n := range res.Stages {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Printf("\n%-20s %10s %14s\n", "stage", "MB/s", "peak RSS MiB")
	for _, n := range names {
		fmt.Printf("%-20s %10.1f %14.1f\n", n, res.Stages[n].MBPerS, res.Stages[n].PeakRSSMiB)
	}
	printEarly(res)
	if g := res.SemanticGap; g != nil {
		fmt.Printf("\nsemantic gap: %d MiB written then deleted, %d MiB filled then freed (overlay zstd)\n", g.DeletedMiB, g.DeletedMiB)
		fmt.Printf("%-12s %12s %22s\n", "switches", "overlay MB", "saved vs both-off")
		for _, v := range gapVariants {
			if n, ok := g.OverlayBytes[v]; ok {
				fmt.Printf("%-12s %12.2f %21.0f%%\n", v, float64(n)/1e6, 100*g.SavedFraction[v])
			}
		}
		fmt.Printf("(saved: share of the deleted and freed bytes; the original reported TRIM dropping 25%% of disk chunks and free-page scanning 18%% of memory)\n")
	}
	if len(notes) > 0 {
		fmt.Printf("\ndetails (medians where timed):\n")
		for _, n := range notes {
			fmt.Printf("  %-8s %-22s %-28s %s\n", n.w, n.s, n.k, n.v)
		}
	}

	// Goals (issue 10), on the medium workloads (the last one if none).
	var goalWs []*workload
	for _, w := range res.Workloads {
		if strings.HasPrefix(w.Name, "medium") {
			goalWs = append(goalWs, w)
		}
	}
	if len(goalWs) == 0 && len(res.Workloads) > 0 {
		goalWs = res.Workloads[len(res.Workloads)-1:]
	}
	goal := func(what string, v, limit float64) {
		st := "MET"
		if !(v <= limit) {
			st = "MISSED"
		}
		fmt.Printf("  %-62s %8.3f <= %-5.2f %s\n", what, v, limit, st)
	}
	for _, gw := range goalWs {
		fmt.Printf("\ngoals (issue 10), workload %s:\n", gw.Name)
		z, x := gw.Systems["cloudlet-zstd"], gw.Systems["cloudlet-xz"]
		best := z
		if x.OverlayBytes > 0 && x.OverlayBytes < z.OverlayBytes {
			best = x
		}
		ratio := func(a, b float64) float64 {
			if b == 0 {
				return math.NaN()
			}
			return a / b
		}
		goal("overlay / elijah2009-xdelta3-xz (smaller cloudlet overlay)", ratio(float64(best.OverlayBytes), float64(gw.Systems["elijah2009-xdelta3-xz"].OverlayBytes)), 0.40)
		goal("overlay / qemu-migrate-xz (smaller cloudlet overlay)", ratio(float64(best.OverlayBytes), float64(gw.Systems["qemu-migrate-xz"].OverlayBytes)), 0.20)
		for _, s := range []string{"cloudlet-zstd", "cloudlet-xz"} {
			r := gw.Systems[s]
			goal(s+" synthesis@38Mbit / (overlay bytes / 38 Mbit/s)", ratio(r.SynthesisS["38mbit"], float64(r.OverlayBytes)*8/38e6), 1.10)
		}
		goal("cloudlet-zstd synthesis@1Gbit / qemu-migrate-zstd@1Gbit", ratio(z.SynthesisS["1gbit"], gw.Systems["qemu-migrate-zstd"].SynthesisS["1gbit"]), 0.25)
	}
	// Goals (issue 15): the best overlay within 2% of C xz -9 on every
	// workload; local synthesis at most 0.6x stock QEMU's on the medium ones.
	fmt.Printf("\ngoals (issue 15):\n")
	for _, w := range res.Workloads {
		x := w.Systems["xz9-segments"].OverlayBytes
		best := min(w.Systems["cloudlet-zstd"].OverlayBytes, w.Systems["cloudlet-xz"].OverlayBytes)
		if x > 0 {
			goal(w.Name+": best cloudlet overlay / xz9-segments", float64(best)/float64(x), 1.02)
		}
	}
	for _, gw := range goalWs {
		q := gw.Systems["qemu-migrate-zstd"].SynthesisS["local"]
		if q > 0 {
			goal(gw.Name+": cloudlet-zstd local synthesis / qemu-migrate-zstd local", gw.Systems["cloudlet-zstd"].SynthesisS["local"]/q, 0.6)
		}
	}
	if len(goalWs) > 0 {
		goal("resume scaling ratio (2 GiB base / 256 MiB base)", res.ResumeScaling.Ratio, 1.2)
	}

	if err := os.WriteFile(*svgOut, []byte(plot(res, *runs)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "report:", err)
		os.Exit(1)
	}
}

// plot draws one panel per workload: synthesis time (log y) at 38 Mbit/s,
// 1 Gbit/s and local disk (log x, local drawn at 10 Gbit/s).
func plot(res *results, runs int) string {
	colors := []string{"#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#ff7f0e"}
	xs := map[string]float64{"38mbit": 38e6, "1gbit": 1e9, "local": 1e10}
	const pw, ph, ml, mt, mb, mr = 420.0, 300.0, 60.0, 40.0, 50.0, 20.0
	n := len(res.Workloads)
	if n == 0 {
		n = 1
	}
	W := float64(n)*(pw+ml+mr) + 10
	H := mt + ph + mb + 30 + 18*float64(len(systems)-len(sizeOnly))
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for _, w := range res.Workloads {
		for _, s := range systems {
			for _, l := range links {
				if v := w.Systems[s].SynthesisS[l]; v > 0 {
					ymin, ymax = math.Min(ymin, v), math.Max(ymax, v)
				}
			}
		}
	}
	if math.IsInf(ymin, 0) {
		ymin, ymax = 1, 10
	}
	lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
	if hi <= lo {
		hi = lo + 1
	}
	xlo, xhi := math.Log10(1e7), math.Log10(3e10)
	for i, w := range res.Workloads {
		ox := 10 + float64(i)*(pw+ml+mr) + ml
		X := func(v float64) float64 { return ox + (math.Log10(v)-xlo)/(xhi-xlo)*pw }
		Y := func(v float64) float64 { return mt + ph - (math.Log10(v)-lo)/(hi-lo)*ph }
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" font-weight="bold">%s workload (%d MiB guest), median of %d</text>`+"\n", ox, mt-15, w.Name, w.RAMMiB, runs)
		fmt.Fprintf(&b, `<rect x="%.0f" y="%.0f" width="%.0f" height="%.0f" fill="none" stroke="#444"/>`+"\n", ox, mt, pw, ph)
		for e := lo; e <= hi; e++ {
			for _, m := range []float64{1, 2, 5} {
				v := m * math.Pow(10, e)
				if math.Log10(v) > hi+1e-9 {
					continue
				}
				y := Y(v)
				fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", ox, ox+pw, y, y)
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="end">%g</text>`+"\n", ox-5, y+4, v)
			}
		}
		for _, l := range links {
			x := X(xs[l])
			label := map[string]string{"38mbit": "38 Mbit/s", "1gbit": "1 Gbit/s", "local": "local disk"}[l]
			fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%.0f" y2="%.0f" stroke="#eee"/>`+"\n", x, x, mt, mt+ph)
			fmt.Fprintf(&b, `<text x="%.1f" y="%.0f" text-anchor="middle">%s</text>`+"\n", x, mt+ph+16, label)
		}
		fmt.Fprintf(&b, `<text x="%.0f" y="%.0f" text-anchor="middle">link bandwidth (log)</text>`+"\n", ox+pw/2, mt+ph+34)
		fmt.Fprintf(&b, `<text transform="translate(%.0f,%.0f) rotate(-90)" text-anchor="middle">synthesis time, s (log)</text>`+"\n", ox-42, mt+ph/2)
		for j, s := range systems {
			if sizeOnly[s] {
				continue
			}
			var pts []string
			for _, l := range links {
				if v := w.Systems[s].SynthesisS[l]; v > 0 {
					pts = append(pts, fmt.Sprintf("%.1f,%.1f", X(xs[l]), Y(v)))
					fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", X(xs[l]), Y(v), colors[j])
				}
			}
			fmt.Fprintf(&b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), colors[j])
			ly := mt + ph + mb + 10 + 18*float64(j)
			fmt.Fprintf(&b, `<line x1="%.0f" x2="%.0f" y1="%.0f" y2="%.0f" stroke="%s" stroke-width="3"/>`+"\n", ox, ox+20, ly, ly, colors[j])
			fmt.Fprintf(&b, `<text x="%.0f" y="%.0f">%s (%.1f MB overlay)</text>`+"\n", ox+26, ly+4, s, float64(w.Systems[s].OverlayBytes)/1e6)
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// addEarly takes an "early" row (workload, link Mbit/s, order, overlay
// bytes, transfer s, first response s, plain synthesis s, arrived s) or
// an "early_pss" row (workload, plain MiB, early MiB).
func addEarly(res *results, t []string) {
	num := func(i int) float64 { v, _ := strconv.ParseFloat(t[i], 64); return v }
	switch {
	case t[0] == "early" && len(t) == 9:
		res.EarlyStart = append(res.EarlyStart, earlyRow{Workload: t[1], LinkMbit: num(2), Order: t[3], OverlayBytes: int64(num(4)),
			TransferS: round(num(5), 2), FirstResponseS: round(num(6), 2), PlainSynthesisS: round(num(7), 2), ArrivedS: round(num(8), 2)})
	case t[0] == "early_pss" && len(t) == 4:
		res.EarlyMemory = &earlyMemory{Workload: t[1], PlainMiB: round(num(2), 1), EarlyMiB: round(num(3), 1)}
	}
}

// updateEarly replaces the early_start keys of the results file with the
// rows of raw, keeping everything else, and prints the table.
func updateEarly(raw, out string) error {
	b, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	var res results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	f, err := os.Open(raw)
	if err != nil {
		return err
	}
	defer f.Close()
	res.EarlyStart, res.EarlyMemory = nil, nil
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		addEarly(&res, strings.Split(sc.Text(), "\t"))
	}
	b, _ = json.MarshalIndent(&res, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		return err
	}
	printEarly(&res)
	return nil
}

func printEarly(res *results) {
	if len(res.EarlyStart) == 0 {
		return
	}
	fmt.Printf("\nearly start (issue 16): first overlay byte to the app's first correct answer\n")
	fmt.Printf("%-11s %6s %-7s %11s %10s %10s %10s %9s %10s\n", "workload", "Mbit/s", "order", "overlay MB", "transfer s", "first s", "/transfer", "plain s", "arrived s")
	for _, r := range res.EarlyStart {
		fmt.Printf("%-11s %6.0f %-7s %11.2f %10.2f %10.2f %10.2f %9.2f %10.2f\n", r.Workload, r.LinkMbit, r.Order, float64(r.OverlayBytes)/1e6,
			r.TransferS, r.FirstResponseS, r.FirstResponseS/r.TransferS, r.PlainSynthesisS, r.ArrivedS)
	}
	if m := res.EarlyMemory; m != nil {
		fmt.Printf("host memory (PSS) of one %s instance: plain %.1f MiB, early start %.1f MiB (QEMU and its server)\n", m.Workload, m.PlainMiB, m.EarlyMiB)
	}
}
