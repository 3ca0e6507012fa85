package main

import (
	"context"
	"fmt"
	"io"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"
	"cloudlet/lib/overlay"
	"cloudlet/lib/sign"

	"github.com/urfave/cli/v2"
)

const description = `Reads an overlay (the output of overlay-pack) on stdin and writes, on stdout,
the diff stream it holds with every DELTA resolved against the base. COPY
records (this range holds the same bytes as that range of the base or of
what the stream already wrote) pass through as they are: vm-resume resolves
them itself, from the base it maps and the memory and disk it wrote, so
those bytes cross no pipe. --resolve-copies resolves them here too, for a
consumer that wants only DEVSTATE, MEM, MEM_ZERO, DISK and DISK_ZERO
records. The base is the folder --base DIR (base.json, mem.ram, disk.img),
or the one --catalog FILE lists for the overlay's base ID; a base with
another ID is refused.

Segments are decompressed on all cores ahead of the writer. With
--resolve-copies, data the overlay refers back to is kept in sparse scratch
files under --tmpdir, removed at exit, so memory stays at a few segments
per core.
The output's END is written only after every segment check, the INDEX and
the overlay's END (digest and sha256) verified; on any error the output
ends in an ERROR record, so vm-resume never starts a guest from a corrupt
overlay.

An overlay that starts with a MANIFEST (overlay-pack writes one unless
--no-manifest) has each SEGMENT checked against it (size and sha256) before
it is decompressed, and the output starts with a MANIFEST too: every memory
and disk range the stream will write, which vm-resume needs to start the
guest early.

--trusted-keys DIR checks signatures (overlay-pack --sign): every *.pub file
in DIR (from overlay-keygen) is a trusted key. A signed overlay whose signer
is not trusted is refused before its HEADER is used; its HEAD_SIGNATURE is
checked as soon as it is read, before any segment is decompressed, and the
output MANIFEST then names the key; a signature that does not verify, a
stripped, moved or duplicated signature are refused before the output's
END, so vm-resume never starts that guest. --require-signature also
refuses unsigned overlays, before reading past their HEADER, and writes no
output MANIFEST for an overlay whose head is not signed (from an older
overlay-pack), so that nothing unsigned is started early. Without
--trusted-keys, signatures are not checked.

   ssh cloudlet overlay-apply --catalog /var/lib/cloudlet/bases.json \
     < app.overlay | vm-resume ...`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var dir, catalog string
	var o overlay.ApplyOptions
	var force, require, resolve bool
	var trusted string
	var prog cliutil.Progress
	args = cliutil.ProgressArgs(args)
	app := cliutil.NewApp("overlay-apply", "resolve an overlay against its base into a diff stream",
		"overlay-apply [--base DIR | --catalog FILE] [--trusted-keys DIR [--require-signature]] < app.overlay | vm-resume ...", description,
		append([]cli.Flag{
			cliutil.Path(&cli.StringFlag{Name: "base", Usage: "base folder (base.json, mem.ram, disk.img)", EnvVars: []string{"CLOUDLET_BASE"}, Destination: &dir}),
			cliutil.Path(&cli.StringFlag{Name: "catalog", Usage: "JSON list of {\"name\", \"sha256\", \"path\"} to find the base by the overlay's base ID", Value: base.DefaultCatalogPath(), EnvVars: []string{"CLOUDLET_CATALOG"}, Destination: &catalog}),
			cliutil.Path(&cli.StringFlag{Name: "tmpdir", Usage: "where to put the scratch folder (default $TMPDIR)", Destination: &o.TempDir}),
			&cli.IntFlag{Name: "workers", Usage: "decompression workers (default: all cores)", Destination: &o.Workers},
			&cli.BoolFlag{Name: "resolve-copies", Usage: "resolve COPY records into data too (default: pass them to vm-resume, which resolves them itself)", Destination: &resolve},
			cliutil.Path(&cli.StringFlag{Name: "trusted-keys", Usage: "folder of trusted public key files (*.pub from overlay-keygen); signed overlays must verify with one of them", EnvVars: []string{"CLOUDLET_TRUSTED_KEYS"}, Destination: &trusted}),
			&cli.BoolFlag{Name: "require-signature", Usage: "refuse overlays not signed by a trusted key (needs --trusted-keys)", EnvVars: []string{"CLOUDLET_REQUIRE_SIGNATURE"}, Destination: &require},
			&cli.BoolFlag{Name: "force", Usage: "write the binary stream even if stdout is a terminal", Destination: &force},
		}, prog.Flags()...),
		func(c *cli.Context) error {
			if err := cliutil.NoArgs(c); err != nil {
				return err
			}
			popt, err := prog.Options()
			if err != nil {
				return err
			}
			if err := cliutil.CheckStdout(stdout, force); err != nil {
				return err
			}
			if require && trusted == "" {
				return cliutil.Usagef("--require-signature needs --trusted-keys DIR")
			}
			o.KeepCopies = !resolve
			var v *overlay.Verifier
			var wrapIn func(io.Reader) io.Reader
			if trusted != "" {
				ring, err := sign.LoadTrusted(trusted)
				if err != nil {
					return err
				}
				wrapIn = func(in io.Reader) io.Reader {
					v = overlay.NewVerifier(in, overlay.VerifyOptions{Trusted: ring, Require: require, TrustedFrom: trusted})
					o.Verifier = v
					return v
				}
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
			return cliutil.Metered{Stage: "overlay-apply", Options: popt, WrapIn: wrapIn}.Filter(stdin, stdout, stderr, func(r *format.Reader, w *format.Writer) error {
				err := overlay.Apply(c.Context, r, w, open, o)
				if v == nil {
					return err
				}
				if verr := v.Err(); verr != nil {
					return verr // the reason the input stopped
				}
				if err != nil {
					return err
				}
				if err := v.Check(); err != nil {
					return err
				}
				if k := v.Signer(); k != nil {
					head := ", head included"
					if v.HeadSigner() == "" {
						head = "; its head is not signed (an older overlay-pack?)"
						if require {
							head += ", so the output has no MANIFEST and cannot start early"
						}
					}
					fmt.Fprintf(stderr, "overlay-apply: signature by key %s (%s) verified%s\n", k.ID, k.File, head)
				}
				return nil
			})
		}, stdin, stderr)
	return app.RunContext(ctx, args)
}
