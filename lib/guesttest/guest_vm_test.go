package guesttest

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/console"
	"cloudlet/lib/vm"
	"cloudlet/scripts/guest/clwork/workload"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func fileSHA256(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func TestGuestBootAndWorkload(t *testing.T) {
	port := FreePort(t)
	g := Boot(t, Options{Forwards: []vm.Forward{{HostPort: port, GuestPort: 80}}})
	k := g.Kit

	t.Run("kernel", func(t *testing.T) {
		if got := g.Run("uname -r"); got != k.Manifest.KernelVersion {
			t.Fatalf("uname -r = %q, manifest says %q", got, k.Manifest.KernelVersion)
		}
	})

	t.Run("console", func(t *testing.T) {
		out, code, err := g.RunCode("echo one; echo two >&2; false")
		if err != nil || code != 1 || out != "one\ntwo" {
			t.Fatalf("got %q %d %v", out, code, err)
		}
		if out, code, _ := g.RunCode("exit_status() { return 7; }; exit_status"); code != 7 {
			t.Fatalf("exit status: %q %d", out, code)
		}
		if _, _, err := g.RunCode("echo ( oops"); !errors.Is(err, console.ErrSyntax) {
			t.Fatalf("syntax error: %v", err)
		}
		long := strings.Repeat("x", 300)
		if got := g.Run("echo " + long); got != long {
			t.Fatalf("long line came back as %q", got)
		}
		// Reconnect, as after a resume: the shell is sitting at a prompt.
		if err := g.Console.Close(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := console.Dial(ctx, g.Instance.SerialPath())
		if err != nil {
			t.Fatal(err)
		}
		g.Console = c
		if got := g.Run("cat /etc/hostname"); got != "cloudlet-guest" {
			t.Fatalf("after reconnect: %q", got)
		}
	})

	t.Run("network-and-httpd", func(t *testing.T) {
		if ip := g.Run("ip -4 -o addr show dev eth0"); !strings.Contains(ip, "10.0.2.") {
			t.Fatalf("eth0: %s", ip)
		}
		g.Run("clwork serve")
		want, err := os.ReadFile(filepath.Join(mustRepoRoot(t), "scripts", "guest", "index.html"))
		if err != nil {
			t.Fatal(err)
		}
		url := "http://127.0.0.1:" + strconv.Itoa(port) + "/index.html"
		var body []byte
		deadline := time.Now().Add(30 * time.Second)
		for {
			body, err = httpGet(url)
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		if string(body) != string(want) {
			t.Fatalf("GET %s: got %q, want %q", url, body, want)
		}
	})

	t.Run("writefiles", func(t *testing.T) {
		const mib, seed = 6, 42
		out := g.Run(fmt.Sprintf("clwork writefiles --mib %d --dir /root/data --seed %d", mib, seed))
		var want []string
		var paths []string
		for _, f := range workload.Files(mib, seed) {
			p := "/root/data/" + f.Name
			paths = append(paths, p)
			want = append(want, workload.Sum(f.Kind, f.Size, seed, f.Index)+"  "+p)
		}
		if out != strings.Join(want, "\n") {
			t.Fatalf("writefiles printed:\n%s\nwant:\n%s", out, strings.Join(want, "\n"))
		}
		if got := g.Run("clwork checksum " + strings.Join(paths, " ")); got != out {
			t.Fatalf("checksum:\n%s\nwant:\n%s", got, out)
		}
		if got := g.Run("sha256sum " + paths[0]); got != want[0] {
			t.Fatalf("busybox sha256sum: %q want %q", got, want[0])
		}
	})

	t.Run("fillmem", func(t *testing.T) {
		const mib, seed = 16, 7
		out := g.Run(fmt.Sprintf("clwork fillmem --mib %d --seed %d", mib, seed))
		p := "/run/mem/" + workload.FillName(seed)
		if want := workload.FillSum(mib, seed) + "  " + p; out != want {
			t.Fatalf("fillmem: %q, want %q", out, want)
		}
		if got := g.Run("stat -c %s " + p); got != strconv.Itoa(mib<<20) {
			t.Fatalf("size %s", got)
		}
		if got := g.Run("stat -f -c %T /run/mem"); got != "tmpfs" {
			t.Fatalf("/run/mem is %q", got)
		}
	})

	t.Run("counter", func(t *testing.T) {
		g.Run("clwork counter --file /run/counter &")
		read := func() int {
			s := g.Run("cat /run/counter 2>/dev/null || echo -1")
			n, err := strconv.Atoi(s)
			if err != nil {
				t.Fatalf("counter %q", s)
			}
			return n
		}
		deadline := time.Now().Add(20 * time.Second)
		a := read()
		for a < 1 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
			a = read()
		}
		time.Sleep(time.Second)
		b := read()
		if a < 1 || b <= a {
			t.Fatalf("counter did not rise: %d then %d", a, b)
		}
		t.Logf("counter %d -> %d over ~1 s", a, b)
		if got := g.Run("pidof clwork"); got == "" {
			t.Fatal("counter process gone")
		}
	})

	g.Stop()
	if sum := fileSHA256(t, k.Rootfs); sum != k.Manifest.SHA256["rootfs.img"] {
		t.Fatalf("base rootfs.img changed: %s", sum)
	}
	if _, err := os.Stat(g.Instance.RunDir()); !os.IsNotExist(err) {
		t.Fatalf("run folder left: %v", err)
	}
}

func httpGet(url string) ([]byte, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func mustRepoRoot(t *testing.T) string {
	t.Helper()
	r, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The plain "pc" machine alias (i440fx, not q35) boots the kit too.
func TestGuestBootMachinePC(t *testing.T) {
	g := Boot(t, Options{Machine: "pc", MemMiB: 128})
	if got := g.Run("cat /proc/meminfo | head -n1"); !strings.HasPrefix(got, "MemTotal:") {
		t.Fatalf("meminfo: %q", got)
	}
	if got := g.Run("ls /sys/bus/pci/drivers/ | grep -c virtio"); got == "0" {
		t.Fatal("no virtio drivers bound")
	}
}
