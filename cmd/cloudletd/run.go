package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/resume"
	"cloudlet/lib/service"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"
)

const description = `The cloudlet's synthesis service over SSH, in place of the plain TCP
listener (scripts/synthesis-listener.sh). Clients are public keys in the
clients file (authorized_keys lines; the comment is the client's name);
any ssh client works, one command per connection:

   ssh -p 2022 cloudlet synthesis --forward 80 < app.overlay   # one JSON line: the instance
   ssh -p 2022 cloudlet list                                   # your running instances
   ssh -p 2022 cloudlet stop NAME

Each synthesis runs overlay-apply | vm-resume with the cloudlet's network
policy (--net) and free host ports; each client's instances live under
RUN-ROOT/CLIENT, and no client sees or stops another's. Per-client limits
(flags, or options on the key's line: instances=N,uploads=N,conns=N,
max-bytes=SIZE) and bounds on connections that have not authenticated keep
one client, or a thousand idle sockets, from starving the rest. Errors reach
the client on stderr, as {"error": ..., "status": N} on stdout, and as the
exit status (2: a command not taken, 75: a limit, try later). The clients
file is read at each connection: edits apply at once. Logs are JSON lines
on stderr; stdout gets one JSON line once it listens ({"listen", "host_key"}).`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var o struct {
		listen, hostKey, clients, bin, runRoot, catalog, net, fwdAddr, trusted string
		requireSig                                                             bool
		instances, uploads, conns, startups, startupsIP, maxConns              int
		maxBytes                                                               string
		idle, total, handshake                                                 time.Duration
	}
	flags := []cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "TCP address to serve on", Value: ":2022", Destination: &o.listen},
		cliutil.Path(&cli.StringFlag{Name: "host-key", Usage: "the server's SSH host key (an ed25519 key is made there, mode 0600, if the file does not exist)", Value: "/etc/cloudlet/cloudletd_host_ed25519", Destination: &o.hostKey}),
		cliutil.Path(&cli.StringFlag{Name: "clients", Usage: "clients file: authorized_keys lines, the comment is the client's name, options instances=N,uploads=N,conns=N,max-bytes=SIZE", Value: "/etc/cloudlet/clients", Destination: &o.clients}),
		cliutil.Path(&cli.StringFlag{Name: "bin", Usage: "folder of overlay-apply and vm-resume (default: cloudletd's own folder if they are there, else $PATH)", Destination: &o.bin}),
		cliutil.Path(&cli.StringFlag{Name: "run-root", Usage: "run folders go under RUN-ROOT/CLIENT (default $CLOUDLET_RUN_DIR or /run/cloudlet)", Destination: &o.runRoot}),
		cliutil.Path(&cli.StringFlag{Name: "catalog", Usage: "catalog of bases (default $CLOUDLET_CATALOG or ~/.cloudlet/catalog.json)", EnvVars: []string{"CLOUDLET_CATALOG"}, Destination: &o.catalog}),
		&cli.StringFlag{Name: "net", Usage: "network policy of every instance (vm-resume --net): isolated, outbound or host", Value: "isolated", Destination: &o.net},
		&cli.StringFlag{Name: "forward-addr", Usage: "host address the instances' forwards listen on (0.0.0.0: the LAN)", Value: "127.0.0.1", Destination: &o.fwdAddr},
		cliutil.Path(&cli.StringFlag{Name: "trusted-keys", Usage: "overlay-apply --trusted-keys: folder of overlay signing keys", Destination: &o.trusted}),
		&cli.BoolFlag{Name: "require-signature", Usage: "refuse overlays not signed by a trusted key (needs --trusted-keys)", Destination: &o.requireSig},
		&cli.IntFlag{Name: "instances", Usage: "a client's running instances at most (0: no limit)", Value: 4, Destination: &o.instances},
		&cli.IntFlag{Name: "uploads", Usage: "a client's syntheses in progress at once at most", Value: 2, Destination: &o.uploads},
		&cli.IntFlag{Name: "conns", Usage: "a client's open connections at most", Value: 8, Destination: &o.conns},
		&cli.StringFlag{Name: "max-bytes", Usage: "the largest overlay a client may send (SIZE)", Value: "4G", Destination: &o.maxBytes},
		&cli.DurationFlag{Name: "idle", Usage: "close a connection that sends nothing for this long before its command or during its upload", Value: time.Minute, Destination: &o.idle},
		&cli.DurationFlag{Name: "total", Usage: "the longest one command may take, upload included", Value: 30 * time.Minute, Destination: &o.total},
		&cli.DurationFlag{Name: "handshake-timeout", Usage: "time a new connection has to authenticate", Value: 10 * time.Second, Destination: &o.handshake},
		&cli.IntFlag{Name: "max-startups", Usage: "connections not yet authenticated at once at most (more are closed at once)", Value: 256, Destination: &o.startups},
		&cli.IntFlag{Name: "max-startups-per-ip", Usage: "connections not yet authenticated from one address at most", Value: 32, Destination: &o.startupsIP},
		&cli.IntFlag{Name: "max-conns", Usage: "connections open at once at most", Value: 4096, Destination: &o.maxConns},
	}
	app := cliutil.NewApp("cloudletd", "serve synthesis to authenticated clients over SSH",
		"cloudletd --clients FILE [--listen ADDR] [--host-key FILE] [options]", description, flags,
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			if o.requireSig && o.trusted == "" {
				return cliutil.Usagef("--require-signature needs --trusted-keys DIR")
			}
			maxBytes, err := cliutil.ParseSize(o.maxBytes)
			if err != nil {
				return cliutil.Usagef("--max-bytes: %v", err)
			}
			lim := service.Limits{Instances: o.instances, Uploads: o.uploads, Conns: o.conns,
				MaxBytes: int64(maxBytes), Idle: o.idle, Total: o.total}
			clients := func() (service.Clients, error) { return service.LoadClients(o.clients, lim, cliutil.ParseSize) }
			if _, err := clients(); err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return fmt.Errorf("%v: make it with one line per client, its public key and its name (ssh-ed25519 AAAA... alice), e.g. from the client's ~/.ssh/id_ed25519.pub", err)
				}
				return err
			}
			key, err := hostKey(o.hostKey)
			if err != nil {
				return err
			}
			if o.runRoot == "" {
				o.runRoot = resume.RunRoot()
			}
			if o.bin == "" {
				o.bin = ownFolder()
			}
			log := slog.New(slog.NewJSONHandler(stderr, nil))
			srv, err := service.New(service.Config{
				HostKey: key, Clients: clients, Log: log,
				Runner: &service.Tools{Bin: o.bin, RunRoot: o.runRoot, Catalog: o.catalog, Net: o.net,
					ForwardAddr: o.fwdAddr, TrustedKeys: o.trusted, RequireSignature: o.requireSig},
				HandshakeTimeout: o.handshake, MaxStartups: o.startups, MaxStartupsPerIP: o.startupsIP, MaxConns: o.maxConns,
			})
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", o.listen)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, os.Interrupt)
			defer stop()
			b, _ := json.Marshal(map[string]string{"listen": ln.Addr().String(), "host_key": ssh.FingerprintSHA256(key.PublicKey())})
			fmt.Fprintf(stdout, "%s\n", b)
			log.Info("listening", "addr", ln.Addr().String(), "host_key", ssh.FingerprintSHA256(key.PublicKey()), "run_root", o.runRoot, "net", o.net)
			err = srv.Serve(ctx, ln)
			log.Info("stopped")
			if ctx.Err() != nil {
				return nil
			}
			return err
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

// ownFolder is cloudletd's folder when the stages are beside it.
func ownFolder() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	dir := filepath.Dir(exe)
	if _, err := os.Stat(filepath.Join(dir, "vm-resume")); err != nil {
		return ""
	}
	return dir
}

// hostKey reads the host key at path, or makes an ed25519 key there.
func hostKey(path string) (ssh.Signer, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := ssh.ParsePrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("host key %s: %v", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("host key: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	blk, err := ssh.MarshalPrivateKey(priv, "cloudletd host key")
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".hostkey-*")
	if err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(pem.EncodeToMemory(blk)); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("host key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("host key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil { // never over a key made meanwhile
		return nil, fmt.Errorf("host key: %w", err)
	}
	return ssh.NewSignerFromKey(priv)
}
