package cliutil

import (
	"io"

	"cloudlet/format"
	"cloudlet/lib/progress"

	"github.com/urfave/cli/v2"
)

// Progress holds a stage's --progress, --quiet and --stats FILE|- flags
// (lib/progress has the rule for when a stage draws).
type Progress struct {
	on, off bool
	stats   string
}

// ProgressArgs lets --stats be given without a file ("-": stderr); call it
// on the arguments before parsing.
func ProgressArgs(args []string) []string {
	return OptionalValueFunc(args, "stats", "-", func(a string) bool { return a == "-" || len(a) > 0 && a[0] != '-' })
}

// Flags are the three flags.
func (p *Progress) Flags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "progress", Usage: "show progress on stderr even when stderr is not a terminal or stdout is a pipe (default: only on a terminal, and only at the end of a pipe)", Destination: &p.on},
		&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress on stderr", Destination: &p.off},
		&cli.StringFlag{Name: "stats", Usage: "write the stage's summary as one JSON object to FILE (--stats alone or -: stderr)", Destination: &p.stats},
	}
}

// Options returns the flags as progress options, or a usage error.
func (p *Progress) Options() (progress.Options, error) {
	o := progress.Options{Mode: progress.Auto, Stats: p.stats}
	switch {
	case p.on && p.off:
		return o, Usagef("--progress and --quiet exclude each other")
	case p.on:
		o.Mode = progress.On
	case p.off:
		o.Mode = progress.Off
	}
	return o, nil
}

// Metered runs a Filter stage under a progress meter.
type Metered struct {
	Stage   string
	Options progress.Options
	// Extra, if not nil, adds the stage's own figures to the summary.
	Extra func() map[string]any
	// WrapIn and WrapOut, if not nil, wrap the (counted) stdin and stdout
	// before the stream reader and writer get them.
	WrapIn  func(io.Reader) io.Reader
	WrapOut func(io.Writer) io.Writer
}

// Filter is cliutil.Filter under the meter: stdin and stdout are counted,
// the records written are the meter's, and the meter ends (its summary
// line, --stats) when fn does.
func (m Metered) Filter(stdin io.Reader, stdout, stderr io.Writer, fn func(r *format.Reader, w *format.Writer) error) error {
	meter, in, out := progress.Start(m.Stage, stdin, stdout, stderr, m.Options)
	if m.WrapIn != nil {
		in = m.WrapIn(in)
	}
	if m.WrapOut != nil {
		out = m.WrapOut(out)
	}
	var frames uint64
	err := Filter(m.Stage, in, out, func(r *format.Reader, w *format.Writer) error {
		defer func() { frames = w.Frames() }()
		return fn(r, w)
	})
	meter.Records(frames)
	var x map[string]any
	if m.Extra != nil {
		x = m.Extra()
	}
	if serr := meter.Done(err, x); err == nil {
		err = serr
	}
	return err
}
