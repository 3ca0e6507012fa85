package cliutil

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// Path marks a flag whose value names a file or folder. Its value (from the
// command line or an environment variable) is made absolute while the
// command line is parsed: the one place where the tools turn relative paths
// into absolute ones, so that nothing later depends on the folder QEMU,
// qemu-img or qemu-nbd run in. The flag needs a Destination.
func Path(f *cli.StringFlag) *cli.StringFlag {
	if f.Destination == nil {
		panic("cliutil.Path: flag --" + f.Name + " has no Destination")
	}
	f.Action = func(_ *cli.Context, v string) error {
		abs, err := absPath(f.Name, v)
		if err == nil {
			*f.Destination = abs
		}
		return err
	}
	return f
}

// Paths is Path for a repeatable flag.
func Paths(f *cli.StringSliceFlag) *cli.StringSliceFlag {
	if f.Destination == nil {
		panic("cliutil.Paths: flag --" + f.Name + " has no Destination")
	}
	f.Action = func(_ *cli.Context, vs []string) error {
		out := make([]string, len(vs))
		for i, v := range vs {
			abs, err := absPath(f.Name, v)
			if err != nil {
				return err
			}
			out[i] = abs
		}
		*f.Destination = *cli.NewStringSlice(out...)
		return nil
	}
	return f
}

func absPath(flag, v string) (string, error) {
	if v == "" {
		return "", nil
	}
	abs, err := filepath.Abs(v)
	if err != nil {
		return "", Usagef("--%s %q: %v", flag, v, err)
	}
	return abs, nil
}

// AbsArg makes a positional argument that names a file or folder absolute
// (see Path).
func AbsArg(what, v string) (string, error) {
	abs, err := filepath.Abs(v)
	if err != nil {
		return "", fmt.Errorf("%s %q: %w", what, v, err)
	}
	return abs, nil
}
