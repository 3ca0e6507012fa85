// Package bench holds the benchmark helpers of scripts/bench.sh (ratelimit,
// qmpc, report) and a smoke test that runs the whole benchmark in its short
// mode, so that `make test` keeps it working.
package bench

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

var systems = []string{"cloudlet-zstd", "cloudlet-xz", "elijah2009-xdelta3-xz", "qemu-migrate-xz", "qemu-migrate-zstd"}

// skipOrFail skips when the environment lacks QEMU or the kit, unless CI=true.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

func TestBenchShort(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("needs Linux and QEMU")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "xdelta3", "xz", "zstd", "curl", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s not found", tool)
		}
	}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		skipOrFail(t, "/usr/bin/time not found (apt-get install time)")
	}
	kit := os.Getenv("CLOUDLET_GUEST_DIR")
	if kit == "" {
		kit = filepath.Join(root, ".cache", "guest")
	}
	for _, f := range []string{"vmlinuz", "initrd.img", "rootfs.img"} {
		if _, err := os.Stat(filepath.Join(kit, f)); err != nil {
			skipOrFail(t, "no guest kit in %s (make kit)", kit)
		}
	}
	goTool := filepath.Join(runtime.GOROOT(), "bin", "go")

	// The tools, freshly built into a temp dir.
	bin := t.TempDir()
	build := exec.Command(goTool, "build", "-o", bin+string(os.PathSeparator),
		"./cmd/vm-capture", "./cmd/mem-diff", "./cmd/disk-diff", "./cmd/overlay-pack", "./cmd/overlay-apply",
		"./cmd/vm-resume", "./cmd/stream-inspect", "./cmd/cloudlet-base", "./cmd/vm-console")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	out := t.TempDir()
	cmd := exec.Command("bash", filepath.Join(root, "scripts", "bench.sh"), "-short")
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"PATH="+bin+string(os.PathListSeparator)+filepath.Dir(goTool)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"CLOUDLET_GUEST_DIR="+kit,
		"BENCH_OUT="+out,
		"BENCH_TMP="+t.TempDir(),
		"GO="+goTool,
	)
	stdout, err := cmd.Output()
	if err != nil {
		stderr := ""
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("bench.sh -short: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	t.Logf("bench.sh -short:\n%s", stdout)

	b, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Workloads []struct {
			Name    string `json:"name"`
			RAMMiB  int    `json:"ram_mib"`
			Systems map[string]struct {
				OverlayBytes int64              `json:"overlay_bytes"`
				SynthesisS   map[string]float64 `json:"synthesis_s"`
			} `json:"systems"`
		} `json:"workloads"`
		ResumeScaling struct {
			SmallMiB int     `json:"small_mib"`
			LargeMiB int     `json:"large_mib"`
			Ratio    float64 `json:"ratio"`
		} `json:"resume_scaling"`
		Stages map[string]struct {
			MBPerS     float64 `json:"mb_per_s"`
			PeakRSSMiB float64 `json:"peak_rss_mib"`
		} `json:"stages"`
		SemanticGap *struct {
			DeletedMiB   int              `json:"deleted_mib"`
			OverlayBytes map[string]int64 `json:"overlay_bytes"`
		} `json:"semantic_gap"`
		Instances []struct {
			N          int     `json:"n"`
			SynthesisS float64 `json:"synthesis_s_median"`
			PSSMiB     float64 `json:"pss_mib_per_instance"`
			ChangedMiB float64 `json:"changed_mib"`
			FitHost    int     `json:"fit_host"`
		} `json:"instances"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatalf("results.json: %v\n%s", err, b)
	}
	if len(res.Workloads) != 3 {
		t.Fatalf("results.json: %d workloads, want small, medium and medium-app", len(res.Workloads))
	}
	for _, w := range res.Workloads {
		for _, s := range systems {
			r, ok := w.Systems[s]
			if !ok {
				t.Errorf("%s: system %s missing", w.Name, s)
				continue
			}
			if r.OverlayBytes <= 0 {
				t.Errorf("%s/%s: overlay_bytes %d", w.Name, s, r.OverlayBytes)
			}
			for _, l := range []string{"local", "38mbit", "1gbit"} {
				if r.SynthesisS[l] <= 0 {
					t.Errorf("%s/%s: synthesis_s[%s] = %v", w.Name, s, l, r.SynthesisS[l])
				}
			}
		}
	}
	if res.ResumeScaling.Ratio <= 0 {
		t.Errorf("resume_scaling ratio %v", res.ResumeScaling.Ratio)
	}
	for _, st := range []string{"vm-capture", "mem-diff", "disk-diff", "overlay-pack-zstd", "overlay-apply", "vm-resume"} {
		if res.Stages[st].MBPerS <= 0 {
			t.Errorf("stage %s missing", st)
		}
	}
	if g := res.SemanticGap; g == nil || g.DeletedMiB <= 0 {
		t.Errorf("semantic_gap missing: %+v", g)
	} else {
		for _, v := range []string{"both-on", "trim-off", "freemem-off", "both-off"} {
			if g.OverlayBytes[v] <= 0 {
				t.Errorf("semantic_gap: %s overlay_bytes %d", v, g.OverlayBytes[v])
			}
		}
		// Deleting and freeing must cost less with both switches on; the
		// margin is loose because the short run's amounts are small.
		if on, off := g.OverlayBytes["both-on"], g.OverlayBytes["both-off"]; on >= off {
			t.Errorf("semantic_gap: overlay %d bytes with both switches on, %d with both off; want smaller with them on", on, off)
		}
	}
	// Many instances of one overlay: N = 1 and 2 in the short run.
	if len(res.Instances) != 2 || res.Instances[0].N != 1 || res.Instances[1].N != 2 {
		t.Errorf("instances: %+v, want N = 1 and 2", res.Instances)
	}
	for _, in := range res.Instances {
		if in.SynthesisS <= 0 || in.PSSMiB <= 0 || in.ChangedMiB <= 0 || in.FitHost <= 0 {
			t.Errorf("instances N=%d: %+v", in.N, in)
		}
	}
	if fi, err := os.Stat(filepath.Join(out, "synthesis.svg")); err != nil || fi.Size() == 0 {
		t.Errorf("synthesis.svg: %v", err)
	}
}
