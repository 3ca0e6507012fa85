package service

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// fake is a Runner that records what it was asked and can block.
type fake struct {
	mu      sync.Mutex
	got     []Command
	overlay []byte
	block   chan struct{} // Synthesize waits on it (or its ctx)
	ctxErr  error
}

func (f *fake) Synthesize(ctx context.Context, c Client, cmd Command, in io.Reader, stdout, stderr io.Writer) error {
	b, err := io.ReadAll(in)
	f.mu.Lock()
	f.got = append(f.got, cmd)
	f.overlay = b
	f.mu.Unlock()
	if err != nil {
		return err
	}
	if f.block != nil {
		select {
		case <-f.block:
		case <-ctx.Done():
			f.mu.Lock()
			f.ctxErr = ctx.Err()
			f.mu.Unlock()
			return ctx.Err()
		}
	}
	fmt.Fprintf(stdout, "{\"name\":%q,\"client\":%q,\"bytes\":%d}\n", cmd.Name, c.Name, len(b))
	return nil
}

func (f *fake) List(ctx context.Context, c Client, stdout io.Writer) error {
	fmt.Fprintf(stdout, "{\"client\":%q}\n", c.Name)
	return nil
}

func (f *fake) Stop(ctx context.Context, c Client, name string, stdout, stderr io.Writer) error {
	return &StatusError{1, fmt.Errorf("no instance %s", name)}
}

type testServer struct {
	addr    string
	srv     *Server
	clients string
	keys    map[string]ssh.Signer
	run     *fake
}

func newKey(t *testing.T) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func parseSize(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) }

// start serves a Server with clients alice and bob (options per name).
func start(t *testing.T, lim Limits, opts map[string]string, tune func(*Config)) *testServer {
	t.Helper()
	ts := &testServer{keys: map[string]ssh.Signer{}, run: &fake{}}
	var lines []string
	for _, n := range []string{"alice", "bob"} {
		k := newKey(t)
		ts.keys[n] = k
		line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey()))) + " " + n
		if o := opts[n]; o != "" {
			line = o + " " + line
		}
		lines = append(lines, line)
	}
	ts.clients = filepath.Join(t.TempDir(), "clients")
	if err := os.WriteFile(ts.clients, []byte("# test clients\n"+strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		HostKey: newKey(t),
		Clients: func() (Clients, error) { return LoadClients(ts.clients, lim, parseSize) },
		Runner:  ts.run,
	}
	if tune != nil {
		tune(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ts
}

func (ts *testServer) dial(t *testing.T, key ssh.Signer) (*ssh.Client, error) {
	return ssh.Dial("tcp", ts.addr, &ssh.ClientConfig{
		User: "cloudlet", Auth: []ssh.AuthMethod{ssh.PublicKeys(key)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second,
	})
}

// cmd runs one command as name and returns stdout, stderr and the exit status.
func (ts *testServer) cmd(t *testing.T, name, line string, stdin []byte) (string, string, int) {
	t.Helper()
	c, err := ts.dial(t, ts.keys[name])
	if err != nil {
		t.Fatalf("%s: dial: %v", name, err)
	}
	defer c.Close()
	s, err := c.NewSession()
	if err != nil {
		t.Fatalf("%s: session: %v", name, err)
	}
	var out, errb bytes.Buffer
	s.Stdout, s.Stderr = &out, &errb
	if stdin != nil {
		s.Stdin = bytes.NewReader(stdin)
	}
	status := 0
	if err := s.Run(line); err != nil {
		var ee *ssh.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s %q: %v", name, line, err)
		}
		status = ee.ExitStatus()
	}
	return out.String(), errb.String(), status
}

func TestAuthAndCommands(t *testing.T) {
	ts := start(t, Limits{}, nil, nil)
	out, _, st := ts.cmd(t, "alice", "synthesis --name app --forward 80 --forward tcp:0:22", []byte("OVERLAY"))
	if st != 0 || !strings.Contains(out, `"client":"alice"`) || !strings.Contains(out, `"bytes":7`) {
		t.Fatalf("synthesis: status %d, out %q", st, out)
	}
	if got := ts.run.got[0]; got.Name != "app" || fmt.Sprint(got.GuestPorts) != "[80 22]" || string(ts.run.overlay) != "OVERLAY" {
		t.Errorf("runner got %+v, overlay %q", got, ts.run.overlay)
	}
	if out, _, st := ts.cmd(t, "bob", "list", nil); st != 0 || out != "{\"client\":\"bob\"}\n" {
		t.Errorf("list as bob: %d %q", st, out)
	}
	// Refused commands: exit 2, the reason on stderr and in-band on stdout.
	for _, line := range []string{"rm -rf /", "synthesis --forward tcp:0.0.0.0:8080:80", "synthesis --net host", "stop ../x", "list extra", ""} {
		out, errs, st := ts.cmd(t, "alice", line, nil)
		var j struct {
			Error  string
			Status int
		}
		if st != StatusUsage || json.Unmarshal([]byte(out), &j) != nil || j.Status != StatusUsage || !strings.Contains(errs, "cloudletd:") {
			t.Errorf("%q: status %d, stdout %q, stderr %q", line, st, out, errs)
		}
	}
	if _, _, st := ts.cmd(t, "alice", "stop nosuch", nil); st != 1 {
		t.Errorf("stop of an unknown instance: status %d", st)
	}
	// A key not in the file gets nowhere.
	if _, err := ts.dial(t, newKey(t)); err == nil {
		t.Fatal("an unknown key was let in")
	}
	// The file is read at each connection: bob removed is refused.
	b, _ := os.ReadFile(ts.clients)
	var keep []string
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.HasSuffix(l, " bob") {
			keep = append(keep, l)
		}
	}
	os.WriteFile(ts.clients, []byte(strings.Join(keep, "\n")), 0o600)
	if _, err := ts.dial(t, ts.keys["bob"]); err == nil {
		t.Error("bob, removed from the clients file, was let in")
	}
}

func TestClientsFile(t *testing.T) {
	k := newKey(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))
	dir := t.TempDir()
	for _, tc := range []struct{ text, want string }{
		{"instances=1,uploads=3,max-bytes=100 " + line + " carol", ""},
		{line + " bad/name", "the client's name"},
		{line, "the client's name"},
		{"nosuch=1 " + line + " carol", "unknown option"},
		{"ssh-ed25519 AAAAnotbase64 carol", "line 1"},
	} {
		p := filepath.Join(dir, "c")
		os.WriteFile(p, []byte(tc.text+"\n"), 0o600)
		cs, err := LoadClients(p, Limits{Instances: 4, Uploads: 2}, parseSize)
		if tc.want == "" {
			c := cs[string(k.PublicKey().Marshal())]
			if err != nil || c.Name != "carol" || c.Limits.Instances != 1 || c.Limits.Uploads != 3 || c.Limits.MaxBytes != 100 {
				t.Errorf("%q: %+v, %v", tc.text, c, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err %v, want %q", tc.text, err, tc.want)
		}
	}
}

func TestLimits(t *testing.T) {
	ts := start(t, Limits{Uploads: 1, Idle: 500 * time.Millisecond}, map[string]string{"bob": "max-bytes=1000,conns=1"}, nil)
	ts.run.block = make(chan struct{})

	// alice's first synthesis holds her one upload; a second is refused (75).
	c, err := ts.dial(t, ts.keys["alice"])
	if err != nil {
		t.Fatal(err)
	}
	s1, _ := c.NewSession()
	s1.Stdin = strings.NewReader("first")
	if err := s1.Start("synthesis"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { ts.run.mu.Lock(); defer ts.run.mu.Unlock(); return len(ts.run.got) == 1 })
	if out, _, st := ts.cmd(t, "alice", "synthesis", []byte("second")); st != StatusRefused || !strings.Contains(out, "in progress") {
		t.Errorf("second upload: status %d, %q", st, out)
	}
	// bob has his own count, and one connection at most.
	b1, err := ts.dial(t, ts.keys["bob"])
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return ts.clientConns("bob") == 1 })
	if c2, err := ts.dial(t, ts.keys["bob"]); err == nil {
		if _, err := c2.NewSession(); err == nil {
			t.Error("bob's second connection was served (conns=1)")
		}
		c2.Close()
	}
	b1.Close()
	close(ts.run.block)
	if err := s1.Wait(); err != nil {
		t.Errorf("first synthesis: %v", err)
	}
	c.Close()
	waitFor(t, func() bool { return ts.srv.Stats().Conns == 0 }) // every release done

	// bob's overlay over max-bytes: refused, and the runner's run cancelled.
	ts.run.block = make(chan struct{})
	out, _, st := ts.cmd(t, "bob", "synthesis", bytes.Repeat([]byte("x"), 5000))
	if st != StatusRefused || !strings.Contains(out, "over 1000 bytes") {
		t.Errorf("big overlay: status %d, %q", st, out)
	}

	// Idle during the upload: the connection is closed and the run cancelled.
	c, err = ts.dial(t, ts.keys["alice"])
	if err != nil {
		t.Fatal(err)
	}
	s2, _ := c.NewSession()
	pr, pw := io.Pipe()
	defer pw.Close()
	s2.Stdin = pr
	t0 := time.Now()
	s2.Start("synthesis")
	go pw.Write([]byte("a bit"))
	err = s2.Wait()
	if err == nil || time.Since(t0) > 5*time.Second {
		t.Errorf("an idle upload: %v after %v", err, time.Since(t0))
	}
	c.Close()

	// Idle before any command.
	c, err = ts.dial(t, ts.keys["alice"])
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Error("a connection with no command stayed open past --idle")
	}
}

func TestTotal(t *testing.T) {
	ts := start(t, Limits{Total: 300 * time.Millisecond}, nil, nil)
	ts.run.block = make(chan struct{})
	out, _, st := ts.cmd(t, "alice", "synthesis", []byte("x"))
	if st != StatusRefused || !strings.Contains(out, "longer than") {
		t.Errorf("status %d, %q", st, out)
	}
	if ts.run.ctxErr == nil {
		t.Error("the runner's context was not cancelled")
	}
}

// A thousand connections that never say a word cost little, let real
// clients in meanwhile, start no process, and are gone after the handshake
// timeout; more than the per-address cap from one address are closed at
// once.
func TestIdleConnections(t *testing.T) {
	ts := start(t, Limits{}, nil, func(c *Config) {
		c.HandshakeTimeout = 3 * time.Second
		c.MaxStartups, c.MaxStartupsPerIP, c.MaxConns = 1024, 64, 4096
	})
	runtime.GC()
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 1000 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i/50))}}
		c, err := d.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	waitFor(t, func() bool { return ts.srv.Stats().Startups == 1000 })
	runtime.GC()
	runtime.ReadMemStats(&m1)
	grew := int64(m1.HeapInuse) - int64(m0.HeapInuse)
	t.Logf("1000 idle connections: heap +%.1f MiB, %d goroutines", float64(grew)/(1<<20), runtime.NumGoroutine())
	if grew > 64<<20 {
		t.Errorf("1000 idle connections took %d MiB of heap", grew>>20)
	}
	if out, _, st := ts.cmd(t, "alice", "list", nil); st != 0 || !strings.Contains(out, "alice") {
		t.Errorf("a real client among 1000 idle ones: %d %q", st, out)
	}
	// One address over its cap: 50 are there from 127.0.0.2; 30 more are
	// each let in (they get the server's version line), and the oldest 16
	// of that address are closed to keep it at 64.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	for range 30 {
		c, err := d.Dial("tcp", ts.addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if n, err := c.Read(make([]byte, 64)); n == 0 {
			t.Fatalf("a new connection over the per-address cap got no version line: %v", err)
		}
	}
	ts.srv.mu.Lock()
	perAddr, held := ts.srv.pre["127.0.0.2"], ts.srv.npre
	ts.srv.mu.Unlock()
	if perAddr != 64 || held != 1014 {
		t.Errorf("after 30 more from 127.0.0.2 (cap 64, 50 there): %d from it and %d in all wait; want 64 and 1014", perAddr, held)
	}
	for _, c := range conns[:16] { // the oldest of 127.0.0.2 were closed
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("an evicted connection: %v (want EOF)", err)
			break
		}
	}
	// Over the global cap, new connections still get in: the oldest go.
	ts.srv.mu.Lock()
	ts.srv.cfg.MaxStartups = 1014
	ts.srv.mu.Unlock()
	if out, _, st := ts.cmd(t, "alice", "list", nil); st != 0 || !strings.Contains(out, "alice") {
		t.Errorf("a real client at the global startup cap: %d %q", st, out)
	}
	// After the handshake timeout, none is left.
	waitFor(t, func() bool { return ts.srv.Stats().Conns == 0 })
}

// clientConns is how many connections of a client the server counts.
func (ts *testServer) clientConns(name string) int {
	ts.srv.mu.Lock()
	defer ts.srv.mu.Unlock()
	if st := ts.srv.per[name]; st != nil {
		return st.conns
	}
	return 0
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("timed out")
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"synthesis --forward 80 --name a", "list", "stop x", "synthesis --forward=tcp:0:22 --early-start", "help", "synthesis --forward"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseCommand(line)
		if err != nil {
			return
		}
		if c.Name != "" && !instanceName.MatchString(c.Name) {
			t.Errorf("%q: name %q", line, c.Name)
		}
		for _, p := range c.GuestPorts {
			if p < 1 || p > 65535 {
				t.Errorf("%q: port %d", line, p)
			}
		}
		if len(c.GuestPorts) > maxForwards || (c.Verb == "stop") != (c.Name != "" && c.Verb != "synthesis") && c.Verb != "synthesis" {
			t.Errorf("%q: %+v", line, c)
		}
	})
}

// FuzzClientsFile: any clients file parses or is refused with a line
// number; every client it gives has a valid name and non-negative limits.
func FuzzClientsFile(f *testing.F) {
	k, _ := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.PublicKey())))
	f.Add(line + " alice\n")
	f.Add("instances=2,max-bytes=10 " + line + " bob\n# comment\n\n")
	f.Add("conns=x " + line + " c\n")
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, text string) {
		p := filepath.Join(dir, "clients")
		os.WriteFile(p, []byte(text), 0o600)
		cs, err := LoadClients(p, Limits{Instances: 1}, parseSize)
		if err != nil {
			if !strings.Contains(err.Error(), "clients file") {
				t.Errorf("error without the file named: %v", err)
			}
			return
		}
		for _, c := range cs {
			if !clientName.MatchString(c.Name) || c.Limits.Instances < 0 || c.Limits.Uploads < 0 || c.Limits.Conns < 0 || c.Limits.MaxBytes < 0 {
				t.Errorf("%q gave %+v", text, c)
			}
		}
	})
}

// FuzzPreAuth: whatever a stranger sends before authenticating, the server
// ends the connection within its handshake timeout and holds nothing after.
func FuzzPreAuth(f *testing.F) {
	f.Add([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add(append([]byte("SSH-2.0-x\r\n"), bytes.Repeat([]byte{0xff}, 300)...))
	srv, err := New(Config{HostKey: mustKey(), Clients: func() (Clients, error) { return Clients{}, nil }, Runner: &fake{},
		HandshakeTimeout: 200 * time.Millisecond})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		st, _ := srv.admit(a, "pipe")
		go func() { srv.handle(context.Background(), a, st); close(done) }()
		go io.Copy(io.Discard, b)
		b.SetWriteDeadline(time.Now().Add(time.Second))
		b.Write(in)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the server held a stranger's connection past its handshake timeout")
		}
		b.Close()
		if s := srv.Stats(); s.Conns != 0 || s.Startups != 0 {
			t.Fatalf("after the connection: %+v", s)
		}
	})
}

func mustKey() ssh.Signer {
	k, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)))
	if err != nil {
		panic(err)
	}
	return k
}
