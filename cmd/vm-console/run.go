package main

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"strings"
	"time"

	"cloudlet/lib/cliutil"
	"cloudlet/lib/console"
	"cloudlet/lib/instance"

	"github.com/urfave/cli/v2"
)

const description = `Runs a shell command on the serial console of a VM that vm-resume started
(the guest kit's root shell), prints its output on stdout and exits with the
command's exit status; or, with no command, connects stdin and stdout to
the console (for a real terminal, socat -,raw,echo=0 UNIX-CONNECT:RUN/serial.sock
is nicer).

   vm-console --wait-ready RUN 'clwork serve &'
   vm-console RUN 'cat /run/counter'
   vm-console --script RUN < setup.sh     # a multi-line script, run with sh`

// exitError carries the guest command's exit status.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("guest command exited with status %d", e.code) }

// ExitStatus makes vm-console exit with the guest command's status.
func (e *exitError) ExitStatus() int { return e.code }

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var ready, script bool
	var serial string
	var timeout time.Duration
	app := cliutil.NewApp("vm-console", "run commands on a VM's serial console",
		"vm-console [--wait-ready] [--timeout D] [--script] (RUN | --serial SOCK) [COMMAND...]", description,
		[]cli.Flag{
			&cli.BoolFlag{Name: "wait-ready", Usage: "first wait for the guest kit's CLOUDLET-GUEST-READY line", Destination: &ready},
			&cli.StringFlag{Name: "serial", Usage: "serial console socket of a QEMU not started by vm-resume (then no RUN)", Destination: &serial},
			&cli.BoolFlag{Name: "script", Usage: "run the shell script read from stdin (any length, several lines)", Destination: &script},
			&cli.DurationFlag{Name: "timeout", Usage: "give up after this long", Value: 5 * time.Minute, Destination: &timeout},
		},
		func(c *cli.Context) error {
			args := c.Args().Slice()
			if serial == "" {
				if len(args) < 1 {
					return cliutil.Usagef("want the run folder printed by vm-resume (or --serial SOCK)")
				}
				info, err := instance.Read(args[0])
				if err != nil {
					return err
				}
				serial, args = info.Serial, args[1:]
			}
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			con, err := console.Dial(ctx, serial)
			if err != nil {
				return err
			}
			defer con.Close()
			if ready {
				if err := waitReady(ctx, con); err != nil {
					return err
				}
			}
			cmdline := strings.Join(args, " ")
			if script {
				if len(args) > 0 {
					return cliutil.Usagef("--script reads the script from stdin; give no COMMAND")
				}
				if cmdline, err = sendScript(ctx, con, stdin); err != nil {
					return err
				}
			} else if len(args) == 0 {
				return interactive(ctx, con, stdin, stdout)
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

// waitReady waits for the kit guest's ready line, failing fast if the
// guest kernel panicked instead.
func waitReady(ctx context.Context, con *console.Console) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		if con.WaitFor(ctx, "Kernel panic") == nil {
			cancel(fmt.Errorf("the guest kernel panicked:\n%s", con.Tail(1500)))
		}
	}()
	if err := con.WaitFor(ctx, "CLOUDLET-GUEST-READY"); err != nil {
		if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
			return cause
		}
		return fmt.Errorf("guest never printed CLOUDLET-GUEST-READY: %w\n%s", err, con.Tail(1000))
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
