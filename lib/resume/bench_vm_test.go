package resume

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/capture"
	"cloudlet/lib/diff"
	"cloudlet/lib/guesttest"
	"cloudlet/lib/vm"
)

// relativeStream makes a base of memMiB, resumes it, applies the same
// change (fill 32 MiB of memory, write 8 MiB of files), captures and diffs.
func relativeStream(b *testing.B, kit guesttest.GuestKit, memMiB int) (string, []byte) {
	v := launchMem(b, kit, memMiB)
	v.run("sync")
	bdir := filepath.Join(b.TempDir(), "base")
	if _, err := base.Create(bdir, format.NewReader(captureTo(b, v.info, capture.Quit)), base.CreateOptions{Image: kit.Rootfs, KitDirs: []string{kit.Dir}}); err != nil {
		b.Fatal(err)
	}
	info2, err := FromBase(context.Background(), bdir, StreamOptions{Options: Options{Name: "bench", RunDir: runDir(b, "r")}, KitDirs: []string{kit.Dir}})
	if err != nil {
		b.Fatal(err)
	}
	v2 := attach(b, info2, false)
	v2.con.Send("\n")
	v2.run("clwork fillmem --mib 32 --seed 9 && clwork writefiles --mib 8 --dir /root/b --seed 9 && sync")
	var d1, d2 bytes.Buffer
	open := func(string) (*base.Base, error) { return base.Open(bdir) }
	w := format.NewWriter(&d1)
	if _, err := diff.Run(format.NewReader(captureTo(b, info2, capture.Quit)), w, diff.Config{Stage: "mem-diff", Space: format.SpaceMem, Options: diff.Options{NoDedup: true}, Open: open}); err != nil {
		b.Fatal(err)
	}
	w.Close()
	w = format.NewWriter(&d2)
	if _, err := diff.Run(format.NewReader(&d1), w, diff.Config{Stage: "disk-diff", Space: format.SpaceDisk, Options: diff.Options{NoDedup: true}, Open: open}); err != nil {
		b.Fatal(err)
	}
	w.Close()
	return bdir, d2.Bytes()
}

func rssKiB(pid int) int {
	s, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, l := range strings.Split(string(s), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}

// BenchmarkResumeScaling resumes the same changes relative to a 256 MiB and
// a 2 GiB base and reports the ratio of resume times (goal <= 1.2) and the
// resumed QEMU's resident memory.
//
//	go test -run XXX -bench ResumeScaling -benchtime 3x ./lib/resume/
func BenchmarkResumeScaling(b *testing.B) {
	kit := guesttest.Kit(b)
	sizes := []int{256, 2048}
	var secs [2]time.Duration
	for i, mib := range sizes {
		bdir, stream := relativeStream(b, kit, mib)
		var rss int
		for n := 0; n < b.N; n++ {
			start := time.Now()
			info, err := FromStream(context.Background(), format.NewReader(bytes.NewReader(stream)),
				StreamOptions{Options: Options{Name: "bench", RunDir: filepath.Join(b.TempDir(), "x")}, BaseDir: bdir, KitDirs: []string{kit.Dir}})
			if err != nil {
				b.Fatal(err)
			}
			secs[i] += time.Since(start)
			rss = rssKiB(info.Pid)
			Stop(context.Background(), info.RunDir)
		}
		b.ReportMetric(float64(len(stream))/1e6, fmt.Sprintf("stream-MB-%dMiB", mib))
		b.ReportMetric(secs[i].Seconds()/float64(b.N), fmt.Sprintf("resume-s-%dMiB", mib))
		b.ReportMetric(float64(rss)/1024, fmt.Sprintf("qemu-rss-MiB-%dMiB", mib))
	}
	b.ReportMetric(secs[1].Seconds()/secs[0].Seconds(), "ratio-2GiB/256MiB")
	_ = vm.MemBackendID
}
