package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"cloudlet/format"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/codec"
	"cloudlet/lib/overlay"
	"cloudlet/lib/sign"

	"github.com/urfave/cli/v2"
)

const description = `Reads a diff stream (the output of mem-diff and disk-diff) on stdin and
writes an overlay on stdout: the same records, in the same order, grouped
into segments of --segment-size raw bytes that are compressed independently
on all cores, then an INDEX of the segments and an END with the sha256 of
the overlay. overlay-apply turns it back into a diff stream on the cloudlet.

The overlay starts with a MANIFEST: every segment's size and sha256 and the
memory and disk ranges it writes, so that vm-resume can start the guest
before the rest has arrived (format/SPEC.md section 2.10). To write it
first, overlay-pack keeps the compressed segments in a temporary file in
--tmpdir until the last one is made, then writes the overlay; the file is
removed on every path. --no-manifest writes each segment as soon as it is
compressed, without a MANIFEST (as before it existed), for packing straight
into a link.

With a MANIFEST the device state and the disk's first 128 KiB come first
(QEMU reads them before an early-started guest runs).

--order access --access-log FILE puts first the records that write what
the resumed VM read first (vm-resume --early-start --access-log FILE
writes that log): device state, then the records the log lists, by their
first access (data records are cut at the log's page boundaries), in
segments of --early-segment-size raw bytes, then the others, nearest to a
touched page first. A COPY from the stream's own data comes after the
records it reads from (they move forward with it). Segments are 256 KiB by
default in this order: a page the log missed waits for its whole segment.
It reads the whole diff stream into a temporary file in --tmpdir first.
If the log touches no record, the order stays offset (a note says so on
stderr).

--codec auto picks the codec and level that make synthesis over a link of
--bandwidth Mbit/s shortest: it compresses the first segment with zstd 3,
zstd 19 and xz 9, times decoding each on this machine, and keeps the one
for which the larger of (compressed size / bandwidth) and (raw size /
decode speed on all cores) is smallest, since the cloudlet decodes while
the rest arrives. It prints the figures and its choice on stderr. On this
project's workloads xz wins up to about 100 Mbit/s and zstd above.

xz is liblzma's encoder (the xz tool's) in builds with cgo, and the pure-Go
github.com/ulikunitz/xz otherwise; both read each other's overlays.

--sign KEYFILE signs the overlay with an ed25519 private key made by
overlay-keygen: a SIGNER record after the HEADER names the key, a
HEAD_SIGNATURE after the MANIFEST signs the head (so that each segment can
be checked against the MANIFEST before it is used), and a SIGNATURE record
before END signs the sha256 of everything before it (format/SPEC.md section
6.1). overlay-apply --trusted-keys DIR checks them.

   vm-capture --qmp run/qmp.sock | mem-diff --base B | disk-diff --base B \
     | overlay-pack --codec auto --bandwidth 20 > app.overlay
   overlay-pack --order access --access-log app.access.json < app.diff > app.overlay`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var o overlay.PackOptions
	var force, list bool
	var keyFile, accessFile string
	var prog cliutil.Progress
	args = cliutil.ProgressArgs(args)
	app := cliutil.NewApp("overlay-pack", "compress a diff stream into an overlay",
		"overlay-pack [--codec zstd|xz|auto] [--level N] [--segment-size BYTES] [--order offset|access --access-log FILE] [--no-manifest] [--sign KEYFILE] < diff > app.overlay", description,
		append([]cli.Flag{
			&cli.StringFlag{Name: "codec", Value: "zstd", Usage: "segment codec: zstd, xz or auto (see below)", EnvVars: []string{"CLOUDLET_CODEC"}, Destination: &o.Codec},
			&cli.IntFlag{Name: "level", Usage: "compression level: zstd 1-19 (default 3; 1-2 fastest, 6-9 better, 10+ best), xz 1-9 as xz -1..-9 (default 9); not with --codec auto", Destination: &o.Level},
			&cli.IntFlag{Name: "segment-size", Usage: "raw bytes per segment, 65536-16777216 (default 4 MiB; 256 KiB with --order access)", Destination: &o.SegmentSize},
			&cli.Float64Flag{Name: "bandwidth", Value: overlay.DefaultBandwidth, Usage: "link speed in Mbit/s that --codec auto plans for", EnvVars: []string{"CLOUDLET_BANDWIDTH"}, Destination: &o.Bandwidth},
			&cli.IntFlag{Name: "workers", Usage: "compression workers (default: all cores)", Destination: &o.Workers},
			&cli.StringFlag{Name: "order", Value: format.OrderOffset, Usage: "record order: offset (as the diff stream has them) or access (what --access-log lists first)", Destination: &o.Order},
			cliutil.Path(&cli.StringFlag{Name: "access-log", Usage: "with --order access: the access log (JSON) of a resumed VM, from vm-resume --access-log", Destination: &accessFile}),
			&cli.IntFlag{Name: "early-segment-size", Value: overlay.DefaultEarlySegmentSize, Usage: "with --order access: raw bytes per segment of the records the access log lists, 65536-16777216", Destination: &o.EarlySegmentSize},
			&cli.BoolFlag{Name: "no-manifest", Usage: "write segments as they are made, without a MANIFEST (no temporary file; vm-resume cannot start such an overlay early)", Destination: &o.NoManifest},
			cliutil.Path(&cli.StringFlag{Name: "tmpdir", Usage: "where the temporary files go (default $TMPDIR)", Destination: &o.TempDir}),
			cliutil.Path(&cli.StringFlag{Name: "sign", Usage: "sign the overlay with this ed25519 private key file (from overlay-keygen)", EnvVars: []string{"CLOUDLET_SIGN_KEY"}, Destination: &keyFile}),
			&cli.BoolFlag{Name: "force", Usage: "write the binary stream even if stdout is a terminal", Destination: &force},
			&cli.BoolFlag{Name: "codecs", Usage: "print the codecs, their levels and the implementation of each in this build on stdout, and exit", Destination: &list},
		}, prog.Flags()...),
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			if list {
				for _, cd := range []uint8{codec.Zstd, codec.XZ} {
					lo, def, hi := codec.Levels(cd)
					fmt.Fprintf(stdout, "%s levels %d-%d (default %d): %s\n", codec.Name(cd), lo, hi, def, codec.Impl(cd))
				}
				return nil
			}
			if c.IsSet("segment-size") && (o.SegmentSize < overlay.MinSegmentSize || o.SegmentSize > format.MaxSegmentRaw) {
				return cliutil.Usagef("--segment-size %d: want %d-%d bytes", o.SegmentSize, overlay.MinSegmentSize, format.MaxSegmentRaw)
			}
			if o.Bandwidth <= 0 {
				return cliutil.Usagef("--bandwidth %g: want a positive number of Mbit/s", o.Bandwidth)
			}
			if err := checkLevel(o.Codec, o.Level, c.IsSet("level")); err != nil {
				return err
			}
			if err := checkOrder(o.Order, accessFile, o.EarlySegmentSize, c.IsSet("early-segment-size")); err != nil {
				return err
			}
			if err := cliutil.CheckStdout(stdout, force); err != nil {
				return err
			}
			if accessFile != "" {
				l, err := readAccessLog(accessFile)
				if err != nil {
					return err
				}
				o.Access, o.AccessFile = l, accessFile
			}
			var key *sign.PrivateKey
			if keyFile != "" {
				k, err := sign.LoadPrivate(keyFile)
				if err != nil {
					return err
				}
				key = k
			}
			popt, err := prog.Options()
			if err != nil {
				return err
			}
			o.Log = stderr
			var hw *sign.HashWriter
			wrap := func(out io.Writer) io.Writer { hw = sign.NewHashWriter(out); return hw }
			return cliutil.Metered{Stage: "overlay-pack", Options: popt, WrapOut: wrap}.Filter(stdin, stdout, stderr, func(r *format.Reader, w *format.Writer) error {
				if key == nil {
					return overlay.Pack(c.Context, r, w, o)
				}
				if err := overlay.PackSigned(c.Context, r, w, hw, o, key); err != nil {
					return err
				}
				fmt.Fprintf(stderr, "overlay-pack: signed with key %s\n", key.ID)
				return nil
			})
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}

// checkOrder checks --order, --access-log and --early-segment-size (set:
// given on the command line).
func checkOrder(order, accessFile string, early int, set bool) error {
	switch order {
	case format.OrderOffset:
		if accessFile != "" {
			return cliutil.Usagef("--access-log with --order offset: the access log is for --order access")
		}
		if set {
			return cliutil.Usagef("--early-segment-size with --order offset: it sizes the segments of --order access")
		}
	case format.OrderAccess:
		if accessFile == "" {
			return cliutil.Usagef("--order access needs --access-log FILE (from vm-resume --access-log)")
		}
	default:
		return cliutil.Usagef("--order %q: want offset or access", order)
	}
	if early < overlay.MinSegmentSize || early > format.MaxSegmentRaw {
		return cliutil.Usagef("--early-segment-size %d: want %d-%d bytes", early, overlay.MinSegmentSize, format.MaxSegmentRaw)
	}
	return nil
}

func readAccessLog(path string) (*format.AccessLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("access log: %w", err)
	}
	defer f.Close()
	return format.ReadAccessLog(f, path)
}

// checkLevel refuses a codec overlay-pack does not know and a level outside
// the codec's range; set says whether --level was given.
func checkLevel(name string, level int, set bool) error {
	if name == "auto" {
		if set {
			return cliutil.Usagef("--level with --codec auto: auto picks the codec and level itself")
		}
		return nil
	}
	c, err := codec.Parse(name)
	if err != nil {
		return cliutil.Usagef("--codec %q: want zstd, xz or auto", name)
	}
	if lo, _, hi := codec.Levels(c); set && (level < lo || level > hi) {
		return cliutil.Usagef("--level %d: %s takes %d-%d", level, name, lo, hi)
	}
	return nil
}
