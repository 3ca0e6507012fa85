package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// Runner carries out a client's commands. Output for the client goes to
// stdout (the result) and stderr (messages); a returned error ends the
// command with a non-zero exit status.
type Runner interface {
	Synthesize(ctx context.Context, c Client, cmd Command, overlay io.Reader, stdout, stderr io.Writer) error
	List(ctx context.Context, c Client, stdout io.Writer) error
	Stop(ctx context.Context, c Client, name string, stdout, stderr io.Writer) error
}

// Config is a Server's settings.
type Config struct {
	HostKey ssh.Signer
	// Clients returns who may connect; called at each authentication, so
	// an edited clients file applies to the next connection.
	Clients func() (Clients, error)
	Runner  Runner
	Log     *slog.Logger

	// Before authentication: each connection has HandshakeTimeout to
	// finish its handshake; at most MaxStartups of them wait at once, and
	// MaxStartupsPerIP from one address. A new connection over either cap
	// closes the oldest one still waiting (from that address, for the
	// per-address cap): idle sockets cannot keep a real client out, which
	// finishes its handshake in milliseconds.
	HandshakeTimeout time.Duration
	MaxStartups      int
	MaxStartupsPerIP int
	// MaxConns caps all connections at once (file descriptors).
	MaxConns int
}

// Server serves Config over SSH.
type Server struct {
	cfg  Config
	ssh  *ssh.ServerConfig
	mu   sync.Mutex
	pre  map[string]int // unauthenticated connections by address
	npre int
	wait []*startup // unauthenticated connections, oldest first (some may be done)
	conn int
	per  map[string]*clientState // by client name
	wg   sync.WaitGroup
}

type clientState struct {
	conns, uploads int
}

// Stats is what a Server holds now (for tests and logs).
type Stats struct {
	Conns, Startups int
}

// New checks cfg and makes a Server.
func New(cfg Config) (*Server, error) {
	if cfg.HostKey == nil || cfg.Clients == nil || cfg.Runner == nil {
		return nil, errors.New("service: host key, clients and runner are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	s := &Server{cfg: cfg, pre: map[string]int{}, per: map[string]*clientState{}}
	s.ssh = &ssh.ServerConfig{
		PublicKeyCallback: s.auth,
		MaxAuthTries:      6,
		ServerVersion:     "SSH-2.0-cloudletd",
	}
	s.ssh.AddHostKey(cfg.HostKey)
	return s, nil
}

// Stats says how many connections are open and how many of them have not
// authenticated yet.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Conns: s.conn, Startups: s.npre}
}

func (s *Server) auth(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	cs, err := s.cfg.Clients()
	if err != nil {
		s.cfg.Log.Error("clients file", "err", err)
		return nil, errors.New("no clients")
	}
	if _, ok := cs[string(key.Marshal())]; !ok {
		s.cfg.Log.Info("refused key", "remote", meta.RemoteAddr().String(), "user", meta.User(), "key", ssh.FingerprintSHA256(key))
		return nil, errors.New("unknown key")
	}
	return &ssh.Permissions{Extensions: map[string]string{"key": string(key.Marshal())}}, nil
}

// Serve accepts connections on ln until ctx ends, then waits for the
// connections it has.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				s.wg.Wait()
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return err
			}
			s.cfg.Log.Warn("accept", "err", err)
			time.Sleep(100 * time.Millisecond) // EMFILE and the like: let go of some
			continue
		}
		host := hostOf(nc.RemoteAddr())
		st, why := s.admit(nc, host)
		if why != "" {
			s.cfg.Log.Warn("connection refused", "remote", nc.RemoteAddr().String(), "why", why)
			nc.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(ctx, nc, st)
		}()
	}
}

// startup is a connection that has not authenticated yet.
type startup struct {
	host string
	conn net.Conn
	done bool // authenticated, gone or evicted: no longer counted
}

func hostOf(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	return a.String()
}

// admit counts a new connection as open and unauthenticated, closing the
// oldest waiting one when a startup cap is reached, or says why not (all
// connections at MaxConns).
func (s *Server) admit(nc net.Conn, host string) (*startup, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cfg.MaxConns > 0 && s.conn >= s.cfg.MaxConns {
		return nil, fmt.Sprintf("%d connections open (the most)", s.conn)
	}
	if s.cfg.MaxStartupsPerIP > 0 && s.pre[host] >= s.cfg.MaxStartupsPerIP {
		s.evict(host, fmt.Sprintf("%d connections from %s not yet authenticated (the most from one address)", s.pre[host], host))
	}
	if s.cfg.MaxStartups > 0 && s.npre >= s.cfg.MaxStartups {
		s.evict("", fmt.Sprintf("%d connections not yet authenticated (the most)", s.npre))
	}
	st := &startup{host: host, conn: nc}
	s.wait = append(s.wait, st)
	s.conn++
	s.npre++
	s.pre[host]++
	return st, ""
}

// evict closes the oldest waiting connection (from host, if given).
// Called with s.mu held.
func (s *Server) evict(host, why string) {
	for _, st := range s.wait {
		if !st.done && (host == "" || st.host == host) {
			s.cfg.Log.Warn("connection closed before authenticating", "remote", st.conn.RemoteAddr().String(), "why", why+": the oldest waiting one makes room")
			s.doneStartup(st)
			st.conn.Close()
			return
		}
	}
}

// endStartup takes a connection out of the waiting ones.
func (s *Server) endStartup(st *startup) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.doneStartup(st)
}

func (s *Server) doneStartup(st *startup) {
	if st.done {
		return
	}
	st.done = true
	s.npre--
	if s.pre[st.host]--; s.pre[st.host] <= 0 {
		delete(s.pre, st.host)
	}
	for len(s.wait) > 0 && s.wait[0].done {
		s.wait[0] = nil
		s.wait = s.wait[1:]
	}
	if len(s.wait) > 2*s.npre+64 { // done ones in the middle: compact
		live := make([]*startup, 0, s.npre)
		for _, w := range s.wait {
			if !w.done {
				live = append(live, w)
			}
		}
		s.wait = live
	}
}

func (s *Server) endConn() {
	s.mu.Lock()
	s.conn--
	s.mu.Unlock()
}

// take reserves one of a client's conns or uploads; it returns a release
// func, or nil when the client is at its limit.
func (s *Server) take(name string, upload bool, lim Limits) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.per[name]
	if st == nil {
		st = &clientState{}
		s.per[name] = st
	}
	n, max := &st.conns, lim.Conns
	if upload {
		n, max = &st.uploads, lim.Uploads
	}
	if max > 0 && *n >= max {
		return nil
	}
	*n++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		*n--
		if st.conns == 0 && st.uploads == 0 {
			delete(s.per, name)
		}
	}
}

func (s *Server) handle(ctx context.Context, nc net.Conn, st *startup) {
	defer s.endConn()
	defer nc.Close()
	defer s.endStartup(st) // a no-op once authenticated
	ic := &idleConn{Conn: nc}
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	sc, chans, reqs, err := ssh.NewServerConn(ic, s.ssh)
	if err != nil {
		s.cfg.Log.Info("handshake failed", "remote", nc.RemoteAddr().String(), "err", err)
		return
	}
	defer sc.Close()
	s.endStartup(st)
	go ssh.DiscardRequests(reqs)

	cs, err := s.cfg.Clients()
	c, ok := cs[sc.Permissions.Extensions["key"]]
	if err != nil || !ok { // removed from the file since it authenticated
		return
	}
	log := s.cfg.Log.With("client", c.Name, "key", c.Fingerprint, "remote", nc.RemoteAddr().String())
	release := s.take(c.Name, false, c.Limits)
	if release == nil {
		log.Warn("connection refused", "why", fmt.Sprintf("%d connections of this client open (the most)", c.Limits.Conns))
		return
	}
	defer release()
	// From here a connection that sends nothing for Idle is closed, until
	// its upload has ended (session).
	nc.SetDeadline(time.Time{})
	ic.setIdle(c.Limits.Idle)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopConn := context.AfterFunc(ctx, func() { sc.Close() }) // the service stops: so does this connection
	defer stopConn()
	connDone := make(chan struct{})
	go func() { // the connection gone (closed, idle): the command ends too
		sc.Wait()
		cancel()
		close(connDone)
	}()
	sessions := 0
	for nch := range chans {
		if nch.ChannelType() != "session" || sessions > 0 {
			nch.Reject(ssh.Prohibited, "one session per connection")
			continue
		}
		sessions++
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		s.session(ctx, c, log, ic, ch, creqs)
		// The client answers the channel's close and then disconnects;
		// closing under it makes OpenSSH report a broken pipe (exit 255).
		ic.setIdle(0)
		select {
		case <-connDone:
		case <-time.After(5 * time.Second):
		}
		return
	}
}

// idleConn moves its read deadline on by idle at every read, so a peer that
// sends nothing for idle is cut off (0: no deadline).
type idleConn struct {
	net.Conn
	idle atomic.Int64
}

func (c *idleConn) Read(p []byte) (int, error) {
	if d := time.Duration(c.idle.Load()); d > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(d))
	}
	return c.Conn.Read(p)
}

func (c *idleConn) setIdle(d time.Duration) {
	c.idle.Store(int64(d))
	if d > 0 {
		c.Conn.SetReadDeadline(time.Now().Add(d))
	} else {
		c.Conn.SetReadDeadline(time.Time{})
	}
}
