package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/instance"
	"cloudlet/lib/jail"
	"cloudlet/lib/progress"
	"cloudlet/lib/resume"
	"cloudlet/lib/virt"
	"cloudlet/lib/vm"

	"github.com/urfave/cli/v2"
)

const description = `Brings a VM up and prints one JSON line describing it on stdout (name,
pid, QMP socket, serial console socket and log, forwarded ports, run folder),
then detaches, leaving QEMU running (or waits for it with --wait).

   vm-resume [flags] < stream         resume a VM from a cloudlet stream
   vm-resume launch [flags]           boot a fresh VM from a disk image (raw or qcow2)
   vm-resume stop RUN                 end an instance and remove its run folder

A stream is either a full stream (vm-capture's output) or a stream relative
to a base (overlay-apply's output), which resumes in time proportional to
what changed: the base memory is mapped privately and never written, the
changed pages are injected into QEMU's incoming migration, the disk is a
new qcow2 layer over the base disk. The guest runs only once the whole
stream has been read and verified.

   overlay-apply --base B < app.overlay | vm-resume --base B
   ssh cloudlet 'overlay-apply | vm-resume' < app.overlay

With --libvirt [URI] the VM runs as a transient libvirt domain (named
after its run folder), visible to virsh and to anything that manages VMs
through libvirt; virsh destroy ends it, and vm-resume stop destroys it:

   ssh cloudlet 'overlay-apply | vm-resume --libvirt' < app.overlay

With --early-start the guest runs as soon as the device state (and what
QEMU reads before the guest runs) has arrived: its memory and disk are
served on demand from a FUSE mount in the run folder, and a page not yet
arrived waits for it. The JSON line is printed when the guest runs;
vm-resume exits once the rest has arrived and verified (exit status 0),
or, if the stream turns out bad after the guest started, stops and
removes the instance and fails. A second process serves the VM's memory
and disk for the VM's life (server_pid in the JSON line); the VM dies
with it. Pack the overlay in access order for it (overlay-pack --order
access), from an access log that an early start records:

   overlay-pack < app.diff | overlay-apply | vm-resume --early-start --access-log app.access
   overlay-pack --order access --access-log app.access < app.diff > app.overlay
   ssh cloudlet 'overlay-apply | vm-resume --early-start' < app.overlay

The VM is recreated from the stream's description, never from strings in the
stream. Your own QEMU arguments go after --.`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var o resume.Options
	var prog cliutil.Progress
	args = cliutil.ProgressArgs(cliutil.OptionalValue(args, "libvirt", virt.DefaultURI))
	var fwds cli.StringSlice
	var wait bool
	var netPolicy string
	if exe, err := os.Executable(); err == nil {
		jail.ProxyCommand = []string{exe, jail.ProxyArg}
	}
	var kits cli.StringSlice
	common := []cli.Flag{
		&cli.StringFlag{Name: "name", Usage: "instance name", Value: "cloudlet", Destination: &o.Name},
		cliutil.Path(&cli.StringFlag{Name: "run-dir", Usage: "run folder (default: a new folder under $CLOUDLET_RUN_DIR or /run/cloudlet)", Destination: &o.RunDir}),
		&cli.StringSliceFlag{Name: "forward", Usage: "port forward tcp:[ADDR:]HOSTPORT:GUESTPORT, ADDR default 127.0.0.1, HOSTPORT 0 for a free port (repeatable; for streams, replaces the recorded ones)", Destination: &fwds},
		&cli.StringFlag{Name: "accel", Usage: "auto, kvm or tcg", Value: "auto", EnvVars: []string{"CLOUDLET_ACCEL"}, Destination: &o.Accel},
		&cli.BoolFlag{Name: "vnc", Usage: "VNC display on RUN/vnc.sock instead of headless (for a stream, on the display device it recorded; a stream without a device list gets a VGA device: resume a VM captured with --vnc with --vnc too)", Destination: &o.VNC},
		&cli.BoolFlag{Name: "wait", Usage: "stay in the foreground until the VM exits, then remove its run folder", Destination: &wait},
		&cli.IntFlag{Name: "max-instances", Usage: "refuse to start another instance when this many run or are starting under the run root (0: no limit)", EnvVars: []string{"CLOUDLET_MAX_INSTANCES"}, Destination: &o.Admission.MaxInstances},
		&cli.IntFlag{Name: "reserve-mib", Usage: "refuse to start another instance unless this much host memory (MiB) stays available after its overhead (0: no check)", Value: 256, EnvVars: []string{"CLOUDLET_RESERVE_MIB"}, Destination: &o.Admission.ReserveMiB},
		cliutil.Paths(&cli.StringSliceFlag{Name: "kit", Usage: "folder with vmlinuz, initrd.img and rootfs.img (the guest kit)", EnvVars: []string{"CLOUDLET_GUEST_DIR"}, Destination: &kits}),
		&cli.StringFlag{Name: "libvirt", Usage: "run the VM as a transient libvirt domain named after the run folder, at this libvirt URI (--libvirt alone: " + virt.DefaultURI + "); virsh list, console, destroy work on it", Destination: &o.Libvirt},
		&cli.StringFlag{Name: "mem-overhead", Usage: "cap the instance's memory (QEMU and its helpers, in a cgroup of its own) at guest RAM plus `SIZE`; 0: no cap (default 256M as root, no cap otherwise)", EnvVars: []string{"CLOUDLET_MEM_OVERHEAD"}},
		&cli.IntFlag{Name: "cpu-shares", Usage: "the instance's CPU weight against the others (1024: one share; default 1024 as root); 0: none", EnvVars: []string{"CLOUDLET_CPU_SHARES"}},
		&cli.Float64Flag{Name: "cpus", Usage: "cap the instance's CPU time at this many cores (0: no cap)", EnvVars: []string{"CLOUDLET_CPUS"}, Destination: &o.Limits.CPUs},
		&cli.IntFlag{Name: "pids", Usage: "cap the instance's processes and threads (default 512 as root); 0: none", EnvVars: []string{"CLOUDLET_PIDS"}},
		&cli.StringFlag{Name: "file-cap", Usage: "cap each file QEMU writes in the run folder (the disk's top layer, the console log, its log) at `SIZE`: a write past it fails (the guest sees a disk error, the log stops); 0: none", Value: "4G", EnvVars: []string{"CLOUDLET_FILE_CAP"}},
		&cli.StringFlag{Name: "net", Usage: "what the guest's network may reach: isolated (nothing: not the host, its loopback, other instances or the outside; forwards still carry connections in), outbound (the outside through NAT, never the host or other instances; root, TCP forwards, not under libvirt) or host (everything the host reaches, its loopback too: for your own VMs only)", Value: string(jail.Isolated), EnvVars: []string{"CLOUDLET_NET"}, Destination: &netPolicy},
	}
	prepare := func(c *cli.Context) error {
		o.Log = stderr
		var err error
		if o.Net, err = jail.ParsePolicy(netPolicy); err != nil {
			return cliutil.Usagef("--net: %v", err)
		}
		if err := limits(c, &o); err != nil {
			return err
		}
		if c.Args().Present() {
			o.ExtraArgs = c.Args().Slice()
			if strings.HasPrefix(o.ExtraArgs[0], "-") && !wasAfterDashDash(args) {
				return cliutil.Usagef("unexpected %q: put extra QEMU arguments after --", o.ExtraArgs[0])
			}
		}
		for _, f := range fwds.Value() {
			fw, err := parseForward(f)
			if err != nil {
				return err
			}
			o.Forwards = append(o.Forwards, fw)
		}
		return nil
	}
	finish := func(info *instance.Info) error {
		fmt.Fprintln(stdout, info.Line())
		if !wait {
			return nil
		}
		return waitFor(ctx, info)
	}

	var baseDir, catalog, memWrite, accessLog, warm string
	var early bool
	var images cli.StringSlice
	app := cliutil.NewApp("vm-resume", "resume a VM from a cloudlet stream, or launch one from an image",
		"vm-resume [flags] [-- QEMU ARGS] < stream", description,
		append([]cli.Flag{
			cliutil.Path(&cli.StringFlag{Name: "base", Usage: "base folder for streams relative to a base (default: the catalog)", Destination: &baseDir}),
			cliutil.Path(&cli.StringFlag{Name: "catalog", Usage: "catalog file", Value: base.DefaultCatalogPath(), Destination: &catalog}),
			cliutil.Paths(&cli.StringSliceFlag{Name: "image", Usage: "disk image a full stream's disk is relative to (matched by sha256)", Destination: &images}),
			&cli.StringFlag{Name: "mem-write", Usage: "how a diff stream's pages reach the guest: direct (into QEMU's RAM with process_vm_writev; the migration stream when not allowed) or migration (through QEMU's incoming migration, slower)", Value: resume.MemWriteDirect, Destination: &memWrite},
			&cli.BoolFlag{Name: "early-start", Usage: "run the guest before the stream has arrived: memory and disk are served on demand (FUSE) and a read of what has not arrived waits for it; needs a stream with a MANIFEST (overlay-pack writes one), best packed with --order access. This process stays as the server of the VM's memory and disk for the VM's life", Destination: &early},
			cliutil.Path(&cli.StringFlag{Name: "access-log", Usage: "with --early-start: once the stream has arrived and --warm ran, write what the guest read first, in order, to FILE (added to what FILE holds) for overlay-pack --order access", Destination: &accessLog}),
			&cli.StringFlag{Name: "warm", Usage: "with --access-log: a shell command that uses the app (env CLOUDLET_INSTANCE, CLOUDLET_PORT_<guest port>); default: GET / on each forwarded TCP port until it answers, then 3 s", Destination: &warm},
			&cli.StringFlag{Name: "ports", Usage: "host ports of the stream's recorded forwards: recorded (a free one when taken, said on stderr), free (always free ones: many instances of one overlay), strict (refuse when taken)", Value: resume.PortsRecorded, EnvVars: []string{"CLOUDLET_PORTS"}, Destination: &o.Ports},
		}, append(common, prog.Flags()...)...),
		func(c *cli.Context) error {
			if err := prepare(c); err != nil {
				return err
			}
			if cliutil.IsTerminal(stdin) {
				return cliutil.Usagef("vm-resume reads a stream on stdin; to boot an image use vm-resume launch")
			}
			if err := resume.CheckPortPolicy(o.Ports); err != nil {
				return cliutil.Usagef("--ports: %v", err)
			}
			if memWrite != resume.MemWriteDirect && memWrite != resume.MemWriteMigration {
				return cliutil.Usagef("--mem-write %q: want direct or migration", memWrite)
			}
			so := resume.StreamOptions{Options: o, BaseDir: baseDir, Catalog: catalog, Images: images.Value(), KitDirs: kits.Value(), MemWrite: memWrite}
			for _, k := range kits.Value() {
				so.Images = append(so.Images, filepath.Join(k, "rootfs.img"))
			}
			switch {
			case !early && (accessLog != "" || warm != ""):
				return cliutil.Usagef("--access-log and --warm record an early start: add --early-start")
			case warm != "" && accessLog == "":
				return cliutil.Usagef("--warm warms the guest up for --access-log FILE: add it")
			case early && o.Libvirt != "":
				return cliutil.Usagef("--early-start does not run under --libvirt yet (the VM must die with the process that serves its memory)")
			case early && c.IsSet("mem-write"):
				return cliutil.Usagef("--mem-write with --early-start: the pages are served on demand, not written")
			case early && os.Getenv(serverEnv) != "":
				return earlyServer(ctx, stdin, stderr, so, accessLog, warm)
			case early:
				return earlyParent(ctx, args[1:], stdin, stdout, stderr, wait)
			}
			popt, err := prog.Options()
			if err != nil {
				return err
			}
			meter, in, _ := progress.Start("vm-resume", stdin, stdout, stderr, popt)
			info, err := resume.FromStream(ctx, format.NewReader(in), so)
			var figures map[string]any
			if info != nil {
				figures = map[string]any{"run_dir": info.RunDir, "timings": info.Timings}
			}
			if serr := meter.Done(err, figures); err == nil && serr != nil {
				err = serr
			}
			if err != nil {
				return err
			}
			return finish(info)
		}, stdin, stderr)

	var lo resume.LaunchOptions
	app.Commands = []*cli.Command{
		{
			Name: "launch", Usage: "boot a fresh VM from a disk image in the capturable layout",
			ArgsUsage: "[-- QEMU ARGS]",
			Flags: append([]cli.Flag{
				cliutil.Path(&cli.StringFlag{Name: "image", Usage: "disk image, raw or qcow2 (a qcow2 may have its own backing chain); never written (default: the kit's rootfs.img)", Destination: &lo.Image}),
				&cli.StringFlag{Name: "firmware", Usage: "bios (SeaBIOS) or uefi (OVMF, Debian's ovmf package), for images that boot through their own bootloader", Value: "bios", Destination: &lo.Firmware},
				&cli.StringFlag{Name: "image-format", Usage: "raw or qcow2 (default: detected with qemu-img info)", Destination: &lo.ImageFormat},
				cliutil.Path(&cli.StringFlag{Name: "kernel", Usage: "boot this kernel directly; without it the image boots through its own bootloader (see --firmware). Default: the kit's vmlinuz when the image is the kit's", Destination: &lo.Kernel}),
				cliutil.Path(&cli.StringFlag{Name: "initrd", Usage: "initrd (needs --kernel; default: the kit's initrd.img with the kit's kernel)", Destination: &lo.Initrd}),
				&cli.StringFlag{Name: "append", Usage: "kernel command line (needs --kernel; default: the kit's line with the kit's kernel)", Destination: &lo.Append},
				&cli.IntFlag{Name: "mem", Usage: "guest RAM in MiB", Value: 256, Destination: &lo.MemMiB},
			}, common...),
			Action: func(c *cli.Context) error {
				if err := prepare(c); err != nil {
					return err
				}
				// The kit is one example of an image: its kernel, initrd
				// and kernel line are the defaults only for its own image.
				if k := kits.Value(); len(k) > 0 {
					kitImage := filepath.Join(k[0], "rootfs.img")
					if lo.Image == "" {
						lo.Image = kitImage
					}
					if lo.Image == kitImage && lo.Kernel == "" {
						lo.Kernel, lo.Initrd = filepath.Join(k[0], "vmlinuz"), filepath.Join(k[0], "initrd.img")
						if !c.IsSet("append") {
							lo.Append = vm.KitAppend
						}
					}
				}
				if lo.Image == "" {
					return cliutil.Usagef("launch needs --image (or --kit with a rootfs.img)")
				}
				if lo.Kernel == "" && (lo.Initrd != "" || lo.Append != "") {
					return cliutil.Usagef("--initrd and --append need --kernel; without --kernel the image boots through its own bootloader")
				}
				if lo.Firmware != vm.FirmwareBIOS && lo.Firmware != vm.FirmwareUEFI {
					return cliutil.Usagef("--firmware %q: want bios or uefi", lo.Firmware)
				}
				switch lo.ImageFormat {
				case "", "raw", "qcow2":
				default:
					return cliutil.Usagef("--image-format %q: want raw or qcow2", lo.ImageFormat)
				}
				lo.Options = o
				info, err := resume.Launch(ctx, lo)
				if err != nil {
					return err
				}
				return finish(info)
			},
		},
		{
			Name: jail.ProxyArg, Hidden: true, Usage: "the forward proxy of an instance under the outbound network policy (started by vm-resume itself)",
			Flags: []cli.Flag{&cli.StringFlag{Name: "run", Required: true}, &cli.IntFlag{Name: "qemu-pid", Required: true}},
			Action: func(c *cli.Context) error {
				return jail.ServeProxy(ctx, c.String("run"), c.Int("qemu-pid"), c.Args().Slice())
			},
		},
		{
			Name: "stop", Usage: "end an instance and remove its run folder", ArgsUsage: "RUN",
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return cliutil.Usagef("stop: want the run folder")
				}
				return resume.Stop(ctx, c.Args().First())
			},
		},
	}
	return app.RunContext(ctx, args)
}

// limits reads the resource limit flags into o. As root the cgroup
// limits default to jail.DefaultLimits; otherwise only what is set
// applies (a cgroup needs root).
func limits(c *cli.Context, o *resume.Options) error {
	size := func(name string) (uint64, error) {
		n, err := cliutil.ParseSize(c.String(name))
		if err != nil {
			return 0, cliutil.Usagef("--%s: %v", name, err)
		}
		return n, nil
	}
	var err error
	if o.Limits.FileBytes, err = size("file-cap"); err != nil {
		return err
	}
	if c.IsSet("mem-overhead") {
		if o.Limits.MemOverhead, err = size("mem-overhead"); err != nil {
			return err
		}
	}
	o.Limits.CPUShares, o.Limits.Pids = c.Int("cpu-shares"), c.Int("pids")
	if os.Geteuid() == 0 {
		def := jail.DefaultLimits()
		if !c.IsSet("mem-overhead") {
			o.Limits.MemOverhead = def.MemOverhead
		}
		if !c.IsSet("cpu-shares") {
			o.Limits.CPUShares = def.CPUShares
		}
		if !c.IsSet("pids") {
			o.Limits.Pids = def.Pids
		}
	}
	return nil
}

func wasAfterDashDash(args []string) bool {
	for _, a := range args {
		if a == "--" {
			return true
		}
	}
	return false
}

func parseForward(s string) (vm.Forward, error) {
	parts := strings.Split(s, ":")
	addr := ""
	if len(parts) == 4 {
		addr = parts[1]
		parts = []string{parts[0], parts[2], parts[3]}
		if ip := net.ParseIP(addr); ip == nil || ip.To4() == nil {
			return vm.Forward{}, cliutil.Usagef("--forward %q: %q is not an IPv4 address to listen on", s, addr)
		}
	}
	if len(parts) != 3 || (parts[0] != "tcp" && parts[0] != "udp") {
		return vm.Forward{}, cliutil.Usagef("--forward %q: want tcp:HOSTPORT:GUESTPORT or tcp:ADDR:HOSTPORT:GUESTPORT (the original's -redir tcp:8080::80 is tcp:8080:80)", s)
	}
	h, err1 := strconv.Atoi(parts[1])
	g, err2 := strconv.Atoi(parts[2])
	if err1 != nil || err2 != nil || h < 0 || h > 65535 || g < 1 || g > 65535 {
		return vm.Forward{}, cliutil.Usagef("--forward %q: ports must be numbers 1-65535 (host port 0: a free one)", s)
	}
	return vm.Forward{Proto: parts[0], HostAddr: addr, HostPort: h, GuestPort: g}, nil
}

// waitFor stays until the VM exits (or a signal), then cleans up.
func waitFor(ctx context.Context, info *instance.Info) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	for {
		select {
		case <-ctx.Done():
			return resume.Stop(context.Background(), info.RunDir)
		case <-sig:
			return resume.Stop(context.Background(), info.RunDir)
		default:
		}
		if p, err := os.FindProcess(info.Pid); err != nil || p.Signal(syscall.Signal(0)) != nil {
			return resume.RemoveRunDir(info.RunDir)
		}
		select {
		case <-ctx.Done():
		case <-sig:
			return resume.Stop(context.Background(), info.RunDir)
		case <-timeAfter():
		}
	}
}
