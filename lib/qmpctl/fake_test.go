package qmpctl

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
)

// request is a command as the fake server sees it.
type request struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeConn is the server side of one QMP connection.
type fakeConn struct {
	conn net.Conn
	mu   sync.Mutex
}

// send writes one line.
func (f *fakeConn) send(line string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conn.Write([]byte(line + "\r\n"))
}

// reply answers req with a return value (JSON text).
func (f *fakeConn) reply(req request, ret string) {
	id := ""
	if len(req.ID) > 0 {
		id = `, "id": ` + string(req.ID)
	}
	f.send(`{"return": ` + ret + id + `}`)
}

// fail answers req with a QMP error.
func (f *fakeConn) fail(req request, class, desc string) {
	d, _ := json.Marshal(desc)
	f.send(fmt.Sprintf(`{"id": %s, "error": {"class": %q, "desc": %s}}`, req.ID, class, d))
}

// event sends an event.
func (f *fakeConn) event(name, data string) {
	f.send(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "` + name + `", "data": ` + data + `}`)
}

// fakeServer serves QMP on a unix socket in t.TempDir(). handle is called
// for each command after qmp_capabilities and may answer, not answer, or
// close the connection.
type fakeServer struct {
	path string
	ln   net.Listener
}

func newFakeServer(t *testing.T, handle func(f *fakeConn, req request)) *fakeServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeServer{path: path, ln: ln}
	t.Cleanup(func() { ln.Close() })
	go s.serve(handle)
	return s
}

func (s *fakeServer) serve(handle func(f *fakeConn, req request)) {
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		go serveConn(conn, handle)
	}
}

func serveConn(conn net.Conn, handle func(f *fakeConn, req request)) {
	defer conn.Close()
	f := &fakeConn{conn: conn}
	f.send(`{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`)
	sc := bufio.NewScanner(conn)
	negotiated := false
	for sc.Scan() {
		var req request
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			f.send(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`)
			continue
		}
		if req.Execute == "qmp_capabilities" {
			negotiated = true
			f.reply(req, "{}")
			continue
		}
		if !negotiated {
			f.fail(req, "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
			continue
		}
		handle(f, req)
	}
}
