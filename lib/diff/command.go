package diff

import (
	"context"
	"fmt"
	"io"

	"cloudlet/format"
	"cloudlet/lib/base"
	"cloudlet/lib/cliutil"

	"github.com/urfave/cli/v2"
)

const commandDescription = `Reads a cloudlet stream on stdin (vm-capture's output, or another diff
stage's) and writes it to stdout with the %[1]s records diffed against a
base VM: unchanged pages vanish, zeroed ones become zero records, pages found
in base memory, the base disk or earlier in the stream become verified COPY
records, and (with --delta) small changes become DELTA records. Every other
record passes through unchanged, so mem-diff and disk-diff run in either
order:

   vm-capture --qmp run/qmp.sock | mem-diff --base B | disk-diff --base B | overlay-pack > app.overlay

The base is --base DIR, or the catalog entry for the stream's base ID.`

// Command returns the run function of mem-diff (SpaceMem) or disk-diff.
func Command(stage string, space uint8) cliutil.RunFunc {
	what := "memory"
	if space == format.SpaceDisk {
		what = "disk"
	}
	return func(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
		var baseDir, catalog, deltaMode, scratch string
		var noDedup, force bool
		var prog cliutil.Progress
		args = cliutil.ProgressArgs(args)
		app := cliutil.NewApp(stage, "diff the "+what+" records of a stream against a base VM",
			stage+" [--base DIR] [--delta MODE] < stream > diff", fmt.Sprintf(commandDescription, what),
			append([]cli.Flag{
				cliutil.Path(&cli.StringFlag{Name: "base", Usage: "base folder (default: find the stream's base ID in the catalog)", Destination: &baseDir, EnvVars: []string{"CLOUDLET_BASE"}}),
				cliutil.Path(&cli.StringFlag{Name: "catalog", Usage: "catalog file", Value: base.DefaultCatalogPath(), Destination: &catalog}),
				&cli.StringFlag{Name: "delta", Usage: "per-page delta against the same-offset base page: none, xor, ops or best (xor measured smallest after compression, see README)", Value: DeltaXOR, Destination: &deltaMode},
				&cli.BoolFlag{Name: "no-dedup", Usage: "do not look for copies in the base or the stream", Destination: &noDedup},
				cliutil.Path(&cli.StringFlag{Name: "scratch-dir", Usage: "folder for the self-dedup scratch file", Destination: &scratch}),
				cliutil.ForceFlag,
			}, prog.Flags()...),
			func(c *cli.Context) error {
				if err := cliutil.NoArgs(c); err != nil {
					return err
				}
				switch deltaMode {
				case DeltaNone, DeltaXOR, DeltaOps, DeltaBest:
				default:
					return cliutil.Usagef("--delta %q: want none, xor, ops or best", deltaMode)
				}
				force = c.Bool("force")
				if err := cliutil.CheckStdout(stdout, force); err != nil {
					return err
				}
				popt, err := prog.Options()
				if err != nil {
					return err
				}
				var st *Stats
				extra := func() map[string]any {
					if st == nil {
						return nil
					}
					return map[string]any{what: st} // what was found
				}
				return cliutil.Metered{Stage: stage, Options: popt, Extra: extra}.Filter(stdin, stdout, stderr, func(r *format.Reader, w *format.Writer) error {
					var err error
					st, err = Run(r, w, Config{Ctx: ctx, Stage: stage, Space: space,
						Options: Options{Delta: deltaMode, NoDedup: noDedup, ScratchIn: scratch},
						Open:    func(id string) (*base.Base, error) { return base.Locate(baseDir, catalog, id) }})
					return err
				})
			}, stdin, stderr)
		return app.RunContext(ctx, args)
	}
}
