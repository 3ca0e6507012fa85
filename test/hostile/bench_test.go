package hostile

import (
	"bytes"
	"context"
	"errors"
	"math/rand"
	"testing"
	"time"

	"cloudlet/format"
)

// benchTimeout bounds each run of a tool in the benchmark, so that a slow
// consumer is measured as slow rather than hanging the benchmark.
const benchTimeout = 5 * time.Minute

// referenceMem is the memory a real-shaped overlay of the benchmark
// changes: random pages, which do not compress.
const referenceMem = 32 << 20

// BenchmarkHostile feeds each crafted input at its large size to the
// tool that reads it (overlay-apply for overlays, cloudlet-base import for
// base exports) and reports what a run cost: cpu-s (user and system time
// of the tool), peak-disk-MB (blocks of its files at their peak),
// input-MB, cpu-s/MB-input and out-MB (what it passed on, on stdout).
// RealOverlay is the reference: an overlay of 32 MiB of random memory
// pages made by overlay-pack, applied the same way, so that the cost per
// MB of a hostile input compares with a real overlay's.
//
//	go test -run XXX -bench Hostile -benchtime 1x ./test/hostile
func BenchmarkHostile(b *testing.B) {
	f := getFixture(b, benchMem)
	const (
		apply       = iota // overlay-apply --base
		applySigned        // with --trusted-keys and --require-signature
		importBase         // cloudlet-base import
	)
	for _, in := range []struct {
		name string
		make func() ([]byte, error)
		tool int
	}{
		{"ManifestRanges", func() ([]byte, error) { return ManifestRanges(f.base, LargeRanges) }, apply},
		{"ManifestRangesSigned", func() ([]byte, error) { return ManifestRangesSigned(f.base, LargeRanges, f.keyID) }, applySigned},
		{"ZeroRecords", func() ([]byte, error) { return ZeroRecords(f.base, LargeRanges) }, apply},
		{"DevStateFlood", func() ([]byte, error) { return DevStateFlood(f.base, LargeFloodSegments) }, apply},
		{"DevStateFloodSigned", func() ([]byte, error) { return DevStateFloodSigned(f.base, LargeFloodSegments, f.keyID) }, applySigned},
		{"BaseExportZeroDisk", func() ([]byte, error) { return BaseExportZeroDisk(LargeZeroDisk) }, importBase},
		{"BaseExportHuge", func() ([]byte, error) { return BaseExportHuge(LargeHugeMem, LargeHugeDisk) }, importBase},
		{"RealOverlay", func() ([]byte, error) { return f.referenceOverlay(referenceMem) }, apply},
	} {
		b.Run(in.name, func(b *testing.B) {
			data, err := in.make()
			if err != nil {
				b.Fatal(err)
			}
			var cpu, out float64
			var peak int64
			b.ResetTimer()
			for range b.N {
				ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
				var r *result
				if in.tool == importBase {
					r, _, _ = importCase(ctx, b, f, data)
				} else {
					r, _ = applyCase(ctx, b, f, data, in.tool == applySigned)
				}
				cancel()
				b.Logf("%d bytes in: %v", len(data), r)
				if r.TimedOut {
					b.Logf("killed after %v: the figures are a lower bound", benchTimeout)
				}
				cpu += r.CPU.Seconds()
				out += float64(r.Out)
				peak = max(peak, r.PeakDisk)
			}
			b.StopTimer()
			n, mb := float64(b.N), float64(len(data))/1e6
			b.ReportMetric(cpu/n, "cpu-s")
			b.ReportMetric(float64(peak)/1e6, "peak-disk-MB")
			b.ReportMetric(mb, "input-MB")
			b.ReportMetric(cpu/n/mb, "cpu-s/MB-input")
			b.ReportMetric(out/n/1e6, "out-MB")
		})
	}
}

// referenceOverlay returns a real-shaped overlay of f's base: a diff
// stream of the base's device state and mem bytes of random memory pages,
// in runs of 1 to 32 pages with gaps of 1 to 32 pages between them, packed
// by overlay-pack with its defaults (zstd, 4 MiB segments, MANIFEST).
func (f *fixture) referenceOverlay(mem int) ([]byte, error) {
	r := rand.New(rand.NewSource(32))
	var diff bytes.Buffer
	w := format.NewWriter(&diff)
	h := &format.Header{Kind: format.KindDiff, VM: f.base.VM, BaseID: f.base.ID, MemRelative: true, Producer: []string{"test/hostile"}}
	errs := []error{w.WriteHeader(h), w.WriteDevState(f.base.DevState)}
	page := make([]byte, 32*format.PageSize)
	off := uint64(0)
	for left := mem; left > 0; {
		run := min(1+r.Intn(32), left/format.PageSize)
		off += uint64(1+r.Intn(32)) * format.PageSize
		p := page[:run*format.PageSize]
		r.Read(p)
		if off+uint64(len(p)) > f.base.VM.MemSize {
			return nil, errors.New("hostile: the base's memory is too small for the reference overlay")
		}
		errs = append(errs, w.WriteMem(off, p))
		off += uint64(len(p))
		left -= len(p)
	}
	errs = append(errs, w.Close())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var ov bytes.Buffer
	if err := f.runTool(&diff, &ov, "overlay-pack"); err != nil {
		return nil, err
	}
	return ov.Bytes(), nil
}
