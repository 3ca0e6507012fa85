// Command qmpc sends QMP commands to a QEMU monitor socket, for the
// benchmarks' stock-QEMU baseline (what a user does by hand with socat):
//
//	qmpc SOCK '{"execute":"migrate","arguments":{"uri":"exec:cat > F"}}'
//	qmpc --wait-migration SOCK      # until query-migrate says completed
//
// Each command's "return" is printed as a JSON line; an "error" fails.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"time"
)

type conn struct {
	c net.Conn
	r *bufio.Reader
}

func dial(sock string) (*conn, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	q := &conn{c: c, r: bufio.NewReader(c)}
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		return nil, err
	}
	if _, err := q.do(`{"execute":"qmp_capabilities"}`); err != nil {
		return nil, err
	}
	return q, nil
}

// do sends one command and returns its "return", skipping events.
func (q *conn) do(cmd string) (json.RawMessage, error) {
	if _, err := q.c.Write([]byte(cmd + "\n")); err != nil {
		return nil, err
	}
	for {
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var m struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, err
		}
		if m.Event != "" {
			continue
		}
		if m.Error != nil {
			return nil, fmt.Errorf("%s: %s", m.Error.Class, m.Error.Desc)
		}
		return m.Return, nil
	}
}

func main() {
	wait := flag.Bool("wait-migration", false, "poll query-migrate until completed (fail on failed)")
	timeout := flag.Duration("timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: qmpc [--wait-migration] SOCK [JSON...]")
		os.Exit(2)
	}
	var q *conn
	var err error
	deadline := time.Now().Add(*timeout)
	for {
		q, err = dial(flag.Arg(0))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "qmpc:", err)
		os.Exit(1)
	}
	for _, cmd := range flag.Args()[1:] {
		ret, err := q.do(cmd)
		if err != nil {
			fmt.Fprintln(os.Stderr, "qmpc:", err)
			os.Exit(1)
		}
		fmt.Println(string(ret))
	}
	if *wait {
		for {
			ret, err := q.do(`{"execute":"query-migrate"}`)
			if err != nil {
				fmt.Fprintln(os.Stderr, "qmpc:", err)
				os.Exit(1)
			}
			var st struct {
				Status string `json:"status"`
			}
			_ = json.Unmarshal(ret, &st)
			switch st.Status {
			case "completed":
				fmt.Println(string(ret))
				return
			case "failed", "cancelled":
				fmt.Fprintln(os.Stderr, "qmpc: migration", st.Status, string(ret))
				os.Exit(1)
			}
			if time.Now().After(deadline) {
				fmt.Fprintln(os.Stderr, "qmpc: timeout, migration", st.Status)
				os.Exit(1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
