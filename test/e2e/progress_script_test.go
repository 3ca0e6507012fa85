package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/guesttest"

	"github.com/creack/pty"
)

// TestCloudletProgress drives scripts/cloudlet with stderr on a
// pseudo-terminal and on a pipe. On the terminal every phase ends with one
// line "cloudlet: PHASE: ... (N.NNs)" and the transfer's line (bytes, rate,
// time left) is redrawn in place, for local, TCP (through a rate-limited
// link) and ssh synthesis; on a pipe the plain lines are what they were,
// with no escape codes, and --progress adds the transfer's line as plain
// lines; --quiet on a terminal gives the plain lines. stdout is the same
// result either way, and nothing the script started keeps the terminal.
func TestCloudletProgress(t *testing.T) {
	e := newEnv(t)
	script := filepath.Join(repoRoot, "scripts", "cloudlet")

	// base, stderr a pipe: the plain lines, nothing drawn
	baseDir := e.path("base")
	out, stderr, code := e.run(4*time.Minute, nil, "bash", script, "base", e.kit.Rootfs, "--name", "prog", "--out", baseDir, "--cmd", "sync")
	if code != 0 {
		t.Fatalf("cloudlet base: exit %d\n%s", code, stderr)
	}
	baseID := strings.TrimSpace(out)
	if len(baseID) != 64 || out != baseID+"\n" {
		t.Fatalf("base printed %q", out)
	}
	plainOnly(t, "base on a pipe", stderr)
	for _, want := range []string{"cloudlet: + vm-resume launch ", "cloudlet:   launched ", "cloudlet: + vm-console ", "cloudlet: + vm-capture --run ", "cloudlet:   base " + baseID} {
		if !strings.Contains(stderr, want) {
			t.Errorf("base on a pipe: no %q in\n%s", want, stderr)
		}
	}

	// overlay on a terminal: one line per phase
	ovl := e.path("app.overlay")
	port := guesttest.FreePort(t)
	out, screen := e.onTerminal(4*time.Minute, script, "overlay", baseDir, "--name", "app", "--out", ovl,
		"--forward", fmt.Sprintf("tcp:%d:80", port), "--ready-port", "80",
		"--cmd", "echo progress > /www/index.html && clwork serve",
		"--cmd", "clwork fillmem --mib 8 --seed 5")
	st, err := os.Stat(ovl)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%s\t%d\n", ovl, st.Size()); out != want {
		t.Errorf("overlay on a terminal printed %q, want %q", out, want)
	}
	lines := phaseLines(t, "overlay", screen, "resume", "customize", "capture", "diff", "pack")
	if !strings.Contains(lines["customize"], "2 commands on the guest console, guest ready") || !strings.Contains(lines["pack"], ovl) {
		t.Errorf("overlay phase lines: %q", lines)
	}
	if !regexp.MustCompile(`\rcloudlet: (resume|customize|capture \| diff \| pack) \.\.\. [0-9]+\.[0-9]s`).MatchString(screen) {
		t.Errorf("overlay on a terminal: no live line redrawn:\n%q", screen)
	}
	if strings.Contains(screen, "cloudlet: + ") {
		t.Errorf("overlay on a terminal shows the plain lines:\n%s", visible(screen))
	}
	t.Logf("overlay: %d bytes; the terminal:\n%s", st.Size(), indent(visible(screen)))

	// local synthesis on a terminal
	t.Run("local", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out, screen := e.onTerminal(2*time.Minute, script, "synthesis", ovl, "--forward", "tcp:0:80", "--run-dir", e.path("run", "local"))
		in := parseInstance(t, strings.TrimSpace(out))
		defer e.stop(in)
		if strings.Count(out, "\n") != 1 || strings.ContainsAny(out, "\r\033") {
			t.Errorf("stdout is not the instance's JSON line: %q", out)
		}
		lines := phaseLines(t, "local synthesis", screen, "transfer", "apply", "resume")
		if !strings.Contains(lines["resume"], "guest running") || !strings.Contains(lines["apply"], "diff stream") {
			t.Errorf("phase lines: %q", lines)
		}
		t.Logf("the terminal:\n%s", indent(visible(screen)))
	})

	// TCP through a slow link: the transfer's line is redrawn as it goes
	lport := guesttest.FreePort(t)
	stopListener := startListener(t, e, lport)
	defer stopListener()
	slow := slowLink(t, fmt.Sprintf("127.0.0.1:%d", lport), 1_000_000)
	t.Run("tcp-slow-link", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out, screen := e.onTerminal(2*time.Minute, script, "synthesis", ovl, "--tcp", slow)
		in := parseInstance(t, strings.TrimSpace(out))
		defer e.stop(in)
		lines := phaseLines(t, "tcp synthesis", screen, "transfer", "apply, resume on "+slow)
		if !strings.Contains(lines["transfer"], " to "+slow) {
			t.Errorf("transfer line %q", lines["transfer"])
		}
		live := regexp.MustCompile(`\rcloudlet: transfer: [0-9.]+ MB of [0-9.]+ MB \([0-9]+%\), [0-9.]+ MB/s, [0-9]+ s left\x1b\[K`).FindAllString(screen, -1)
		if len(live) < 2 {
			t.Errorf("the transfer's line was drawn %d times with a rate and time left:\n%q", len(live), screen)
		}
		t.Logf("the terminal:\n%s", indent(visible(screen)))
	})

	// the same through a pipe with --progress: plain lines every 2 s
	t.Run("tcp-pipe-progress", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out, stderr, code := e.run(2*time.Minute, nil, "bash", script, "synthesis", ovl, "--tcp", slow, "--progress")
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		in := parseInstance(t, strings.TrimSpace(out))
		defer e.stop(in)
		plainOnly(t, "--progress on a pipe", stderr)
		if !regexp.MustCompile(`(?m)^cloudlet: transfer: [0-9.]+ MB of [0-9.]+ MB \([0-9]+%\), [0-9.]+ MB/s, [0-9]+ s left$`).MatchString(stderr) {
			t.Errorf("--progress on a pipe: no transfer line:\n%s", stderr)
		}
		for _, want := range []string{"cloudlet: + socat -t 120 - TCP:" + slow, "cloudlet:   synthesized in ", "cloudlet:   forwards: "} {
			if !strings.Contains(stderr, want) {
				t.Errorf("--progress on a pipe: no %q in\n%s", want, stderr)
			}
		}
		t.Logf("stderr:\n%s", indent(stderr))
	})

	// ssh on a terminal
	t.Run("ssh", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		sshOpts := startSSHD(t, e.path("ssh-progress"))
		out, screen := e.onTerminal(2*time.Minute, script, "synthesis", ovl, "--remote", "root@127.0.0.1", "--ssh-opts", sshOpts,
			"--remote-bin", binDir, "--remote-catalog", e.path("catalog.json"), "--run-dir", e.path("run", "ssh"))
		in := parseInstance(t, strings.TrimSpace(out))
		defer e.stop(in)
		phaseLines(t, "ssh synthesis", screen, "transfer", "apply, resume on root@127.0.0.1")
		t.Logf("the terminal:\n%s", indent(visible(screen)))
	})

	// --quiet on a terminal: the plain lines; a pipe without --progress:
	// no transfer line
	t.Run("quiet", func(t *testing.T) {
		e := &env{t: t, dir: e.dir, kit: e.kit}
		out, screen := e.onTerminal(2*time.Minute, script, "synthesis", ovl, "--forward", "tcp:0:80", "--quiet")
		in := parseInstance(t, strings.TrimSpace(out))
		e.stop(in)
		plainOnly(t, "--quiet on a terminal", screen)
		if !strings.Contains(screen, "cloudlet: + overlay-apply < ") || !strings.Contains(screen, "cloudlet:   synthesized in ") {
			t.Errorf("--quiet on a terminal: not the plain lines:\n%s", screen)
		}
		out, stderr, code := e.run(2*time.Minute, nil, "bash", script, "synthesis", ovl, "--tcp", fmt.Sprintf("127.0.0.1:%d", lport))
		if code != 0 {
			t.Fatalf("exit %d\n%s", code, stderr)
		}
		e.stop(parseInstance(t, strings.TrimSpace(out)))
		plainOnly(t, "a pipe", stderr)
		if strings.Contains(stderr, "transfer:") {
			t.Errorf("a pipe without --progress shows the transfer:\n%s", stderr)
		}
	})
}

// onTerminal runs a command with stderr on a new pseudo-terminal (stdout a
// pipe) and returns stdout and what the terminal received. It fails the
// test when the command fails, or when something it started still holds
// the terminal after it ended.
func (e *env) onTerminal(timeout time.Duration, script string, args ...string) (string, string) {
	e.t.Helper()
	ptmx, tty, err := pty.Open()
	if err != nil {
		e.t.Fatal(err)
	}
	defer ptmx.Close()
	if err := pty.Setsize(ptmx, &pty.Winsize{Rows: 40, Cols: 160}); err != nil {
		e.t.Fatal(err)
	}
	var screen bytes.Buffer
	read := make(chan struct{})
	go func() { io.Copy(&screen, ptmx); close(read) }()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{script}, args...)...)
	cmd.Env = e.environ()
	cmd.Dir = e.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, tty
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	tty.Close()
	select {
	case <-read:
	case <-time.After(5 * time.Second):
		e.t.Errorf("cloudlet %s: the terminal is still open after the script ended (a process kept it)", args[0])
		ptmx.Close()
		<-read
	}
	if err != nil {
		e.t.Fatalf("cloudlet %s on a terminal: %v\n%s", strings.Join(args, " "), err, visible(screen.String()))
	}
	return out.String(), screen.String()
}

// visible is what a terminal shows of raw output: per line, what follows
// the last carriage return, without erase-line codes.
func visible(raw string) string {
	var b strings.Builder
	for _, l := range strings.Split(raw, "\n") {
		l = strings.TrimSuffix(l, "\r")
		if i := strings.LastIndexByte(l, '\r'); i >= 0 {
			l = l[i+1:]
		}
		b.WriteString(strings.ReplaceAll(l, "\x1b[K", ""))
		b.WriteByte('\n')
	}
	return strings.TrimRight(b.String(), "\n")
}

var phaseLine = regexp.MustCompile(`^cloudlet: ([a-z, ]+?(?: on \S+)?): (.*) \(([0-9]+\.[0-9]{2})s\)$`)

// phaseLines checks that the terminal shows the phases' end lines, in
// order, each once, and returns their text by phase.
func phaseLines(t *testing.T, what, screen string, phases ...string) map[string]string {
	t.Helper()
	got := map[string]string{}
	var order []string
	for _, l := range strings.Split(visible(screen), "\n") {
		m := phaseLine.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if _, dup := got[m[1]]; dup {
			t.Errorf("%s: phase %q ended twice", what, m[1])
		}
		got[m[1]] = m[2]
		order = append(order, m[1])
		if s, err := strconv.ParseFloat(m[3], 64); err != nil || s < 0 {
			t.Errorf("%s: phase %q: time %q", what, m[1], m[3])
		}
	}
	if strings.Join(order, "|") != strings.Join(phases, "|") {
		t.Errorf("%s: phases %q on the terminal, want %q:\n%s", what, order, phases, visible(screen))
	}
	return got
}

// plainOnly: no drawing (carriage returns, escape codes) in stderr.
func plainOnly(t *testing.T, what, stderr string) {
	t.Helper()
	s := strings.ReplaceAll(stderr, "\r\n", "\n") // (a terminal's newlines)
	if strings.ContainsAny(s, "\r\x1b") {
		t.Errorf("%s: drawn lines:\n%q", what, stderr)
	}
	if regexp.MustCompile(`(?m)^cloudlet: [a-z, ]+: .* \([0-9]+\.[0-9]{2}s\)$`).MatchString(s) {
		t.Errorf("%s: phase lines:\n%s", what, s)
	}
}

// slowLink relays TCP connections to target at about rate bytes per second
// in the upload direction (a small receive buffer, so the kernel does not
// take it all at once), keeping the half-close the listener relies on.
func slowLink(t testing.TB, target string, rate int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.(*net.TCPConn).SetReadBuffer(32 << 10)
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				back := make(chan struct{})
				go func() {
					io.Copy(c, u)
					c.(*net.TCPConn).CloseWrite()
					close(back)
				}()
				buf := make([]byte, 16<<10)
				start, n := time.Now(), 0
				for {
					k, err := c.Read(buf)
					if k > 0 {
						if _, werr := u.Write(buf[:k]); werr != nil {
							return
						}
						n += k
						if d := time.Duration(float64(n)/float64(rate)*float64(time.Second)) - time.Since(start); d > 0 {
							time.Sleep(d)
						}
					}
					if err != nil {
						break
					}
				}
				u.(*net.TCPConn).CloseWrite()
				<-back
			}()
		}
	}()
	return ln.Addr().String()
}
