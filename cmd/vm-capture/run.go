package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"cloudlet/format"
	"cloudlet/lib/capture"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/instance"
	"cloudlet/lib/progress"
	"cloudlet/lib/resume"
	"cloudlet/lib/virt"

	"github.com/urfave/cli/v2"
)

const description = `Stops a running QEMU VM and writes its whole state to stdout as a full
cloudlet stream: the VM description, QEMU's device state, every non-zero
page of RAM, and the disk extents its qcow2 top layer holds.

For a VM started by vm-resume, give its run folder (--run); RAM is then read
straight from the VM's memory file. For a libvirt domain, give --libvirt
[URI] --domain NAME: one that vm-resume --libvirt started is captured as
with --run; any other through libvirt's monitor, as with --qmp, with its
first disk. For any other QEMU, give its QMP socket
(--qmp) and, to include its disk, its qcow2 top layer (--disk); RAM then
comes through QEMU's migration stream.

   vm-capture --run RUN --quit | mem-diff | disk-diff | overlay-pack > app.overlay
   vm-capture --run RUN --resume > snapshot.stream
   vm-capture --libvirt --domain web1 --quit | mem-diff | disk-diff | overlay-pack > app.overlay

Afterwards the VM stays paused, unless --resume or --quit (which, for a
--run VM, also removes its run folder once the capture is complete). A stream is
written only from a migration QEMU reports as completed; if the capture
fails midway, the stream ends with an ERROR record that the next stage
reports.`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var runDir, qmp, diskTop, libvirtURI, domain string
	var resumeVM, quit bool
	var prog cliutil.Progress
	args = cliutil.ProgressArgs(args)
	var fwds cli.StringSlice
	args = cliutil.OptionalValue(args, "libvirt", virt.DefaultURI)
	app := cliutil.NewApp("vm-capture", "capture a running QEMU VM as a full cloudlet stream",
		"vm-capture (--run DIR | --qmp SOCK [--disk TOP] | --libvirt [URI] --domain NAME) [--resume | --quit] > stream", description,
		append([]cli.Flag{
			cliutil.Path(&cli.StringFlag{Name: "run", Usage: "run folder of a VM started by vm-resume", Destination: &runDir}),
			cliutil.Path(&cli.StringFlag{Name: "qmp", Usage: "QMP socket of another QEMU VM", Destination: &qmp}),
			cliutil.Path(&cli.StringFlag{Name: "disk", Usage: "that VM's qcow2 top layer (with --qmp; with --libvirt, default: the domain's first disk)", Destination: &diskTop}),
			&cli.StringFlag{Name: "libvirt", Usage: "capture a libvirt domain (--domain) at this libvirt URI (--libvirt alone: " + virt.DefaultURI + ")", Destination: &libvirtURI},
			&cli.StringFlag{Name: "domain", Usage: "with --libvirt: the domain's name; one vm-resume --libvirt started is captured as with --run, any other through libvirt's monitor", Destination: &domain},
			&cli.StringSliceFlag{Name: "forward", Usage: "port forward to record for a --qmp VM, tcp:HOST:GUEST", Destination: &fwds},
			&cli.BoolFlag{Name: "resume", Usage: "let the VM run again after the capture", Destination: &resumeVM},
			&cli.BoolFlag{Name: "quit", Usage: "end the VM after the capture", Destination: &quit},
			cliutil.ForceFlag,
		}, prog.Flags()...),
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			n := 0
			for _, v := range []string{runDir, qmp, libvirtURI} {
				if v != "" {
					n++
				}
			}
			if n != 1 {
				return cliutil.Usagef("give exactly one of --run DIR, --qmp SOCK or --libvirt [URI] --domain NAME")
			}
			if (libvirtURI == "") != (domain == "") {
				return cliutil.Usagef("--libvirt and --domain go together")
			}
			if resumeVM && quit {
				return cliutil.Usagef("--resume and --quit exclude each other")
			}
			if err := cliutil.CheckStdout(stdout, c.Bool("force")); err != nil {
				return err
			}
			opt := capture.Options{QMP: qmp, Disk: diskTop, Stage: "vm-capture", Log: stderr}
			for _, f := range fwds.Value() {
				fw, err := parseForward(f)
				if err != nil {
					return err
				}
				opt.Forwards = append(opt.Forwards, fw)
			}
			if libvirtURI != "" {
				conn, err := virt.Connect(ctx, libvirtURI)
				if err != nil {
					return err
				}
				defer conn.Close()
				t, err := conn.Target(domain)
				if err != nil {
					return err
				}
				if runDir = t.RunDir; runDir == "" {
					opt.Monitor, opt.MonitorName = conn.Monitor(domain), "domain "+domain+" at "+conn.URI
					if opt.Disk == "" {
						opt.Disk = t.Disk
					}
				}
			}
			if resumeVM {
				opt.After = capture.Resume
			} else if quit {
				opt.After = capture.Quit
			}
			if runDir != "" {
				info, err := instance.Read(runDir)
				if err != nil {
					return err
				}
				opt.Instance = info
				if info.Domain != "" {
					libvirtURI, domain = info.Libvirt, info.Domain
				}
			}
			if libvirtURI != "" {
				opt.End = func(ctx context.Context) error { return virt.DestroyDomain(ctx, libvirtURI, domain) }
			}
			popt, err := prog.Options()
			if err != nil {
				return err
			}
			meter, _, out := progress.Start("vm-capture", nil, stdout, stderr, popt)
			w := format.NewWriter(out)
			st, err := capture.Capture(ctx, opt, w)
			if err != nil {
				w.WriteError("vm-capture", err.Error())
			}
			meter.Records(w.Frames())
			var figures map[string]any // the capture's own figures
			if b, jerr := json.Marshal(st); st != nil && jerr == nil {
				json.Unmarshal(b, &figures)
			}
			if serr := meter.Done(err, figures); err == nil && serr != nil {
				return serr
			}
			if err != nil {
				return err
			}
			if quit && runDir != "" {
				// The VM is gone; its run folder (RAM file included) is of no use.
				return resume.Stop(ctx, runDir)
			}
			return nil
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

func parseForward(s string) (format.Forward, error) {
	var proto string
	var host, guest uint16
	if _, err := fmt.Sscanf(s, "%3s:%d:%d", &proto, &host, &guest); err != nil || (proto != "tcp" && proto != "udp") {
		return format.Forward{}, cliutil.Usagef("--forward %q: want tcp:HOSTPORT:GUESTPORT", s)
	}
	return format.Forward{Proto: proto, HostPort: host, GuestPort: guest}, nil
}
