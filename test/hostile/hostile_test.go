package hostile

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"testing"
	"time"

	"cloudlet/format"
)

// Small sizes of the inputs (the benchmark uses the Large ones).
const (
	smallRanges     = 5000
	smallZeroFrom   = 10000 // ZeroRecords at this n and 4 times it: is the cost linear?
	smallFlood      = 6     // all-zero DEVSTATE segments passed on, beyond those in flight
	smallZeroDisk   = 256 << 20
	smallHugeMem    = 2 << 30
	smallHugeDisk   = 4 << 30
	testTimeout     = 2 * time.Minute
	devStateDiskCap = 64<<20 + 1<<20 // input 3: files in the run or target folder
	zeroDiskCap     = 16 << 20       // input 4: real blocks
)

// applyCase runs overlay-apply --base on in, with --trusted-keys and
// --require-signature when signed, in a case folder of its own; it
// returns what the run cost and the case's TMPDIR (also its --tmpdir).
func applyCase(ctx context.Context, t testing.TB, f *fixture, in []byte, signed bool) (*result, string) {
	t.Helper()
	tmp, _ := f.newCase(t)
	args := []string{"--base", f.baseDir, "--tmpdir", tmp}
	if signed {
		args = append(args, "--trusted-keys", f.trusted, "--require-signature")
	}
	r, err := f.measure(ctx, tmp, in, []string{tmp, filepath.Join(f.work, "runs")}, "overlay-apply", args...)
	if err != nil {
		t.Fatalf("overlay-apply: %v", err)
	}
	return r, tmp
}

// importCase runs cloudlet-base import TARGET/b on in; it returns what the
// run cost and the target folder (the parent of the new base folder, where
// import builds it).
func importCase(ctx context.Context, t testing.TB, f *fixture, in []byte) (*result, string, string) {
	t.Helper()
	tmp, target := f.newCase(t)
	r, err := f.measure(ctx, tmp, in, []string{target, tmp}, "cloudlet-base", "import", filepath.Join(target, "b"))
	if err != nil {
		t.Fatalf("cloudlet-base import: %v", err)
	}
	return r, target, tmp
}

// refused checks that the tool failed and said what was wrong (matches
// want).
func refused(t *testing.T, r *result, want string) {
	t.Helper()
	if r.TimedOut {
		t.Errorf("killed after %v", r.Wall.Round(time.Millisecond))
	}
	if r.Code == 0 {
		t.Errorf("exit 0; want a refusal")
	}
	if !regexp.MustCompile(want).MatchString(r.Stderr) {
		t.Errorf("the error does not name what was wrong (want %s):\n%s", want, r.Stderr)
	}
}

// empty checks that the tool left nothing in the folders.
func empty(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if l := entries(d); len(l) > 0 {
			t.Errorf("left behind in %s: %v", d, l)
		}
	}
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// Every input passes the frame checks (Check of each frame, and END's
// frames, bytes, digest and sha256 where it has an END), so that what the
// tools refuse is only its content. The records inside the segments are
// not read here: that is the tools' job.
func TestFrameChecks(t *testing.T) {
	f := getFixture(t, testMem)
	gen := []struct {
		name string
		make func() ([]byte, error)
		end  bool
	}{
		{"ManifestRanges", func() ([]byte, error) { return ManifestRanges(f.base, smallRanges) }, true},
		{"ManifestRangesSigned", func() ([]byte, error) { return ManifestRangesSigned(f.base, smallRanges, f.keyID) }, true},
		{"ZeroRecords", func() ([]byte, error) { return ZeroRecords(f.base, smallRanges) }, true},
		{"DevStateFlood", func() ([]byte, error) { return DevStateFlood(f.base, smallFlood) }, false},
		{"DevStateFloodSigned", func() ([]byte, error) { return DevStateFloodSigned(f.base, smallFlood, f.keyID) }, false},
		{"BaseExportZeroDisk", func() ([]byte, error) { return BaseExportZeroDisk(smallZeroDisk) }, true},
		{"BaseExportHuge", func() ([]byte, error) { return BaseExportHuge(smallHugeMem, smallHugeDisk) }, true},
	}
	for _, g := range gen {
		t.Run(g.name, func(t *testing.T) {
			in, err := g.make()
			if err != nil {
				t.Fatal(err)
			}
			r := format.NewReader(bytes.NewReader(in))
			r.HashSHA256()
			frames := 1 // the HEADER
			for {
				if _, err = r.Next(); err != nil {
					break
				}
				frames++
			}
			switch {
			case g.end && err != io.EOF:
				t.Errorf("reading it: %v; want a verified END", err)
			case g.end && r.End().SHA256 == "":
				t.Errorf("END carries no sha256")
			case !g.end && (!errors.Is(err, io.ErrUnexpectedEOF) || r.Offset() != int64(len(in))):
				t.Errorf("reading it: %v at offset %d of %d; want every frame whole and then no END", err, r.Offset(), len(in))
			}
			t.Logf("%d bytes, %d frames before END", len(in), frames)
		})
	}
}

// Input 1: a MANIFEST of smallRanges descending ranges for a segment that
// never comes. overlay-apply must refuse it; signed, with signatures
// required, it must refuse the unsigned head.
func TestManifestRanges(t *testing.T) {
	f := getFixture(t, testMem)
	for _, tc := range []struct {
		name   string
		signed bool
		want   string
	}{{"unsigned", false, `MANIFEST`}, {"signed", true, `(?i)sign`}} {
		t.Run(tc.name, func(t *testing.T) {
			in, err := manifestRanges(f.base, smallRanges, f.signer(tc.signed))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			r, tmp := applyCase(ctx, t, f, in, tc.signed)
			t.Logf("%d ranges, %d bytes: %v", smallRanges, len(in), r)
			refused(t, r, tc.want)
			empty(t, tmp)
		})
	}
}

// Input 2: one segment of MEM_ZERO records in descending order. It is a
// valid overlay: overlay-apply may accept it, at a cost linear in the
// number of records (measured at n and 4n against n = 1).
func TestZeroRecords(t *testing.T) {
	f := getFixture(t, testMem)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	cost := map[int]*result{}
	for _, n := range []int{1, smallZeroFrom, 4 * smallZeroFrom} {
		in, err := ZeroRecords(f.base, n)
		if err != nil {
			t.Fatal(err)
		}
		r, tmp := applyCase(ctx, t, f, in, false)
		t.Logf("%d records, %d bytes: %v", n, len(in), r)
		empty(t, tmp)
		if r.Code != 0 {
			refused(t, r, `MEM_ZERO|record`)
			return
		}
		if least := int64(32 * n); r.Out < least {
			t.Errorf("%d records: accepted, but wrote %d bytes (want at least %d, a MEM_ZERO record for each)", n, r.Out, least)
		}
		cost[n] = r
	}
	extra := func(n int) time.Duration { return max(cost[n].CPU-cost[1].CPU, 0) }
	small, big := extra(smallZeroFrom), extra(4*smallZeroFrom)
	t.Logf("cpu above the n = 1 run: %v at n = %d, %v at n = %d", small, smallZeroFrom, big, 4*smallZeroFrom)
	// A relative check, not a time limit: four times the records may cost
	// at most three times the linear growth (quadratic is 16 times).
	// Below 200 ms at 4n the run is too cheap for the ratio to mean
	// anything, and cheap enough.
	if floor := max(small, 20*time.Millisecond); big >= 200*time.Millisecond && big > 12*floor {
		t.Errorf("4 times the records cost %.1f times the CPU (%v, %v): the cost grows faster than linearly", float64(big)/float64(floor), small, big)
	}
}

// Input 3: device state without end. overlay-apply must refuse it once it
// holds more than the 64 MiB a device state may have, having passed on
// no more than that, since vm-resume spools every DEVSTATE byte it
// receives into its run folder (devstate.spool). vm-resume itself is not
// run: it starts QEMU at the HEADER, and the synthetic base has no
// device state QEMU could load.
func TestDevStateFlood(t *testing.T) {
	f := getFixture(t, testMem)
	for _, tc := range []struct {
		name   string
		signed bool
	}{{"unsigned", false}, {"signed", true}} {
		t.Run(tc.name, func(t *testing.T) {
			// overlay-apply holds up to GOMAXPROCS+2 segments in flight
			// and drops them at the missing END: send that many more.
			segs := smallFlood + runtime.NumCPU() + 2
			in, err := devStateFlood(f.base, segs, f.signer(tc.signed))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
			defer cancel()
			r, tmp := applyCase(ctx, t, f, in, tc.signed)
			t.Logf("%d segments of %d bytes of device state, %d bytes: %v", segs, FloodRecord, len(in), r)
			refused(t, r, `(?i)DEVSTATE|device state`)
			if r.PeakDisk > devStateDiskCap {
				t.Errorf("the run held %.1f MiB of files at its peak; want at most %.0f MiB", mib(r.PeakDisk), mib(devStateDiskCap))
			}
			if r.Out > devStateDiskCap {
				t.Errorf("overlay-apply passed on %.1f MiB, which vm-resume would spool into its run folder; want at most %.0f MiB", mib(r.Out), mib(devStateDiskCap))
			}
			empty(t, tmp, filepath.Join(f.work, "runs"))
		})
	}
}

// Input 4: a base export of a few hundred bytes zeroing a whole disk. The
// import must refuse it (its ID cannot match) without writing the zeros.
func TestBaseExportZeroDisk(t *testing.T) {
	f := getFixture(t, testMem)
	in, err := BaseExportZeroDisk(smallZeroDisk)
	if err != nil {
		t.Fatal(err)
	}
	catalog := readCatalog(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r, target, tmp := importCase(ctx, t, f, in)
	t.Logf("disk of %d MiB, %d bytes: %v", smallZeroDisk>>20, len(in), r)
	refused(t, r, `(?i)\bID\b|DISK_ZERO|zero`)
	if r.PeakDisk > zeroDiskCap {
		t.Errorf("the import allocated %.1f MiB of blocks at its peak; want at most %.0f MiB", mib(r.PeakDisk), mib(zeroDiskCap))
	}
	empty(t, target, tmp)
	if now := readCatalog(t, f); !bytes.Equal(now, catalog) {
		t.Errorf("the catalog changed:\n%s", now)
	}
}

// Input 5: a base export declaring a large memory and disk and nothing
// else. The import must refuse it (its ID cannot match) and leave
// nothing.
func TestBaseExportHuge(t *testing.T) {
	f := getFixture(t, testMem)
	in, err := BaseExportHuge(smallHugeMem, smallHugeDisk)
	if err != nil {
		t.Fatal(err)
	}
	catalog := readCatalog(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	r, target, tmp := importCase(ctx, t, f, in)
	t.Logf("memory %d GiB, disk %d GiB, %d bytes: %v", smallHugeMem>>30, smallHugeDisk>>30, len(in), r)
	refused(t, r, `(?i)\bID\b|memory|disk|size|space`)
	empty(t, target, tmp)
	if now := readCatalog(t, f); !bytes.Equal(now, catalog) {
		t.Errorf("the catalog changed:\n%s", now)
	}
}

// readCatalog returns the fixture's catalog file (nil if there is none).
func readCatalog(t *testing.T, f *fixture) []byte {
	t.Helper()
	b, err := os.ReadFile(f.catalog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return b
}
