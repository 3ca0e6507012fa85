package main

import (
	"context"
	"io"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/overlay"

	"github.com/urfave/cli/v2"
)

const description = `Reads an overlay (the output of overlay-pack) on stdin and writes, on stdout,
the diff stream it holds with every COPY and DELTA resolved against the base,
so vm-resume only sees DEVSTATE, MEM, MEM_ZERO, DISK and DISK_ZERO records.
The base is the folder --base DIR (base.json, mem.ram, disk.img), or the one
--catalog FILE lists for the overlay's base ID; a base with another ID is
refused.

Segments are decompressed on all cores ahead of the writer. Data the overlay
refers back to is kept in sparse scratch files in a private folder under
--tmpdir, removed at exit, so memory stays at a few segments per core.
The output's END is written only after every segment check, the INDEX and
the overlay's END (digest and sha256) verified; on any error the output
ends in an ERROR record, so vm-resume never starts a guest from a corrupt
overlay.

   ssh cloudlet overlay-apply --catalog /var/lib/cloudlet/bases.json \
     < app.overlay | vm-resume ...`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var dir, catalog string
	var o overlay.ApplyOptions
	var force bool
	app := cliutil.NewApp("overlay-apply", "resolve an overlay against its base into a diff stream",
		"overlay-apply [--base DIR | --catalog FILE] < app.overlay | vm-resume ...", description,
		[]cli.Flag{
			&cli.StringFlag{Name: "base", Usage: "base folder (base.json, mem.ram, disk.img)", EnvVars: []string{"CLOUDLET_BASE"}, Destination: &dir},
			&cli.StringFlag{Name: "catalog", Usage: "JSON list of {\"name\", \"sha256\", \"path\"} to find the base by the overlay's base ID", Value: base.DefaultCatalogPath(), EnvVars: []string{"CLOUDLET_CATALOG"}, Destination: &catalog},
			&cli.StringFlag{Name: "tmpdir", Usage: "where to put the scratch folder (default $TMPDIR)", Destination: &o.TempDir},
			&cli.IntFlag{Name: "workers", Usage: "decompression workers (default: all cores)", Destination: &o.Workers},
			&cli.BoolFlag{Name: "force", Usage: "write the binary stream even if stdout is a terminal", Destination: &force},
		},
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			if err := cliutil.CheckStdout(stdout, force); err != nil {
				return err
			}
			var opened []*base.Base
			defer func() {
				for _, b := range opened {
					b.Close()
				}
			}()
			open := func(id string) (overlay.Base, error) {
				b, err := base.Locate(dir, catalog, id)
				if err != nil {
					return nil, err
				}
				opened = append(opened, b)
				return b, nil
			}
			return cliutil.Filter("overlay-apply", stdin, stdout, func(r *format.Reader, w *format.Writer) error {
				return overlay.Apply(c.Context, r, w, open, o)
			})
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}
