package console

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// fakeShell emulates the guest's serial shell: it echoes typed lines like a
// terminal and runs the marker-wrapped command lines Run sends.
func fakeShell(t *testing.T, l net.Listener, outputs map[string]string, codes map[string]int) {
	re := regexp.MustCompile(`^echo @@CLB''EGIN-(\w+)@@; \{ (.*?);? \} </dev/null; echo @@CLE''ND-(\w+)-\$\?@@$`)
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn) {
				defer conn.Close()
				fmt.Fprint(conn, "# ")
				r := bufio.NewReader(conn)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.TrimRight(line, "\n")
					fmt.Fprintf(conn, "%s\r\n", line) // terminal echo
					if m := re.FindStringSubmatch(line); m != nil {
						fmt.Fprintf(conn, "@@CLBEGIN-%s@@\r\n", m[1])
						// Split writes to exercise partial reads.
						out := outputs[m[2]]
						for i := 0; i < len(out); i += 3 {
							j := min(i+3, len(out))
							fmt.Fprint(conn, out[i:j])
							time.Sleep(time.Millisecond)
						}
						fmt.Fprintf(conn, "@@CLEND-%s-%d@@\r\n", m[3], codes[m[2]])
					}
					fmt.Fprint(conn, "# \x1b[6n")
				}
			}(conn)
		}
	}()
}

func TestRunParsesMarkedOutput(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Dial retries until the socket exists.
	done := make(chan *Console, 1)
	go func() {
		c, err := Dial(ctx, sock)
		if err != nil {
			t.Error(err)
		}
		done <- c
	}()
	time.Sleep(100 * time.Millisecond)
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fakeShell(t, l, map[string]string{
		"uname -r":       "6.1.0-test\r\n",
		"cat f":          "line1\r\nline2\r\n@@CLBEGIN-fake@@\r\n",
		"printf x":       "x",
		"sleep 1 &":      "",
		"echo CLOUDLET!": "CLOUDLET!\r\n",
	}, map[string]int{"cat f": 3})
	c := <-done
	if c == nil {
		t.FailNow()
	}
	defer c.Close()
	if err := c.WaitFor(ctx, "# "); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cmd, out string
		code     int
	}{
		{"uname -r", "6.1.0-test", 0},
		{"cat f", "line1\nline2\n@@CLBEGIN-fake@@", 3},
		{"printf x", "x", 0},
		{"sleep 1 &", "", 0},
		{"  echo CLOUDLET!  ", "CLOUDLET!", 0},
	} {
		out, code, err := c.Run(ctx, tc.cmd)
		if err != nil || out != tc.out || code != tc.code {
			t.Errorf("Run(%q) = %q, %d, %v; want %q, %d", tc.cmd, out, code, err, tc.out, tc.code)
		}
	}
	if _, _, err := c.Run(ctx, "a\nb"); err == nil {
		t.Error("multi-line command accepted")
	}
	short, cancel2 := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel2()
	if err := c.WaitFor(short, "never printed"); err == nil {
		t.Error("WaitFor found a string never printed")
	}
	if !strings.Contains(c.Output(), "6.1.0-test\n") {
		t.Errorf("Output lacks normalized text: %q", c.Output())
	}
}
