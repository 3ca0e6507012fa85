package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"

	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/handoff"
	"cloudlet/lib/instance"
	"cloudlet/lib/resume"
	"cloudlet/lib/virt"

	"github.com/urfave/cli/v2"
)

const description = `Moves a running VM that vm-resume synthesized to another cloudlet that holds
the same base, while it runs: an iterative pre-copy written as a live
overlay stream, which the destination's overlay-apply | vm-resume takes like
any overlay. The first pass sends only what differs from the base (memory
pages and the disk's top layer), later passes what the guest changed since
(QEMU's own dirty tracking, read from a local socket), each compressed as
overlay-pack --codec auto would for the link. vm-handoff measures the link
(the most bytes per second it took in recent windows) and pauses the
source when what is left fits --downtime at that rate, or when the passes
stop shrinking. While the source is paused it sends the disk's last
changes and every page of RAM that differs from what was sent (QEMU 7.2's
dirty tracking misses writes under TCG); the destination resumes the VM
as soon as the last pass and the device state verified.

   vm-handoff --run RUN --to "ssh next 'overlay-apply | vm-resume'"
   vm-handoff --run RUN | ssh next 'overlay-apply | vm-resume'

With --to, vm-handoff runs the destination command itself, feeds it the
stream and prints what it prints (vm-resume's instance line): if it exits 0,
the source VM is ended and its run folder removed; if it fails, or the link
breaks, the source runs on unchanged. Without --to the stream goes to
stdout, and the source stays paused once the stream ended: end it with
vm-resume stop RUN once the destination runs, or let it run again with
vm-handoff --run RUN --cancel. A failure before the end cancels the handoff
and leaves the source running; the stream then ends in an ERROR record.`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var runDir, baseDir, catalog, codecName, to, statsFile string
	var rem remote
	var downtime time.Duration
	var bandwidth float64
	var maxPasses int
	var cancelIt bool
	args = cliutil.OptionalValue(args, "libvirt", virt.DefaultURI)
	// A broken link is an error to handle (cancel, the source runs on),
	// not a signal that ends this process with the source paused.
	signal.Ignore(syscall.SIGPIPE)
	app := cliutil.NewApp("vm-handoff", "move a running synthesized VM to another cloudlet, live",
		"vm-handoff --run RUN [--to CMD] [--downtime D] [--bandwidth MBIT] > stream", description,
		[]cli.Flag{
			cliutil.Path(&cli.StringFlag{Name: "run", Usage: "run folder of the VM (vm-resume's run_dir)", Destination: &runDir, Required: true}),
			cliutil.Path(&cli.StringFlag{Name: "base", Usage: "base folder (default: find the VM's base ID in the catalog)", Destination: &baseDir, EnvVars: []string{"CLOUDLET_BASE"}}),
			cliutil.Path(&cli.StringFlag{Name: "catalog", Usage: "catalog file", Value: base.DefaultCatalogPath(), Destination: &catalog}),
			&cli.DurationFlag{Name: "downtime", Usage: "the pause to aim at: the source stops when what is left fits it at the link's rate", Value: handoff.DefaultDowntime, Destination: &downtime},
			&cli.Float64Flag{Name: "bandwidth", Usage: "the link's rate in Mbit/s (default: measured from the bytes it takes per second)", Destination: &bandwidth},
			&cli.IntFlag{Name: "max-passes", Usage: "switch over after this many passes even if they did not converge", Value: handoff.DefaultMaxPasses, Destination: &maxPasses},
			&cli.StringFlag{Name: "codec", Usage: "zstd, xz or auto (chosen for the link's rate)", Value: "auto", Destination: &codecName},
			&cli.StringFlag{Name: "to", Usage: "destination command (run with sh -c) that reads the stream: the source ends only if it exits 0", Destination: &to},
			&cli.StringFlag{Name: "remote", Usage: "destination cloudlet [USER@]HOST: the stream goes to overlay-apply | vm-resume there, over ssh (instead of --to)", Destination: &rem.host},
			&cli.StringFlag{Name: "ssh-opts", Usage: "with --remote: ssh options (words)", Destination: &rem.sshOpts},
			&cli.StringFlag{Name: "remote-bin", Usage: "with --remote: the folder of the tools there (default: the folder of this vm-handoff)", Destination: &rem.bin},
			&cli.StringFlag{Name: "remote-catalog", Usage: "with --remote: the catalog file there (default: its own default)", Destination: &rem.catalog},
			&cli.StringSliceFlag{Name: "forward", Usage: "with --remote: port forward tcp:[ADDR:]HOST:GUEST on the destination (default: the source's guest ports, on free host ports)", Destination: &rem.forwards},
			&cli.StringFlag{Name: "net", Usage: "with --remote: the destination's network policy (default: the source's)", Destination: &rem.net},
			&cli.StringFlag{Name: "libvirt", Usage: "with --remote: run the VM there as a libvirt domain at this URI (--libvirt alone: " + virt.DefaultURI + ")", Destination: &rem.libvirt},
			cliutil.Path(&cli.StringFlag{Name: "stats", Usage: "write the handoff's figures (JSON) to this file", Destination: &statsFile}),
			&cli.BoolFlag{Name: "cancel", Usage: "let a source that a handoff left paused run again", Destination: &cancelIt},
			cliutil.ForceFlag,
		},
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			info, err := instance.Read(runDir)
			if err != nil {
				return err
			}
			if cancelIt {
				return handoff.Resume(ctx, info)
			}
			if downtime <= 0 || bandwidth < 0 || maxPasses < 2 {
				return cliutil.Usagef("--downtime must be positive, --bandwidth not negative, --max-passes at least 2")
			}
			if rem.host != "" {
				if to != "" {
					return cliutil.Usagef("--to and --remote exclude each other")
				}
				if to, err = rem.command(info); err != nil {
					return err
				}
			} else if rem.sshOpts != "" || rem.bin != "" || rem.catalog != "" || len(rem.forwards.Value()) > 0 || rem.net != "" || rem.libvirt != "" {
				return cliutil.Usagef("--ssh-opts, --remote-bin, --remote-catalog, --forward, --net and --libvirt go with --remote")
			}
			if to == "" {
				if err := cliutil.CheckStdout(stdout, c.Bool("force")); err != nil {
					return err
				}
			}
			if info.Domain != "" {
				return fmt.Errorf("instance %s runs as libvirt domain %s: hand it off with virsh migrate, or synthesize it without --libvirt", runDir, info.Domain)
			}
			b, err := base.Locate(baseDir, catalog, info.BaseID)
			if err != nil {
				return err
			}
			defer b.Close()
			opt := handoff.Options{Instance: info, Base: b, Downtime: downtime, Bandwidth: bandwidth, MaxPasses: maxPasses, Codec: codecName, Log: stderr}
			if to == "" {
				st, err := handoff.Send(ctx, opt, stdout)
				writeStats(statsFile, st)
				if err == nil {
					fmt.Fprintf(stderr, "vm-handoff: the stream is sent; the source VM is paused: end it with vm-resume stop %s once the destination runs, or let it run again with vm-handoff --run %s --cancel\n", runDir, runDir)
				}
				return err
			}
			return sendTo(ctx, opt, to, runDir, statsFile, stdout, stderr)
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

// sendTo runs the destination command, sends it the stream, and ends the
// source only if the command succeeded.
func sendTo(ctx context.Context, opt handoff.Options, to, runDir, statsFile string, stdout, stderr io.Writer) error {
	cmd := exec.Command("sh", "-c", to)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the destination command: %w", err)
	}
	st, err := handoff.Send(ctx, opt, w)
	w.Close()
	werr := cmd.Wait()
	writeStats(statsFile, st)
	if err != nil {
		return fmt.Errorf("%w (the source VM runs on)", err)
	}
	if werr != nil {
		if cerr := handoff.Resume(context.WithoutCancel(ctx), opt.Instance); cerr != nil {
			return fmt.Errorf("the destination failed (%v), and letting the source run again failed too: %v", werr, cerr)
		}
		return fmt.Errorf("the destination failed (%v): the source VM runs on", werr)
	}
	if st != nil {
		fmt.Fprintf(stderr, "vm-handoff: done in %.1f s, %d passes, %d bytes sent; the source paused %.2f s before the stream's end\n", st.Seconds, st.Passes, st.WireBytes, st.StopToEnd)
	}
	return resume.Stop(context.WithoutCancel(ctx), runDir)
}

func writeStats(path string, st *handoff.Stats) {
	if path == "" || st == nil {
		return
	}
	b, _ := json.Marshal(st)
	tmp := path + ".tmp"
	if os.WriteFile(tmp, append(b, '\n'), 0o644) == nil {
		os.Rename(tmp, path)
	}
}
