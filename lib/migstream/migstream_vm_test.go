package migstream

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// These tests run real QEMU (TCG) and migrate a SeaBIOS-only guest through
// Split and Inject.

const qemuBin = "qemu-system-x86_64"

func needQEMU(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath(qemuBin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found under CI=true: %v", qemuBin, err)
		}
		t.Skipf("%s not found: %v", qemuBin, err)
	}
}

// qmp is a tiny raw QMP client.
type qmp struct {
	t    *testing.T
	name string
	conn net.Conn
	r    *bufio.Reader
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startQEMU starts QEMU with args plus a QMP socket in dir and returns a
// connected client; QEMU is killed when the test ends.
func startQEMU(t *testing.T, dir, name string, args ...string) *qmp {
	t.Helper()
	sock := filepath.Join(dir, name+".qmp")
	args = append(args, "-qmp", "unix:"+sock+",server=on,wait=off")
	cmd := exec.Command(qemuBin, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("%s output:\n%s", name, out.String())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	var conn net.Conn
	for {
		var err error
		conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		select {
		case <-done:
			t.Fatalf("%s exited: %s", name, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: QMP socket: %v", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() { conn.Close() })
	q := &qmp{t: t, name: name, conn: conn, r: bufio.NewReader(conn)}
	if _, err := q.read(); err != nil { // greeting
		t.Fatalf("%s: QMP greeting: %v", name, err)
	}
	q.do("qmp_capabilities", nil)
	return q
}

func (q *qmp) read() (map[string]json.RawMessage, error) {
	for {
		q.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
		line, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, err
		}
		var m map[string]json.RawMessage
		if err := json.Unmarshal(line, &m); err != nil {
			return nil, fmt.Errorf("bad QMP line %q: %v", line, err)
		}
		if _, ev := m["event"]; !ev {
			return m, nil
		}
	}
}

// run executes a QMP command and returns its "return" value or error.
func (q *qmp) run(cmd string, args any) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	m, err := q.read()
	if err != nil {
		return nil, err
	}
	if e, ok := m["error"]; ok {
		return nil, fmt.Errorf("%s: %s", cmd, e)
	}
	return m["return"], nil
}

func (q *qmp) do(cmd string, args any) json.RawMessage {
	q.t.Helper()
	r, err := q.run(cmd, args)
	if err != nil {
		q.t.Fatalf("%s: %v", q.name, err)
	}
	return r
}

func (q *qmp) status() string {
	q.t.Helper()
	var s struct{ Status string }
	json.Unmarshal(q.do("query-status", nil), &s)
	return s.Status
}

// waitMigration polls query-migrate until the migration completed.
func (q *qmp) waitMigration() {
	q.t.Helper()
	deadline := time.Now().Add(120 * time.Second)
	for {
		var m struct {
			Status    string
			ErrorDesc string `json:"error-desc"`
		}
		json.Unmarshal(q.do("query-migrate", nil), &m)
		switch m.Status {
		case "completed":
			return
		case "failed", "cancelled":
			q.t.Fatalf("%s: migration %s: %s", q.name, m.Status, m.ErrorDesc)
		}
		if time.Now().After(deadline) {
			q.t.Fatalf("%s: migration still %q", q.name, m.Status)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (q *qmp) ignoreShared() {
	q.do("migrate-set-capabilities", map[string]any{"capabilities": []any{
		map[string]any{"capability": CapIgnoreShared, "state": true}}})
}

// splitFile splits a stream file into a devstate file and the final
// content of each page place.
func splitFile(t *testing.T, stream, devstate string) (*RAMInfo, map[pageKey]Page) {
	t.Helper()
	in, err := os.Open(stream)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var dev bytes.Buffer
	pages := map[pageKey]Page{}
	info, err := Split(in, &dev, PageSinkFunc(func(p Page) error {
		if p.Data != nil {
			p.Data = bytes.Clone(p.Data)
		}
		pages[pageKey{p.Block, p.Offset}] = p
		return nil
	}))
	if err != nil {
		t.Fatalf("Split %s: %v", stream, err)
	}
	if devstate != "" {
		if err := os.WriteFile(devstate, dev.Bytes(), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return info, pages
}

func TestQEMURoundTrip(t *testing.T) {
	needQEMU(t)
	for _, shared := range []bool{false, true} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) { qemuRoundTrip(t, shared) })
	}
}

func qemuRoundTrip(t *testing.T, shared bool) {
	dir, err := os.MkdirTemp("", "migstream")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	args := []string{"-accel", "tcg", "-m", "64", "-nodefaults", "-nographic",
		"-display", "none", "-vga", "none", "-net", "none", "-S"}
	if shared {
		args = append(args,
			"-object", "memory-backend-file,id=mem,size=64M,mem-path="+filepath.Join(dir, "mem")+",share=on",
			"-machine", "pc,memory-backend=mem")
	}
	full := filepath.Join(dir, "full")
	src := startQEMU(t, dir, "source", args...)
	src.do("cont", nil)
	time.Sleep(1500 * time.Millisecond)
	src.do("stop", nil)
	if shared {
		src.ignoreShared()
	}
	src.do("migrate", map[string]any{"uri": "exec:cat > " + full})
	src.waitMigration()

	// (a) Split, and check the pages cover the RAM blocks.
	dev := filepath.Join(dir, "dev")
	info, pages := splitFile(t, full, dev)
	fi, _ := os.Stat(full)
	di, _ := os.Stat(dev)
	t.Logf("stream %d bytes, devstate %d bytes, %d page records + %d zero pages, %d distinct; machine %q caps %v",
		fi.Size(), di.Size(), info.Pages, info.ZeroPages, len(pages), info.Machine, info.Capabilities)
	var total uint64
	for _, b := range info.Blocks {
		t.Logf("block %-22q length 0x%08x addr 0x%x (present %v)", b.ID, b.Length, b.Addr, b.HasAddr)
		total += b.Length
		n := 0
		for k := range pages {
			if k.block == b.ID {
				n++
			}
		}
		switch {
		case shared && b.ID == "mem":
			if n != 0 || !b.HasAddr || b.Addr != 0 {
				t.Errorf("shared block %q: %d pages, address %#x present %v", b.ID, n, b.Addr, b.HasAddr)
			}
		case uint64(n)*PageSize != b.Length:
			t.Errorf("block %q: pages cover %d of %d bytes", b.ID, uint64(n)*PageSize, b.Length)
		}
		if b.HasAddr != shared {
			t.Errorf("block %q: address present %v, want %v", b.ID, b.HasAddr, shared)
		}
		if shared && b.ID == "pc.bios" && b.Addr != 0xfffc0000 {
			t.Errorf("pc.bios at %#x", b.Addr)
		}
	}
	if total != info.TotalBytes || info.IgnoreShared != shared {
		t.Errorf("total %d vs MEM_SIZE %d; ignore-shared %v", total, info.TotalBytes, info.IgnoreShared)
	}
	nonZero := 0
	for _, p := range pages {
		if p.Data != nil && !bytes.Equal(p.Data, make([]byte, PageSize)) {
			nonZero++
		}
	}
	if nonZero == 0 {
		t.Error("no non-zero pages in the stream")
	}

	// (b) Inject the pages back and resume in a second QEMU.
	src.do("quit", nil)
	inj := filepath.Join(dir, "inj")
	list := make([]Page, 0, len(pages))
	for _, p := range pages { // map order: pages injected in random order
		list = append(list, p)
	}
	devIn, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.Create(inj)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := Inject(devIn, out, SlicePages(list)); err != nil {
		t.Fatal(err)
	}
	devIn.Close()
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("injected %d pages in %v", len(list), time.Since(start))

	dst := startQEMU(t, dir, "dest", append(args, "-incoming", "defer")...)
	if shared {
		dst.ignoreShared()
	}
	dst.do("migrate-incoming", map[string]any{"uri": "exec:cat " + inj})
	dst.waitMigration()
	if st := dst.status(); st != "paused" && st != "postmigrate" && st != "prelaunch" {
		t.Fatalf("status after incoming migration: %q", st)
	}

	// The resumed RAM must be what the source had: capture it again.
	again := filepath.Join(dir, "again")
	dst.do("migrate", map[string]any{"uri": "exec:cat > " + again})
	dst.waitMigration()
	_, pages2 := splitFile(t, again, "")
	if len(pages2) != len(pages) {
		t.Errorf("re-captured %d distinct pages, want %d", len(pages2), len(pages))
	}
	diff := 0
	for k, p := range pages {
		q, ok := pages2[k]
		if !ok || !samePage(p, q) {
			diff++
		}
	}
	if diff != 0 {
		t.Errorf("%d pages differ after the round trip", diff)
	}

	dst.do("cont", nil)
	time.Sleep(500 * time.Millisecond)
	if st := dst.status(); st != "running" {
		t.Fatalf("status after cont: %q", st)
	}
}

func samePage(a, b Page) bool {
	fill := func(p Page) []byte {
		if p.Data != nil {
			return p.Data
		}
		return bytes.Repeat([]byte{p.Fill}, PageSize)
	}
	return bytes.Equal(fill(a), fill(b))
}
