package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"time"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/overlay"
	"cloudlet/lib/progress"
	"cloudlet/lib/vm"

	"github.com/urfave/cli/v2"
)

const description = `Bases are read-only folders (disk image, memory, device state, VM
description, dedup index) that overlays are made against. Make one from a
VM captured with vm-capture:

   vm-capture --qmp RUN/qmp.sock --quit | cloudlet-base create --image IMAGE --kit KIT --name debian BASE
   cloudlet-base add BASE            # put it in the catalog
   cloudlet-base list                # ID, name, path of every catalogued base
   cloudlet-base remove NAME|ID      # take it out of the catalog (the folder stays)
   cloudlet-base verify BASE         # re-hash everything, check the ID
   cloudlet-base stream BASE | vm-resume --base BASE   # resume the base to customize it
   cloudlet-base index [--windows] BASE   # dedup index size and build time

Bases move between cloudlets as one stream (a base export: the whole
base, sparse, compressed in segments like an overlay, with a sha256):

   cloudlet-base export debian | ssh cloudlet cloudlet-base import --add /srv/bases/debian

import builds the folder in a temporary folder, checks the base ID, and
renames it into place only then; a corrupt or truncated export leaves no
folder and no catalog entry, and a base the catalog already holds is
refused with nothing changed.

The catalog is a JSON list of {"name","sha256","path"}, as the original
server used; --catalog or $CLOUDLET_CATALOG choose the file.`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var catalog, image, kernel, initrd string
	var kits cli.StringSlice
	withCatalog := func(fn func(c *base.Catalog, cc *cli.Context) error) cli.ActionFunc {
		return func(cc *cli.Context) error {
			c, err := base.LoadCatalog(catalog)
			if err != nil {
				return err
			}
			return fn(c, cc)
		}
	}
	limitFlags := []cli.Flag{
		&cli.StringFlag{Name: "max-mem", EnvVars: []string{"CLOUDLET_MAX_MEM"}, Usage: "refuse a VM declaring more memory than `SIZE` (e.g. 8G) before writing anything (default: the host's RAM)"},
		&cli.StringFlag{Name: "max-disk", EnvVars: []string{"CLOUDLET_MAX_DISK"}, Usage: "refuse a VM declaring a larger disk than `SIZE` before writing anything (default: the free space where DIR goes)"},
	}
	limits := func(cc *cli.Context, dir string) (base.Limits, error) {
		l, err := base.DefaultLimits(dir)
		if err != nil {
			return l, err
		}
		for name, v := range map[string]*uint64{"max-mem": &l.MaxMem, "max-disk": &l.MaxDisk} {
			if cc.IsSet(name) {
				n, err := cliutil.ParseSize(cc.String(name))
				if err != nil {
					return l, cliutil.Usagef("--%s: %v", name, err)
				}
				*v = n
			}
		}
		return l, nil
	}
	oneArg := func(cc *cli.Context, what string) (string, error) {
		if cc.NArg() != 1 {
			return "", cliutil.Usagef("%s: want exactly one %s (flags go before it)", cc.Command.Name, what)
		}
		return cc.Args().First(), nil
	}
	// withBase runs fn on the base folder named by the one argument.
	withBase := func(fn func(b *base.Base, cc *cli.Context) error) cli.ActionFunc {
		return func(cc *cli.Context) error {
			dir, err := oneArg(cc, "DIR")
			if err != nil {
				return err
			}
			b, err := base.Open(dir)
			if err != nil {
				return err
			}
			defer b.Close()
			return fn(b, cc)
		}
	}
	// made reports a new base folder on stderr, adds it to the catalog
	// with --add, and prints its ID.
	made := func(c *base.Catalog, cc *cli.Context, m *base.Meta, dir, what string, start time.Time) error {
		fmt.Fprintf(stderr, "cloudlet-base: "+what+" (%.1fs)\n", m.ID, dir, time.Since(start).Seconds())
		if cc.Bool("add") {
			c.Add(base.Entry{Name: m.Name, SHA256: m.ID, Path: dir})
			if err := c.Save(); err != nil {
				return err
			}
		}
		fmt.Fprintln(stdout, m.ID)
		return nil
	}
	var progCreate, progExport, progImport cliutil.Progress
	args = cliutil.ProgressArgs(args)
	app := cliutil.NewApp("cloudlet-base", "make base VMs and manage the base catalog",
		"cloudlet-base [--catalog FILE] COMMAND ...", description,
		[]cli.Flag{cliutil.Path(&cli.StringFlag{Name: "catalog", Value: base.DefaultCatalogPath(), EnvVars: []string{"CLOUDLET_CATALOG"}, Destination: &catalog, Usage: "catalog file"})},
		nil, stdin, stderr)
	app.Commands = []*cli.Command{
		{
			Name: "create", Usage: "make a base folder from a full stream on stdin", ArgsUsage: "DIR",
			Flags: append([]cli.Flag{
				cliutil.Path(&cli.StringFlag{Name: "image", Usage: "the disk image (raw or qcow2) the captured VM was launched from", Destination: &image}),
				cliutil.Paths(&cli.StringSliceFlag{Name: "kit", Usage: "folder with the kernel and initrd the VM booted, as vmlinuz and initrd.img (repeatable)", Destination: &kits}),
				cliutil.Path(&cli.StringFlag{Name: "kernel", Usage: "the kernel the VM booted (any name; copied into the base)", Destination: &kernel}),
				cliutil.Path(&cli.StringFlag{Name: "initrd", Usage: "the initrd the VM booted (any name; copied into the base)", Destination: &initrd}),
				&cli.StringFlag{Name: "name", Usage: "base name for the catalog"},
				&cli.BoolFlag{Name: "windows", Usage: "also index the disk at 512-byte steps"},
				&cli.BoolFlag{Name: "add", Usage: "add the new base to the catalog"},
			}, append(limitFlags, progCreate.Flags()...)...),
			Action: withCatalog(func(c *base.Catalog, cc *cli.Context) error {
				dir, err := oneArg(cc, "DIR")
				if err != nil {
					return err
				}
				if dir, err = cliutil.AbsArg("DIR", dir); err != nil {
					return err
				}
				popt, err := progCreate.Options()
				if err != nil {
					return err
				}
				lim, err := limits(cc, dir)
				if err != nil {
					return err
				}
				start := time.Now()
				meter, in, _ := progress.Start("cloudlet-base create", stdin, stdout, stderr, popt)
				m, err := base.Create(dir, format.NewReader(in), base.CreateOptions{
					Name: cc.String("name"), Image: image, KitDirs: append(kits.Value(), vm.FirmwareDir), Windows: cc.Bool("windows"),
					Limits: lim, BootFiles: slices.DeleteFunc([]string{kernel, initrd}, func(s string) bool { return s == "" })})
				if err := done(meter, err, m); err != nil {
					return err
				}
				return made(c, cc, m, dir, "made base %s in %s", start)
			}),
		},
		{
			Name: "add", Usage: "add a base folder to the catalog", ArgsUsage: "DIR",
			Action: withCatalog(func(c *base.Catalog, cc *cli.Context) error {
				dir, err := oneArg(cc, "DIR")
				if err != nil {
					return err
				}
				if dir, err = cliutil.AbsArg("DIR", dir); err != nil {
					return err
				}
				b, err := base.Open(dir)
				if err != nil {
					return err
				}
				defer b.Close()
				c.Add(base.Entry{Name: b.Meta.Name, SHA256: b.ID(), Path: dir})
				return c.Save()
			}),
		},
		{
			Name: "list", Usage: "list catalogued bases as JSON",
			Action: withCatalog(func(c *base.Catalog, cc *cli.Context) error {
				if c.Entries == nil {
					c.Entries = []base.Entry{}
				}
				b, _ := json.MarshalIndent(c.Entries, "", "  ")
				fmt.Fprintln(stdout, string(b))
				return nil
			}),
		},
		{
			Name: "remove", Usage: "remove bases from the catalog by name or ID", ArgsUsage: "NAME|ID",
			Action: withCatalog(func(c *base.Catalog, cc *cli.Context) error {
				key, err := oneArg(cc, "NAME or ID")
				if err != nil {
					return err
				}
				if c.Remove(key) == 0 {
					return fmt.Errorf("no base named %q or with that ID in %s", key, c.Path)
				}
				return c.Save()
			}),
		},
		{
			Name: "stream", Usage: "write the stream that resumes the base unchanged (pipe it into vm-resume)", ArgsUsage: "DIR",
			Action: withBase(func(b *base.Base, cc *cli.Context) error {
				if err := cliutil.CheckStdout(stdout, false); err != nil {
					return err
				}
				return b.WriteResumeStream(format.NewWriter(stdout))
			}),
		},
		{
			Name: "export", Usage: "write a base as one stream (a base export) for cloudlet-base import", ArgsUsage: "DIR|NAME|ID",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "codec", Usage: "zstd or xz", Value: "zstd"},
				&cli.IntFlag{Name: "level", Usage: "compression level: zstd 1-19 (default 3), xz 1-9 (default 9)"},
				cliutil.ForceFlag,
			}, progExport.Flags()...),
			Action: func(cc *cli.Context) error {
				key, err := oneArg(cc, "DIR, NAME or ID")
				if err != nil {
					return err
				}
				if err := cliutil.CheckStdout(stdout, cc.Bool("force")); err != nil {
					return err
				}
				b, err := openBase(catalog, key)
				if err != nil {
					return err
				}
				defer b.Close()
				popt, err := progExport.Options()
				if err != nil {
					return err
				}
				start := time.Now()
				o := overlay.PackOptions{Codec: cc.String("codec"), Level: cc.Int("level"), Producer: "cloudlet-base export"}
				var cw *countingWriter
				wrap := func(out io.Writer) io.Writer { cw = &countingWriter{w: out}; return cw }
				err = cliutil.Metered{Stage: "cloudlet-base export", Options: popt, WrapOut: wrap}.Filter(nil, stdout, stderr, func(_ *format.Reader, w *format.Writer) error {
					return exportBase(ctx, b, w, o)
				})
				if err == nil {
					fmt.Fprintf(stderr, "cloudlet-base: exported base %s: %d bytes in %.1fs\n", b.ID(), cw.n, time.Since(start).Seconds())
				}
				return err
			},
		},
		{
			Name: "import", Usage: "make a base folder from a base export on stdin (cloudlet-base export's output)", ArgsUsage: "DIR",
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "name", Usage: "base name for the catalog (default: the folder's name)"},
				&cli.BoolFlag{Name: "windows", Usage: "also index the disk at 512-byte steps"},
				&cli.BoolFlag{Name: "add", Usage: "add the new base to the catalog"},
			}, append(limitFlags, progImport.Flags()...)...),
			Action: withCatalog(func(c *base.Catalog, cc *cli.Context) error {
				dir, err := oneArg(cc, "DIR")
				if err != nil {
					return err
				}
				if dir, err = cliutil.AbsArg("DIR", dir); err != nil {
					return err
				}
				if cliutil.IsTerminal(stdin) {
					return cliutil.Usagef("import reads a base export on stdin: cloudlet-base export BASE | cloudlet-base import DIR")
				}
				name := cc.String("name")
				if name == "" {
					name = filepath.Base(dir)
				}
				popt, err := progImport.Options()
				if err != nil {
					return err
				}
				lim, err := limits(cc, dir)
				if err != nil {
					return err
				}
				start := time.Now()
				meter, in, _ := progress.Start("cloudlet-base import", stdin, stdout, stderr, popt)
				m, err := importBase(ctx, in, dir, c, base.CreateOptions{Name: name, Windows: cc.Bool("windows"), Limits: lim})
				if err := done(meter, err, m); err != nil {
					return err
				}
				return made(c, cc, m, dir, "imported base %s into %s", start)
			}),
		},
		{
			Name: "verify", Usage: "re-hash a base and check its ID", ArgsUsage: "DIR",
			Action: withBase(func(b *base.Base, cc *cli.Context) error {
				if err := b.Verify(); err != nil {
					return err
				}
				fmt.Fprintln(stdout, b.ID())
				return nil
			}),
		},
		{
			Name: "index", Usage: "build the dedup index in memory and print its size and build time", ArgsUsage: "DIR",
			Flags: []cli.Flag{&cli.BoolFlag{Name: "windows", Usage: "index the disk at 512-byte steps"}},
			Action: withBase(func(b *base.Base, cc *cli.Context) error {
				start := time.Now()
				x := base.BuildIndex(b.Mem, b.Disk, cc.Bool("windows"))
				fmt.Fprintf(stdout, "{\"entries\": %d, \"bytes\": %d, \"seconds\": %.3f}\n", x.Len(), x.Bytes(), time.Since(start).Seconds())
				return nil
			}),
		},
	}
	return app.RunContext(ctx, args)
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// done ends a create or import meter with the base it made.
func done(meter *progress.Meter, err error, m *base.Meta) error {
	var extra map[string]any
	if err == nil && m != nil {
		extra = map[string]any{"base_id": m.ID}
	}
	if serr := meter.Done(err, extra); err == nil {
		err = serr
	}
	return err
}
