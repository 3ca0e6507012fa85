package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/console"
	"cloudlet/lib/instance"
	"cloudlet/lib/ready"

	"github.com/urfave/cli/v2"
)

const description = `Runs a shell command on the serial console of a VM that vm-resume started,
prints its output on stdout and exits with the command's exit status; or,
with no command, connects stdin and stdout to the console (for a real
terminal, socat -,raw,echo=0 UNIX-CONNECT:RUN/serial.sock is nicer).

Commands need a guest with a root shell on its serial console (ttyS0), as
the guest kit and the test images have: a guest that does not answer within
--shell-timeout gets an error saying so, not a hang.

It can first wait until the guest is ready, by the sign you name:
   --ready-console REGEX   a line on the serial console matches REGEX (what
                           the guest printed before vm-console connected
                           counts too: it is in RUN/serial.log)
   --ready-port PORT       the guest's TCP PORT, forwarded by the instance,
                           accepts a connection and keeps it open
   --wait-ready            the guest kit's CLOUDLET-GUEST-READY line
With a ready sign and no command, it only waits.

   vm-console --wait-ready RUN 'clwork serve &'
   vm-console --ready-console 'login:' RUN
   vm-console --ready-port 80 --timeout 2m RUN
   vm-console RUN 'cat /run/counter'
   vm-console --script RUN < setup.sh     # a multi-line script, run with sh`

// exitError carries the guest command's exit status.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("guest command exited with status %d", e.code) }

// ExitStatus makes vm-console exit with the guest command's status.
func (e *exitError) ExitStatus() int { return e.code }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var kitReady, script bool
	var serial, readyConsole string
	var readyPort int
	var timeout, shellTimeout time.Duration
	app := cliutil.NewApp("vm-console", "run commands on a VM's serial console",
		"vm-console [--ready-console REGEX | --ready-port PORT | --wait-ready] [--timeout D] [--script] (RUN | --serial SOCK) [COMMAND...]", description,
		[]cli.Flag{
			&cli.StringFlag{Name: "ready-console", Usage: "first wait for a console line matching this regular expression", Destination: &readyConsole},
			&cli.IntFlag{Name: "ready-port", Usage: "first wait until this forwarded guest TCP port answers (needs RUN)", Destination: &readyPort},
			&cli.BoolFlag{Name: "wait-ready", Usage: "first wait for the guest kit's " + ready.KitMarker + " line", Destination: &kitReady},
			cliutil.Path(&cli.StringFlag{Name: "serial", Usage: "serial console socket of a QEMU not started by vm-resume (then no RUN)", Destination: &serial}),
			&cli.BoolFlag{Name: "script", Usage: "run the shell script read from stdin (any length, several lines)", Destination: &script},
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long", Value: 5 * time.Minute, Destination: &timeout},
			&cli.DurationFlag{Name: "shell-timeout", Usage: "how long a shell on the console has to answer before a command", Value: 30 * time.Second, Destination: &shellTimeout},
		},
		func(c *cli.Context) error {
			args := c.Args().Slice()
			var info *instance.Info
			if serial == "" {
				if len(args) < 1 {
					return cliutil.Usagef("want the run folder printed by vm-resume (or --serial SOCK)")
				}
				var err error
				if info, err = instance.Read(args[0]); err != nil {
					return err
				}
				serial, args = info.Serial, args[1:]
			}
			var re *regexp.Regexp
			switch {
			case readyConsole != "" && kitReady:
				return cliutil.Usagef("give --ready-console or --wait-ready, not both")
			case kitReady:
				re = regexp.MustCompile(regexp.QuoteMeta(ready.KitMarker))
			case readyConsole != "":
				var err error
				if re, err = regexp.Compile(readyConsole); err != nil {
					return cliutil.Usagef("--ready-console %q: %v", readyConsole, err)
				}
			}
			portAddr := ""
			if c.IsSet("ready-port") {
				if info == nil {
					return cliutil.Usagef("--ready-port needs the run folder (it reads the instance's port forwards)")
				}
				var err error
				if portAddr, err = forwardFor(info, readyPort); err != nil {
					return err
				}
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			con, err := console.Dial(ctx, serial)
			if err != nil {
				return err
			}
			defer con.Close()
			if re != nil {
				logPath := ""
				if info != nil {
					logPath = info.SerialLog
				}
				if err := ready.Console(ctx, con, logPath, re); err != nil {
					return err
				}
			}
			if portAddr != "" {
				if err := ready.Port(ctx, portAddr); err != nil {
					return fmt.Errorf("--ready-port %d: %w", readyPort, err)
				}
			}
			if len(args) == 0 && !script && (re != nil || portAddr != "") {
				return nil // only waiting
			}
			if len(args) == 0 && !script {
				return interactive(ctx, con, stdin, stdout)
			}
			if err := probeShell(ctx, con, shellTimeout); err != nil {
				return err
			}
			cmdline := strings.Join(args, " ")
			if script {
				if len(args) > 0 {
					return cliutil.Usagef("--script reads the script from stdin; give no COMMAND")
				}
				if cmdline, err = sendScript(ctx, con, stdin); err != nil {
					return err
				}
			}
			out, code, err := con.Run(ctx, cmdline)
			fmt.Fprint(stdout, out)
			if out != "" && !strings.HasSuffix(out, "\n") {
				fmt.Fprintln(stdout)
			}
			if err != nil {
				return err
			}
			if code != 0 {
				return &exitError{code}
			}
			return nil
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

// forwardFor returns the host address of the instance's TCP forward to
// guestPort.
func forwardFor(info *instance.Info, guestPort int) (string, error) {
	var have []string
	for _, f := range info.Forwards {
		if f.Proto == "tcp" && f.GuestPort == guestPort {
			return net.JoinHostPort(f.HostAddr, strconv.Itoa(f.HostPort)), nil
		}
		have = append(have, fmt.Sprintf("%s:%d->%d", f.Proto, f.HostPort, f.GuestPort))
	}
	return "", fmt.Errorf("--ready-port %d: the instance in %s forwards no host port to guest TCP port %d (its forwards: %v); start it with --forward tcp:HOSTPORT:%d", guestPort, info.RunDir, guestPort, have, guestPort)
}

// probeShell checks that a shell answers on the console before a command
// is typed into it, so a guest without one gets a clear error.
func probeShell(ctx context.Context, con *console.Console, d time.Duration) error {
	pctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	if _, _, err := con.Run(pctx, ":"); err != nil {
		if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			last := "the guest printed nothing on it"
			if t := strings.TrimSpace(con.Tail(500)); t != "" {
				last = "its last output:\n" + t
			}
			return fmt.Errorf("no shell answered on the serial console within %v: commands (vm-console COMMAND, cloudlet --cmd) need a guest with a root shell on its serial console (ttyS0); wait for the guest with --ready-console or --ready-port first, or customize it by hand; %s", d, last)
		}
		return err
	}
	return nil
}

func interactive(ctx context.Context, con *console.Console, stdin io.Reader, stdout io.Writer) error {
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := stdin.Read(buf)
			if n > 0 {
				con.Send(string(buf[:n]))
			}
			if err != nil {
				return
			}
		}
	}()
	seen := 0
	for ctx.Err() == nil {
		out := con.Output()
		if len(out) > seen {
			io.WriteString(stdout, out[seen:])
			seen = len(out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// sendScript copies a script into the guest in base64 lines short enough
// for the console, and returns the command that runs it.
func sendScript(ctx context.Context, con *console.Console, stdin io.Reader) (string, error) {
	body, err := io.ReadAll(io.LimitReader(stdin, 16<<20))
	if err != nil {
		return "", err
	}
	const path = "/tmp/.vm-console-script"
	enc := base64.StdEncoding.EncodeToString(body)
	if _, _, err := con.Run(ctx, ": > "+path+".b64"); err != nil {
		return "", err
	}
	for len(enc) > 0 {
		n := min(len(enc), 2048)
		if _, code, err := con.Run(ctx, "echo "+enc[:n]+" >> "+path+".b64"); err != nil || code != 0 {
			return "", fmt.Errorf("sending the script to the guest: exit %d, %v", code, err)
		}
		enc = enc[n:]
	}
	return "base64 -d " + path + ".b64 > " + path + " && rm " + path + ".b64 && (sh " + path + "; s=$?; rm -f " + path + "; exit $s)", nil
}
