package ready

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"cloudlet/lib/console"
)

// serve accepts connections on a loopback port and hands each to fn.
func serve(t *testing.T, fn func(net.Conn)) string {
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
			go fn(c)
		}
	}()
	return ln.Addr().String()
}

func TestPort(t *testing.T) {
	defer func(w time.Duration) { ProbeWait = w }(ProbeWait)
	ProbeWait = 200 * time.Millisecond
	quiet := serve(t, func(c net.Conn) { time.Sleep(2 * time.Second); c.Close() })
	banner := serve(t, func(c net.Conn) { c.Write([]byte("SSH-2.0-x\r\n")); time.Sleep(time.Second); c.Close() })
	// What QEMU's user-mode forwarder does while no guest server listens.
	refused := serve(t, func(c net.Conn) { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, addr := range []string{quiet, banner} {
		if err := Port(ctx, addr); err != nil {
			t.Errorf("Port(%s): %v", addr, err)
		}
	}
	short, cancel2 := context.WithTimeout(context.Background(), time.Second)
	defer cancel2()
	err := Port(short, refused)
	if err == nil || !strings.Contains(err.Error(), "closed at once") {
		t.Errorf("Port on a forwarder with no server = %v; want a timeout saying the connection closed at once", err)
	}
}

// fakeSerial serves a unix socket that writes lines, as QEMU's serial
// chardev does, and returns its path.
func fakeSerial(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "serial.sock")
	ln, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for _, l := range lines {
			time.Sleep(20 * time.Millisecond)
			c.Write([]byte(l + "\r\n"))
		}
		time.Sleep(5 * time.Second)
	}()
	return p
}

func TestConsole(t *testing.T) {
	re := regexp.MustCompile(`login:`)
	for _, tc := range []struct {
		name  string
		log   string // already in serial.log
		lines []string
		want  string // "" = ready
	}{
		{"live", "", []string{"booting", "myhost login: "}, ""},
		{"logged before", "Debian GNU/Linux 12 myhost ttyS0\nmyhost login: \n", nil, ""},
		{"panic", "", []string{"Kernel panic - not syncing: VFS"}, "kernel panicked"},
		{"never", "", []string{"booting"}, "never printed a line matching /login:/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logPath := filepath.Join(t.TempDir(), "serial.log")
			if err := os.WriteFile(logPath, []byte(tc.log), 0o644); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			con, err := console.Dial(ctx, fakeSerial(t, tc.lines...))
			if err != nil {
				t.Fatal(err)
			}
			defer con.Close()
			err = Console(ctx, con, logPath, re)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("not ready: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("err = %v; want %q", err, tc.want)
			}
		})
	}
}
